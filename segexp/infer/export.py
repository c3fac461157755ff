"""Export a checkpoint's network to ONNX or TorchScript, with a parity check against PyTorch.

    segexp export ckpt_path=.../checkpoints/last.ckpt              # ONNX
    segexp export ckpt_path=... format=torchscript
    segexp export ckpt_path=... output=model.onnx opset=18

    segexp export ckpt_path=... dynamic=false input_size=[256,256]   # fixed size

The exported graph takes (B, 3, H, W) float32 images normalised with the
checkpoint's mean/std (written beside it in <output>.json) and returns
(B, num_classes, H, W) logits; batch size, height and width are dynamic
(the graph pads to the network's stride multiple and crops back, as PyTorch
does, at any size). With ``dynamic=false`` the graph is traced at ``input_size``
and accepts that size only; the summary and the .json say which it is.
The parity check runs the export and PyTorch on inputs of sizes the export
was not traced with and prints the largest absolute difference of the logits.

Every model option exports to both formats with dynamic sizes. Two operators
that the ONNX exporter cannot write with a dynamic input size are swapped, for
the export only, for the same linear map written as two matrix products whose
weights the graph computes from the input size (:func:`onnx_friendly_ops`):
antialiased bicubic/bilinear resizing (timm ViTs resizing their position
embeddings: ``model=dpt``) and adaptive average pooling (the pyramid pooling of
``model=pspnet`` and ``model=upernet``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from omegaconf import DictConfig

from segexp.errors import UserError

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}


class ExportError(UserError):
    """An export that cannot be written or checked (bad format, missing onnxruntime, ...)."""


class ParityError(ExportError):
    """The written export's logits differ from PyTorch's by more than ``atol``."""


def exportable(module):
    """The network with always-on padding (``PadToMultiple(traceable=True)``): no
    shape-dependent Python branch for tracers to freeze."""
    from segexp.model.networks import PadToMultiple

    pad = module.net  # the module's PadToMultiple
    return PadToMultiple(pad.net, pad.multiple, traceable=True).eval()


def _resize_filter(x, mode: str):
    """PyTorch's antialiasing filters: Keys' cubic (a = -0.5) or the triangle."""
    import torch

    x = x.abs()
    if mode == "bilinear":
        return (1 - x).clamp_min(0)
    a = -0.5
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def resize_weights(in_size, out_size, mode: str, device=None):
    """(out_size, in_size) weights of ``F.interpolate(mode, antialias=True, align_corners=False)``
    along one axis, from tensor ops only (sizes may be traced values)."""
    import torch

    # Every input sample is weighed: the filter is zero outside its support, so the result
    # equals PyTorch's windowed sum. Downscaling (scale > 1) widens the filter by the scale.
    scale = torch.as_tensor(in_size, dtype=torch.float32, device=device) / out_size
    inverse = torch.where(scale >= 1, 1 / scale, torch.ones_like(scale))
    center = scale * (torch.arange(out_size, device=device, dtype=torch.float32) + 0.5)
    source = torch.arange(in_size, device=device, dtype=torch.float32) + 0.5
    weights = _resize_filter((source[None, :] - center[:, None]) * inverse, mode)
    return weights / weights.sum(dim=1, keepdim=True)


def pool_weights(in_size, out_size: int, device=None):
    """(out_size, in_size) weights of ``F.adaptive_avg_pool2d`` along one axis: bin i averages
    [floor(i n / s), ceil((i + 1) n / s)); sizes may be traced values."""
    import torch

    index = torch.arange(out_size, device=device)
    start = torch.div(index * in_size, out_size, rounding_mode="floor")
    end = torch.div((index + 1) * in_size + out_size - 1, out_size, rounding_mode="floor")
    source = torch.arange(in_size, device=device)
    inside = (source[None, :] >= start[:, None]) & (source[None, :] < end[:, None])
    return inside.float() / (end - start)[:, None].float()


@contextlib.contextmanager
def onnx_friendly_ops(replaced: set[str] | None = None) -> Iterator[set[str]]:
    """Within the block, ``F.interpolate(..., antialias=True)`` and ``F.adaptive_avg_pool2d``
    on 4-D float tensors run as ``W_h @ x @ W_w^T`` with the same weights (to float rounding):
    the ONNX exporter writes neither with a dynamic input size. Yields the set of the
    replaced operators' names, filled as they run."""
    import torch.nn.functional as F

    replaced = set() if replaced is None else replaced
    interpolate, adaptive_avg_pool2d = F.interpolate, F.adaptive_avg_pool2d

    def resize(input, size=None, scale_factor=None, mode="nearest", align_corners=None, **kw):
        modes = ("bicubic", "bilinear")
        if kw.get("antialias") and mode in modes and input.dim() == 4 and size is not None:
            out_h, out_w = (size, size) if isinstance(size, int) else size
            height, width = input.shape[-2], input.shape[-1]
            replaced.add(f"antialiased {mode} resize")
            rows = resize_weights(height, out_h, mode, input.device).to(input.dtype)
            cols = resize_weights(width, out_w, mode, input.device).to(input.dtype)
            return rows @ input @ cols.transpose(0, 1)
        return interpolate(input, size, scale_factor, mode, align_corners, **kw)

    def pool(input, output_size):
        out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
        if input.dim() != 4 or out_h is None or out_w is None:
            return adaptive_avg_pool2d(input, output_size)
        height, width = input.shape[-2], input.shape[-1]
        replaced.add("adaptive_avg_pool2d")
        rows = pool_weights(height, int(out_h), input.device).to(input.dtype)
        cols = pool_weights(width, int(out_w), input.device).to(input.dtype)
        return rows @ input @ cols.transpose(0, 1)

    F.interpolate, F.adaptive_avg_pool2d = resize, pool
    try:
        yield replaced
    finally:
        F.interpolate, F.adaptive_avg_pool2d = interpolate, adaptive_avg_pool2d


def export_onnx(
    net, example, path: Path, opset: int, dynamo: bool = False, dynamic: bool = True
) -> list[str]:
    """Write the ONNX graph; returns the operators swapped for ONNX-friendly equivalents."""
    import warnings

    import torch

    if dynamo:
        # torch.export-based: sides need min=17 so reflect padding (pad < side) is valid.
        dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height", min=17)}
        dims[3] = torch.export.Dim("width", min=17)
        torch.onnx.export(
            net, (example,), str(path), input_names=["images"], output_names=["logits"],
            dynamic_shapes=(dims,) if dynamic else None, opset_version=opset, dynamo=True,
        )  # fmt: skip
        return []
    # The TorchScript-based exporter (dynamo=False, the default here) is the faster of the two
    # on smp models (seconds); its deprecation notice and tracer warnings are silenced.
    with warnings.catch_warnings(), onnx_friendly_ops() as replaced:
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        _export_onnx(net, example, path, opset, dynamic)
    return sorted(replaced)


def _export_onnx(net, example, path: Path, opset: int, dynamic: bool = True) -> None:
    import torch

    axes = {"images": {0: "batch", 2: "height", 3: "width"}}
    axes["logits"] = axes["images"]
    torch.onnx.export(
        net,
        (example,),
        str(path),
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes=axes if dynamic else None,
        opset_version=opset,
        dynamo=False,
    )


def export_torchscript(net, example, path: Path) -> None:
    import warnings

    import torch

    with warnings.catch_warnings():
        # Shape arithmetic is traced as tensor ops, which is what makes sizes dynamic here.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(net, example, check_trace=False)
    traced.save(str(path))


def run_exported(path: Path, fmt: str, images):
    """The exported model's logits on ``images`` (a CPU float32 tensor), as numpy."""
    import warnings

    import numpy as np
    import torch

    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError as error:
            raise ExportError(
                "the ONNX parity check needs onnxruntime: pip install 'segexp[onnx]' "
                "(or check=false to skip it)"
            ) from error
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"images": images.numpy()})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still supported
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return np.asarray(loaded(images).numpy())


def parity_check(net, path: Path, fmt: str, sizes, atol: float, seed: int = 0) -> float:
    """Largest |exported - PyTorch| logit difference over random inputs of ``sizes`` (B, H, W).

    ``net`` is the checkpoint's own network (``SegModule.net``), not the traced wrapper,
    so a difference in padding would show up too.
    """
    import numpy as np
    import torch

    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    for batch, height, width in sizes:
        images = torch.randn(batch, 3, height, width, generator=generator)
        with torch.no_grad():
            expected = net(images).numpy()
        got = run_exported(path, fmt, images)
        if got.shape != expected.shape:
            raise ParityError(
                f"{path}: output shape {got.shape} for input {tuple(images.shape)}, expected {expected.shape}"
            )
        diff = float(np.abs(got - expected).max())
        print(f"  parity {fmt} input {batch}x3x{height}x{width}: max abs diff {diff:.3e}")
        worst = max(worst, diff)
    if worst > atol:
        raise ParityError(f"{path}: parity check failed, max abs diff {worst:.3e} > atol={atol}")
    return worst


def _arch(module) -> str:
    return str(dict(module.hparams.net).get("arch", type(module.net.net).__name__))


def _cannot_export(module, cfg: DictConfig, error: Exception) -> ExportError:
    """One paragraph for an export that failed inside torch / onnxruntime: which option, why, what else."""
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
    other = "torchscript" if cfg.format == "onnx" else "onnx"
    fixed = (
        ""
        if not cfg.get("dynamic", True)
        else " or a fixed-size export (dynamic=false input_size=[H,W])"
    )
    return ExportError(
        f"model.arch={_arch(module)!r} could not be exported to format={cfg.format} "
        f"({type(error).__name__}: {reason}). Try format={other}{fixed}"
        f"{'' if cfg.format != 'onnx' else ', another opset=... or dynamo=true'}; the "
        "checkpoint itself is fine for evaluate.py and predict.py."
    )


def export(cfg: DictConfig) -> dict:
    """Write the exported model (+ a JSON of its class names and normalisation); return a summary."""
    from segexp.run.checkpoint import load_module, trusted_packages

    if cfg.format not in FORMATS:
        raise ExportError(f"format={cfg.format!r}: valid formats are {', '.join(FORMATS)}")
    dynamic = bool(cfg.get("dynamic", True))
    size = cfg.get("input_size") or [cfg.height, cfg.width]
    if len(size) != 2 or min(int(side) for side in size) < 1:
        raise ExportError(
            f"input_size={list(size)}: give [height, width] in pixels, e.g. [256,256]"
        )
    height, width = int(size[0]), int(size[1])
    module = load_module(cfg.ckpt_path, trust=trusted_packages(cfg)).eval()
    import torch  # once the checkpoint is read and trusted (a refusal needs no torch import)

    net = exportable(module)
    path = Path(cfg.output) if cfg.output else Path(cfg.ckpt_path).with_suffix(SUFFIXES[cfg.format])
    path.parent.mkdir(parents=True, exist_ok=True)

    # Trace at a size that is not a multiple of the stride, so the padding path is recorded.
    example = torch.randn(int(cfg.batch_size), 3, height, width)
    replaced: list[str] = []
    try:
        with torch.no_grad():
            if cfg.format == "onnx":
                dynamo = bool(cfg.get("dynamo", False))
                replaced = export_onnx(net, example, path, int(cfg.opset), dynamo, dynamic)
            else:
                export_torchscript(net, example, path)
    except UserError:
        raise
    except Exception as error:  # torch's exporters raise many kinds; one paragraph instead
        raise _cannot_export(module, cfg, error) from error
    shape = "dynamic batch, height and width" if dynamic else (
        f"fixed size {int(cfg.batch_size)}x3x{height}x{width} (dynamic=false)"
    )  # fmt: skip
    meta = {
        "format": cfg.format,
        "arch": _arch(module),
        "input": "images (B, 3, H, W) float32, (pixel / 255 - mean) / std, RGB",
        "output": "logits (B, num_classes, H, W)",
        "dynamic": dynamic,
        "input_size": None if dynamic else [int(cfg.batch_size), 3, height, width],
        "replaced_ops": replaced,
        "mean": list(module.hparams.mean),
        "std": list(module.hparams.std),
        "class_names": module.class_names,
        "checkpoint": str(Path(cfg.ckpt_path).resolve()),
    }
    path.with_name(path.name + ".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"exported {cfg.format} ({shape}): {path.resolve()}")
    if replaced:
        print(f"  written as matrix products for ONNX (same results): {', '.join(replaced)}")

    result = {"path": path, "max_abs_diff": None, "dynamic": dynamic, "replaced_ops": replaced}
    if cfg.check:
        if dynamic:
            sizes = [tuple(int(v) for v in size) for size in cfg.check_sizes]
        else:
            sizes = [(int(cfg.batch_size), height, width)]
        try:
            worst = parity_check(module.net, path, cfg.format, sizes, float(cfg.atol))
        except UserError:  # ParityError: written but disagreeing (exit 1); missing onnxruntime
            raise
        except Exception as error:  # e.g. onnxruntime refusing the graph
            raise _cannot_export(module, cfg, error) from error
        result["max_abs_diff"] = worst
        print(f"parity check passed: max abs diff {worst:.3e} <= atol={cfg.atol}")
    return result
