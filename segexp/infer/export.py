"""Export a checkpoint's network to ONNX or TorchScript, with a parity check against PyTorch.

    python -m segexp.export ckpt_path=.../checkpoints/last.ckpt              # ONNX
    python -m segexp.export ckpt_path=... format=torchscript
    python -m segexp.export ckpt_path=... output=model.onnx opset=18

The exported graph takes (B, 3, H, W) float32 images normalised with the
checkpoint's mean/std (written beside it in <output>.json) and returns
(B, num_classes, H, W) logits; batch size, height and width are dynamic
(the graph reflect-pads to the encoder's stride multiple and crops back, as
PyTorch does; sides must be over half that multiple, e.g. > 16 pixels).
The parity check runs the export and PyTorch on inputs of sizes the export
was not traced with and prints the largest absolute difference of the logits.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from segexp.errors import UserError

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}


class ExportError(UserError):
    """An export that cannot be written or that fails its parity check."""


def exportable(module):
    """The network with always-on padding: no shape-dependent Python branch for tracers to freeze."""
    import torch
    from torch import nn

    class PaddedNet(nn.Module):
        def __init__(self, net: nn.Module, multiple: int) -> None:
            super().__init__()
            self.net = net
            self.multiple = multiple

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            height, width = images.shape[-2], images.shape[-1]
            pad_h = (self.multiple - height % self.multiple) % self.multiple
            pad_w = (self.multiple - width % self.multiple) % self.multiple
            # Reflect, as PadToMultiple does for sides above multiple / 2; zero pads are no-ops.
            padded = nn.functional.pad(images, (0, pad_w, 0, pad_h), mode="reflect")
            return self.net(padded)[..., :height, :width]

    pad = module.net  # segexp.model.networks.PadToMultiple
    return PaddedNet(pad.net, pad.multiple).eval()


def export_onnx(net, example, path: Path, opset: int, dynamo: bool = False) -> None:
    import warnings

    import torch

    if dynamo:
        # torch.export-based: sides need min=17 so reflect padding (pad < side) is valid.
        dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height", min=17)}
        dims[3] = torch.export.Dim("width", min=17)
        torch.onnx.export(
            net, (example,), str(path), input_names=["images"], output_names=["logits"],
            dynamic_shapes={"images": dims}, opset_version=opset, dynamo=True,
        )  # fmt: skip
        return
    # The TorchScript-based exporter (dynamo=False, the default here) is the faster of the two
    # on smp models (seconds); its deprecation notice and tracer warnings are silenced.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        _export_onnx(net, example, path, opset)


def _export_onnx(net, example, path: Path, opset: int) -> None:
    import torch

    torch.onnx.export(
        net,
        (example,),
        str(path),
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={
            "images": {0: "batch", 2: "height", 3: "width"},
            "logits": {0: "batch", 2: "height", 3: "width"},
        },
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
            raise ExportError(
                f"{path}: output shape {got.shape} for input {tuple(images.shape)}, expected {expected.shape}"
            )
        diff = float(np.abs(got - expected).max())
        print(f"  parity {fmt} input {batch}x3x{height}x{width}: max abs diff {diff:.3e}")
        worst = max(worst, diff)
    if worst > atol:
        raise ExportError(f"{path}: parity check failed, max abs diff {worst:.3e} > atol={atol}")
    return worst


def export(cfg: DictConfig) -> dict:
    """Write the exported model (+ a JSON of its class names and normalisation); return a summary."""
    import torch

    from segexp.run.checkpoint import load_module

    if cfg.format not in FORMATS:
        raise ExportError(f"format={cfg.format!r}: valid formats are {', '.join(FORMATS)}")
    module = load_module(cfg.ckpt_path).eval()
    net = exportable(module)
    path = Path(cfg.output) if cfg.output else Path(cfg.ckpt_path).with_suffix(SUFFIXES[cfg.format])
    path.parent.mkdir(parents=True, exist_ok=True)

    # Trace at a size that is not a multiple of the stride, so the padding path is recorded.
    example = torch.randn(int(cfg.batch_size), 3, int(cfg.height), int(cfg.width))
    with torch.no_grad():
        if cfg.format == "onnx":
            export_onnx(net, example, path, int(cfg.opset), bool(cfg.get("dynamo", False)))
        else:
            export_torchscript(net, example, path)
    meta = {
        "format": cfg.format,
        "input": "images (B, 3, H, W) float32, (pixel / 255 - mean) / std, RGB",
        "output": "logits (B, num_classes, H, W)",
        "mean": list(module.hparams.mean),
        "std": list(module.hparams.std),
        "class_names": module.class_names,
        "checkpoint": str(Path(cfg.ckpt_path).resolve()),
    }
    path.with_name(path.name + ".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"exported {cfg.format}: {path.resolve()}")

    result = {"path": path, "max_abs_diff": None}
    if cfg.check:
        sizes = [tuple(size) for size in cfg.check_sizes]
        result["max_abs_diff"] = parity_check(module.net, path, cfg.format, sizes, float(cfg.atol))
        print(f"parity check passed: max abs diff {result['max_abs_diff']:.3e} <= atol={cfg.atol}")
    return result


@hydra.main(version_base="1.3", config_path="../../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    from segexp.run.checkpoint import CheckpointError

    try:
        export(cfg)
    except (CheckpointError, ExportError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2 if isinstance(error, CheckpointError) else 1)


if __name__ == "__main__":
    main()
