"""Figure 11, training speed where users train (``benchmarks.gpu_train``), and the earlier
per-variant table of U-Net-ResNet34 at 512x512, batch 8.

    python -m benchmarks.gpu                  # on a GPU machine: figure 11 (about 8 minutes)
    python -m benchmarks.gpu --cpu            # here: compile vs eager, metrics at 256 px
    python -m benchmarks.gpu --smoke          # tiny, on the CPU: checks every part runs
    python -m benchmarks.gpu --variants fp32,bf16,bf16+cl,bf16+cl+compile
    python -m benchmarks.gpu --metrics        # our confusion matrix vs torchmetrics, on the GPU

In the variant table, each variant trains the same network (forward, cross-entropy, backward, AdamW step)
on one random batch held on the device; images/s is timed after warm-up steps
(torch.compile compiles during them) with the device synchronised. Variants:
  fp32           float32 weights and activations (TF32 matmuls off, PyTorch's default)
  bf16           bf16-mixed: torch.autocast(bfloat16), what Trainer(precision="bf16-mixed") does
  bf16+cl        bf16 with the model and input in channels_last memory format
  bf16+cl+compile   the above with torch.compile(model)
  fp32+cl        channels_last alone, to separate its effect from bf16's
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from benchmarks.gpu_train import GPU_MODELS

VARIANTS = ("fp32", "fp32+cl", "bf16", "bf16+cl", "bf16+cl+compile")


def build_net(num_classes: int) -> torch.nn.Module:
    import segmentation_models_pytorch as smp

    return smp.create_model(
        "unet", encoder_name="resnet34", encoder_weights=None, classes=num_classes
    )


def measure(
    variant: str,
    device: torch.device,
    size: int,
    batch: int,
    steps: int,
    warmup: int,
    num_classes: int = 6,
) -> dict[str, float]:
    """Images/s and peak device memory of ``steps`` timed training steps of ``variant``."""
    torch.manual_seed(0)
    net = build_net(num_classes).to(device)
    images = torch.randn(batch, 3, size, size, device=device)
    masks = torch.randint(0, num_classes, (batch, size, size), device=device)
    if "+cl" in variant:
        net = net.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    model = torch.compile(net) if variant.endswith("compile") else net
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    criterion = torch.nn.CrossEntropyLoss()

    def autocast():
        if variant.startswith("bf16"):
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step() -> None:
        with autocast():
            loss = criterion(model(images), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    began = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    warmup_s = time.perf_counter() - began
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    began = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = time.perf_counter() - began
    peak = (
        torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    )
    return {
        "img_s": batch * steps / seconds,
        "step_ms": 1000 * seconds / steps,
        "warmup_s": warmup_s,
        "peak_gib": peak,
    }


def metrics_side_by_side(device: str, quick: bool) -> list[dict]:
    """Figure 3's torchmetrics comparison (64 px x 4, 512 px x 8) on ``device``, printed."""
    from benchmarks.harness import Settings
    from benchmarks.metrics import torchmetrics_side_by_side

    print(f"metric update per batch on {device}, torch {torch.__version__}")
    figures = torchmetrics_side_by_side(Settings(quick=quick), 6, device)
    for figure in figures:
        print(figure.line(), flush=True)
    return [{"name": f.name, "value": f.value, "note": f.note} for f in figures]


def main(argv: list[str] | None = None) -> list:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu", description=__doc__.split("\n")[0]
    )
    add = parser.add_argument
    add("--cpu", action="store_true", help="CPU table: compile vs eager, metrics at 256 px")
    add("--smoke", action="store_true", help="tiny sizes on the CPU, no compile")
    add("--out", default=None, help="results folder (default outputs/bench)")
    add("--models", default=None, help=f"comma list of {', '.join(GPU_MODELS)}")
    add("--peak-tflops", type=float, default=None, help="the device's bf16 dense peak (MFU)")
    add("--variants", default=None, help=f"the variant table instead: {','.join(VARIANTS)}")
    add("--device", default=None, help="--variants/--metrics: default cuda if available")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="time our confusion matrix against torchmetrics' Jaccard and ConfMat instead",
    )
    args = parser.parse_args(argv)
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.metrics:
        return metrics_side_by_side(args.device or default_device, args.smoke)
    if args.variants:
        return variant_table(args, default_device, parser)
    return figure_eleven(args, parser)


def figure_eleven(args, parser) -> list:
    """The GPU table (on a GPU), or the CPU one (--cpu), or every part tiny (--smoke)."""
    import json
    from pathlib import Path

    from benchmarks.gpu_train import Plan, run_cpu, run_gpu
    from benchmarks.harness import Settings, quiet_lightning

    quiet_lightning()
    settings = Settings(quick=args.smoke)
    if args.out:
        settings.out_dir, settings.data_dir = Path(args.out), Path(args.out) / "data"
    models = tuple(m for m in (args.models or ",".join(GPU_MODELS)).split(",") if m)
    unknown = sorted(set(models) - set(GPU_MODELS))
    if unknown:
        parser.error(f"--models: unknown {unknown}; valid: {', '.join(GPU_MODELS)}")
    cpu = torch.device("cpu")
    if args.smoke:
        tiny = Plan(cpu, size=64, batch=2, steps=2, warmup=1, compile=False, models=models[:1],
                    repeats=1, val_batches=2, slide_images=1)  # fmt: skip
        figures = run_gpu(settings, tiny, args.peak_tflops) + run_cpu(settings, tiny)
    elif args.cpu:
        figures = run_cpu(settings, Plan(cpu, size=256, batch=4, steps=10, warmup=3))
    elif torch.cuda.is_available():
        figures = run_gpu(settings, Plan(torch.device("cuda"), models=models), args.peak_tflops)
    else:
        parser.error("no CUDA device here: run it on a GPU machine, or pass --cpu (or --smoke)")
    on_gpu = torch.cuda.is_available() and not (args.cpu or args.smoke)
    device = torch.cuda.get_device_name() if on_gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"\nFigure 11 on {device}; torch {torch.__version__}")
    for figure in figures:
        print(figure.line())
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    results = [{"name": f.name, "value": f.value, "unit": f.unit, "target": f.target,
                "verdict": f.verdict, "note": f.note} for f in figures]  # fmt: skip
    path = settings.out_dir / "gpu_results.json"
    record = {"device": device, "torch": torch.__version__, "figures": results}
    path.write_text(json.dumps(record, indent=1))
    print(f"results: {path}")
    return figures


def variant_table(args, default_device: str, parser) -> list[dict]:
    """The earlier per-variant table: U-Net-R34 fp32 / bf16 / channels_last / compile."""
    if args.smoke:
        args.size, args.batch, args.steps, args.warmup = 64, 2, 2, 1
        args.device = args.device or "cpu"
    device = torch.device(args.device or default_device)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: unknown {unknown}; valid: {', '.join(VARIANTS)}")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = (
            True  # fixed input size: let cuDNN pick its fastest kernels
        )
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"U-Net-ResNet34, {args.size}x{args.size}, batch {args.batch}, training steps on {name}, "
        f"torch {torch.__version__}"
    )
    print(
        f"{'variant':<18}{'img/s':>9}{'ms/step':>10}{'vs fp32':>9}{'peak GiB':>10}{'warm-up s':>11}"
    )
    rows = []
    for variant in variants:
        result = measure(variant, device, args.size, args.batch, args.steps, args.warmup)
        rows.append({"variant": variant, **result})
        base = next((r["img_s"] for r in rows if r["variant"] == "fp32"), None)
        speedup = f"{result['img_s'] / base:.2f}x" if base else "-"
        print(
            f"{variant:<18}{result['img_s']:>9.1f}{result['step_ms']:>10.1f}{speedup:>9}"
            f"{result['peak_gib']:>10.2f}{result['warmup_s']:>11.1f}",
            flush=True,
        )
    fastest = max(rows, key=lambda r: r["img_s"])
    print(f"fastest: {fastest['variant']} ({fastest['img_s']:.1f} img/s)")
    return rows


if __name__ == "__main__":
    main()
