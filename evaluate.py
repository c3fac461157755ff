"""Evaluate a checkpoint on a dataset split: mIoU, accuracies, Dice, per-class scores, confusion matrix.

    python evaluate.py ckpt_path=outputs/<date>/<time>/checkpoints/last.ckpt
    python evaluate.py ckpt_path=... split=val
    python evaluate.py ckpt_path=... data=folder data.root=/my/data
    python evaluate.py ckpt_path=... inference=slide inference.crop_size=128
    python evaluate.py ckpt_path=... inference=tta postprocess=crf

The model config travels inside the checkpoint; without ``data=...`` the dataset
it was trained on is used. Prints a table and writes metrics.json, confusion.csv
and confusion.png in the run folder.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from segexp.infer.checkpoint_data import check_same_classes, data_config, split_name


def evaluate(cfg: DictConfig) -> dict[str, float]:

    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from segexp.infer.report import format_report, plot_confusion, write_confusion_csv
    from segexp.run.checkpoint import load_module
    from segexp.run.rundir import write_json, write_metadata

    run_dir = Path(cfg.paths.output_dir)
    model = load_module(cfg.ckpt_path)

    data = data_config(cfg, model)
    overrides = {
        "test_split": split_name(data, cfg.split),
        "mean": model.hparams.mean,
        "std": model.hparams.std,
    }
    if cfg.batch_size:
        overrides["batch_size"] = cfg.batch_size
    check_same_classes(cfg.ckpt_path, model.class_names, data)
    datamodule = instantiate(data, **overrides)

    postprocess = instantiate(cfg.postprocess) if cfg.get("postprocess") else None
    model.set_inference(instantiate(cfg.inference, postprocess=postprocess))

    write_metadata(run_dir)
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=[])
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
    print(f"\nrun folder: {run_dir.resolve()}")
    for name in ("metrics.json", "confusion.csv", "confusion.png"):
        print(f"  {name:<14} {(run_dir / name).resolve()}")
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    from segexp.run.errors import exit_codes

    with exit_codes():  # user errors (config, data, checkpoint): one line and exit 2
        evaluate(cfg)


if __name__ == "__main__":
    from segexp.run.entry import hydra_entry
    from segexp.run.hydra_help import speed_up_help

    speed_up_help()
    hydra_entry(main)  # Hydra's own config errors exit 2 too
