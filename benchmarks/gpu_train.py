"""Figure 11: training where users train, at 512 px on a GPU, against a bare loop and the
hardware's limit; and, on a CPU, what torch.compile and the metrics cost at 256 px.

    python -m benchmarks.gpu             # one GPU, about 8 minutes: the GPU table
    python -m benchmarks.gpu --cpu       # the CPU table (unet, 256 px)
    python -m benchmarks.gpu --smoke     # tiny, on the CPU, no compile: every part runs

GPU arms, per model (U-Net ResNet-34 and DeepLabV3+ ResNet-50, 512 px, batch 16), each
training on one random batch held on the device, timed after warm-up steps (compilation
happens in them) with the device synchronised:
  (a) bare    a hand-written loop: the same network and AdamW (fused), bf16 autocast,
              channels_last, torch.compile: what the hardware gives without a framework
  (b) segexp  ``segexp train``'s Trainer, loggers and callbacks with trainer=gpu (bf16-mixed)
              channels_last=true compile=true: what a user gets
  (c) fp32    segexp with precision 32-true, channels_last=false, compile=false
b / a is the framework's overhead, b / c what the options buy. MFU is (b)'s model FLOP/s
(torch's FLOP counter, forward + backward) over the device's bf16 dense peak.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from dataclasses import dataclass

import torch

from benchmarks.harness import Figure, Settings, interleaved, silenced

# bf16 dense tensor-core peak, TFLOP/s, from the vendors' data sheets (no sparsity).
PEAK_BF16_TFLOPS = {
    "H200": 989.4,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.4,  # SXM (HBM3)
    "A100": 312.0,
    "L40S": 362.1,
    "L4": 121.0,
    "A10": 125.0,
    "RTX 4090": 165.2,
}
GPU_MODELS = {
    "unet-r34": ["model=unet", "model.encoder_name=resnet34"],
    "deeplabv3plus-r50": ["model=deeplabv3plus", "model.encoder_name=resnet50"],
}
FAST = ["channels_last=true", "compile=true"]
FP32 = ["channels_last=false", "compile=false", "trainer.precision=32-true"]


@dataclass
class Plan:
    """Sizes of one run: GPU (defaults), --cpu or --smoke."""

    device: torch.device
    size: int = 512
    batch: int = 16
    steps: int = 20
    warmup: int = 5
    compile: bool = True
    models: tuple[str, ...] = tuple(GPU_MODELS)
    repeats: int = 5  # interleaved pairs of the validation figure (median of their ratios)
    val_batches: int = 8
    slide_images: int = 3  # images of twice the crop size for the sliding-window figure

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def compose(settings: Settings, plan: Plan, overrides: list[str]):
    trainer = ["trainer=gpu"] if plan.cuda else ["trainer.accelerator=cpu"]
    if not plan.compile:
        overrides = [o for o in overrides if not o.startswith("compile=")]
    return settings.compose([*trainer, "data.num_workers=0", *overrides])


def random_batch(cfg, plan: Plan) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    shape = (plan.batch, 3, plan.size, plan.size)
    images = torch.randn(*shape, generator=generator)
    masks = torch.randint(0, int(cfg.data.num_classes), (plan.batch, plan.size, plan.size))
    return {"image": images.to(plan.device), "mask": masks.to(plan.device)}


def bf16(plan: Plan, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=plan.device.type, dtype=torch.bfloat16)


def bare_rate(cfg, plan: Plan, batch, use_bf16: bool) -> dict[str, float]:
    """(a): forward, loss, backward, optimizer step on ``batch``; images/s after warm-up."""
    from hydra.utils import instantiate

    from segexp.model.module import build_module

    module = build_module(cfg).to(plan.device).train()
    net = module.compiled_net if module.compiled_net is not None else module.net
    images = batch["image"].contiguous(memory_format=module.memory_format)
    optimizer = instantiate(cfg.optimizer)(module)  # fused on CUDA (optimizer.fused=null)

    def step() -> None:
        with bf16(plan, use_bf16):
            loss = module.criterion(net(images), batch["mask"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    began = time.perf_counter()
    for _ in range(plan.warmup):
        step()
    sync(plan.device)
    warmup_s = time.perf_counter() - began
    reset_peak(plan.device)
    began = time.perf_counter()
    for _ in range(plan.steps):
        step()
    sync(plan.device)
    seconds = time.perf_counter() - began
    return {"img_s": plan.batch * plan.steps / seconds, "warmup_s": warmup_s}


def synced_clock(device: torch.device, warmup: int):
    """A Lightning callback recording each training step's start (the device synchronised);
    the peak memory is reset once the warm-up steps are done."""
    import pytorch_lightning as pl

    class Clock(pl.Callback):
        def __init__(self) -> None:
            self.starts: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            sync(device)
            self.starts.append(time.perf_counter())
            if len(self.starts) == 1 + warmup:
                reset_peak(device)

    return Clock()


def segexp_rate(cfg, plan: Plan, batch, out) -> dict[str, float]:
    """(b) / (c): the Trainer, loggers and callbacks ``segexp train`` builds, on ``batch``."""
    from hydra.utils import instantiate
    from omegaconf import open_dict
    from torch.utils.data import DataLoader

    from segexp.model.module import build_module

    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    module = build_module(cfg)
    clock = synced_clock(plan.device, plan.warmup)
    loggers = [instantiate(entry) for entry in (cfg.logger or {}).values() if entry]
    callbacks = [
        instantiate(entry)
        for name, entry in (cfg.callbacks or {}).items()
        if entry and (loggers or name != "lr_monitor")
    ]
    trainer = instantiate(
        cfg.trainer,
        callbacks=[*callbacks, clock],
        logger=loggers or False,
        max_epochs=1,
        limit_val_batches=0,
        enable_progress_bar=False,
    )
    loader = DataLoader([batch] * (plan.warmup + plan.steps + 1), batch_size=None)
    with silenced():
        trainer.fit(module, train_dataloaders=loader)
    starts = clock.starts
    warmup_s = starts[plan.warmup] - starts[0]
    step_s = (starts[-1] - starts[plan.warmup]) / (len(starts) - 1 - plan.warmup)
    return {"img_s": plan.batch / step_s, "warmup_s": warmup_s, "peak_gib": peak_gib(plan.device)}


def flops_per_step(cfg, plan: Plan, batch) -> float:
    """Forward + backward FLOPs of one training step (torch's FLOP counter, uncompiled)."""
    from omegaconf import open_dict
    from torch.utils.flop_counter import FlopCounterMode

    from segexp.model.module import build_module

    with open_dict(cfg):
        cfg.compile = False
    module = build_module(cfg).to(plan.device).train()
    counter = FlopCounterMode(display=False)
    with counter, bf16(plan, plan.cuda):
        loss = module.criterion(module(batch["image"]), batch["mask"])
        loss.backward()
    return float(counter.get_total_flops())


def device_peak_tflops(device: torch.device, given: float | None) -> tuple[float | None, str]:
    if given:
        return given, "given with --peak-tflops"
    if device.type != "cuda":
        return None, "no bf16 peak known for a CPU"
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS.items():  # most specific names first
        if key in name:
            return tflops, f"{name}: {tflops} TFLOP/s bf16 dense (data sheet)"
    return None, f"{name}: peak unknown, pass --peak-tflops"


def validation_ratio(cfg, plan: Plan, batch, count: int, repeats: int) -> tuple[float, float]:
    """(median ratio of trainer.validate with all metrics / forward only, full seconds)."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from benchmarks.metrics import forward_only
    from segexp.model.module import build_module

    full = build_module(cfg)
    bare = forward_only(build_module(cfg))
    bare.load_state_dict(full.state_dict())
    precision = "bf16-mixed" if plan.cuda else "32-true"
    loader = DataLoader([batch] * count, batch_size=None)

    def timed(module) -> float:
        trainer = pl.Trainer(
            accelerator=plan.device.type, devices=1, precision=precision, logger=False,
            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        )  # fmt: skip
        began = time.perf_counter()
        with silenced():
            trainer.validate(module, dataloaders=loader, verbose=False)
        sync(plan.device)
        return time.perf_counter() - began

    results = interleaved({"full": lambda: timed(full), "bare": lambda: timed(bare)}, repeats, True)
    ratios = [f / b for f, b in zip(results["full"], results["bare"])]
    return statistics.median(ratios), statistics.median(results["full"])


def slide_rate(cfg, plan: Plan, size: int, count: int) -> float:
    """Images/s of sliding-window (512 windows, 2/3 stride) + flip inference on size^2 images."""
    from segexp.infer.engine import Inference
    from segexp.model.module import build_module

    module = build_module(cfg).to(plan.device).eval()
    inference = Inference(mode="slide", crop_size=plan.size, hflip=True)
    images = torch.randn(2, 3, size, size, device=plan.device)
    with torch.inference_mode(), bf16(plan, plan.cuda):
        inference.log_probs(module, images)  # warm-up (compiles)
        sync(plan.device)
        began = time.perf_counter()
        for _ in range(count):
            inference.log_probs(module, images)
        sync(plan.device)
    return 2 * count / (time.perf_counter() - began)


def loader_figures(settings: Settings, plan: Plan, model_img_s: float) -> list[Figure]:
    """The data path at 512 px crops with the machine's cores as workers vs the model."""
    from benchmarks.data import loader_rate
    from benchmarks.harness import prepared_datamodule

    workers = min(os.cpu_count() or 1, 16)
    image = 2 * plan.size
    count = max(4 * plan.batch, 8)
    cfg = settings.compose(
        [f"data.generate.image_size={image}", f"data.generate.num_train={count}",
         "data.generate.num_val=2", "data.generate.num_test=2", "augment=crop",
         f"augment.crop_size={plan.size}", f"data.batch_size={plan.batch}",
         f"data.num_workers={workers}"]
    )  # fmt: skip
    datamodule = prepared_datamodule(cfg)
    delivered, startup, images = loader_rate(datamodule.train_dataloader())
    pinned = datamodule.pin_memory
    return [
        Figure(
            f"loader: {plan.size} px crops of {image} px images", delivered, "img/s",
            note=f"{workers} workers, pin_memory={pinned}, {images} images, start-up {startup:.1f} s",
        ),
        Figure("loader img/s / segexp (b) img/s", delivered / model_img_s, "x",
               ">= 1.5" if plan.cuda else ""),
    ]  # fmt: skip


def train_figures(settings: Settings, plan: Plan, name: str, peak: float | None) -> list[Figure]:
    """(a), (b), (c) of one model, their ratios, MFU and peak memory."""
    arch = GPU_MODELS[name]
    fast = compose(settings, plan, [*arch, *FAST])
    batch = random_batch(fast, plan)
    bare = bare_rate(fast, plan, batch, use_bf16=plan.cuda)
    ours = segexp_rate(fast, plan, batch, settings.out_dir / f"gpu-{name}-segexp")
    fp32 = segexp_rate(compose(settings, plan, [*arch, *FP32]), plan, batch,
                       settings.out_dir / f"gpu-{name}-fp32")  # fmt: skip
    flops = flops_per_step(compose(settings, plan, [*arch, *FAST]), plan, batch)
    achieved = flops * ours["img_s"] / plan.batch
    memory = "" if ours["peak_gib"] is None else f"; peak {ours['peak_gib']:.2f} GiB"
    figures = [
        Figure(f"{name}: (a) bare loop", bare["img_s"], "img/s",
               note=f"warm-up + compile {bare['warmup_s']:.0f} s"),
        Figure(f"{name}: (b) segexp train", ours["img_s"], "img/s",
               note=f"warm-up + compile {ours['warmup_s']:.0f} s{memory}"),
        Figure(f"{name}: (c) segexp fp32 eager", fp32["img_s"], "img/s",
               note="" if fp32["peak_gib"] is None else f"peak {fp32['peak_gib']:.2f} GiB"),
        Figure(f"{name}: segexp / bare loop (b / a)", ours["img_s"] / bare["img_s"], "x",
               ">= 0.97" if plan.cuda else ""),
        Figure(f"{name}: what the options buy (b / c)", ours["img_s"] / fp32["img_s"], "x",
               ">= 2" if plan.cuda else ""),
        Figure(f"{name}: model TFLOP/s of (b)", achieved / 1e12, "TFLOP/s",
               note=f"{flops / plan.batch / 1e9:.1f} GFLOP per image, forward + backward"),
    ]  # fmt: skip
    if peak:
        target = ">= 0.3" if name.startswith("deeplab") else ""
        figures.append(Figure(f"{name}: MFU of (b)", achieved / (peak * 1e12), "", target))
    return figures


def run_gpu(settings: Settings, plan: Plan, peak_tflops: float | None) -> list[Figure]:
    peak, peak_note = device_peak_tflops(plan.device, peak_tflops)
    figures = [Figure("device bf16 dense peak", peak, "TFLOP/s", note=peak_note)]
    rates = {}
    for name in plan.models:
        began = time.perf_counter()
        model_figures = train_figures(settings, plan, name, peak)
        rates[name] = model_figures[1].value
        figures += model_figures
        print(*(f.line() for f in model_figures), f"  ({time.perf_counter() - began:.0f} s)",
              sep="\n", flush=True)  # fmt: skip
    first = plan.models[0]
    cfg = compose(settings, plan, [*GPU_MODELS[first], *FAST])
    batch = random_batch(cfg, plan)
    ratio, seconds = validation_ratio(cfg, plan, batch, plan.val_batches, plan.repeats)
    images = plan.val_batches * plan.batch
    figures.append(Figure(f"{first}: validation, all metrics / forward only", ratio, "x",
                          "<= 1.03" if plan.cuda else "",
                          note=f"{images} images of {plan.size} px, {seconds:.2f} s"))  # fmt: skip
    big = 2 * plan.size
    rate = slide_rate(cfg, plan, big, count=plan.slide_images)
    figures.append(Figure(f"{first}: sliding window + flip, {big} px images", rate, "img/s",
                          note=f"{plan.size} px windows, stride 2/3"))  # fmt: skip
    figures += loader_figures(settings, plan, rates[first])
    return figures


def run_cpu(settings: Settings, plan: Plan) -> list[Figure]:
    """compile vs eager training steps and the metric overhead, U-Net at 256 px."""
    arch = ["model=unet"]
    eager_cfg = compose(settings, plan, arch)
    batch = random_batch(eager_cfg, plan)
    eager = segexp_rate(eager_cfg, plan, batch, settings.out_dir / "cpu-eager")
    figures = [
        Figure(f"unet {plan.size} px, batch {plan.batch}: eager", eager["img_s"], "img/s",
               note=f"first {plan.warmup} steps {eager['warmup_s']:.1f} s"),
    ]  # fmt: skip
    if plan.compile:
        compiled = segexp_rate(compose(settings, plan, [*arch, "compile=true"]), plan, batch,
                               settings.out_dir / "cpu-compiled")  # fmt: skip
        figures += [
            Figure(f"unet {plan.size} px, batch {plan.batch}: compile=true", compiled["img_s"],
                   "img/s", note=f"first {plan.warmup} steps {compiled['warmup_s']:.1f} s "
                   "(compiles)"),
            Figure("compiled / eager training step rate", compiled["img_s"] / eager["img_s"], "x"),
            Figure("compile time (first steps, compiled - eager)",
                   compiled["warmup_s"] - eager["warmup_s"], "s"),
        ]  # fmt: skip
    ratio, seconds = validation_ratio(eager_cfg, plan, batch, plan.val_batches, plan.repeats)
    figures.append(Figure(f"unet {plan.size} px: validation, all metrics / forward only", ratio,
                          "x", "<= 1.03",
                          note=f"median of {plan.repeats} pairs; {seconds:.1f} s a pass"))  # fmt: skip
    return figures
