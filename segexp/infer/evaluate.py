"""Evaluate a checkpoint on a dataset split: mIoU, accuracies, Dice, per-class scores, confusion.

The model config travels inside the checkpoint; without ``data=...`` the dataset it was
trained on is used (``segexp.infer.checkpoint_data``). Prints a table and writes
metrics.json, confusion.csv and confusion.png in the run folder, and, unless
``analysis.enabled=false``, the analysis of the split: per-image scores, the worst
images, confused pairs, Boundary IoU, recall by object size (the ``analysis`` callback of
``conf/eval.yaml``, ``segexp.track.analysis``; this module only instantiates it).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """``segexp eval``: score ``cfg.ckpt_path`` on ``cfg.split``; return the metrics."""
    from segexp.run.checkpoint import load_module, trusted_packages

    # The checkpoint first: a wrong path or a refused file is reported before the imports below.
    model = load_module(cfg.ckpt_path, trust=trusted_packages(cfg))
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from segexp.infer.checkpoint_data import checkpoint_datamodule
    from segexp.infer.postprocess import build_postprocess
    from segexp.run.report import format_report, plot_confusion, write_confusion_csv
    from segexp.run.rundir import write_json, write_metadata

    run_dir = Path(cfg.paths.output_dir)
    if cfg.get("compile"):
        model.compile_network(str(cfg.get("compile_mode") or "default"))
    overrides = {"batch_size": cfg.batch_size} if cfg.batch_size else {}
    datamodule = checkpoint_datamodule(cfg, model, cfg.split, **overrides)

    # A CRF without tuned settings stops here, naming the tuning command (on another split).
    postprocess = build_postprocess(cfg, "train" if cfg.split == "val" else "val")
    model.set_inference(instantiate(cfg.inference, postprocess=postprocess))
    wanted = cfg.get("analysis") and cfg.analysis.get("enabled", True)
    analysis = instantiate(cfg.analysis) if wanted else None

    write_metadata(run_dir)
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=[analysis] if analysis else [])
    trainer.test(model, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics = {k.replace("test/", f"{cfg.split}/", 1): v for k, v in metrics.items()}
    if not trainer.is_global_zero:
        return metrics

    confmat = model.last_confmat["test"].numpy()
    names = model.class_names
    write_json(run_dir / "metrics.json", metrics)
    write_confusion_csv(confmat, names, run_dir / "confusion.csv")
    plot_confusion(
        confmat, names, run_dir / "confusion.png", title=f"{cfg.split}: {Path(cfg.ckpt_path).name}"
    )
    print(f"\ncheckpoint: {cfg.ckpt_path}  split: {cfg.split}  inference: {model.inference}")
    print(format_report(metrics, names, cfg.split, confmat))
    if analysis is not None and analysis.report():
        print(f"\n{analysis.report()}")
    print(f"\nrun folder: {run_dir.resolve()}")
    files = [run_dir / name for name in ("metrics.json", "confusion.csv", "confusion.png")]
    for path in files + (analysis.files if analysis is not None else []):
        print(f"  {path.name:<14} {path.resolve()}")
    return metrics
