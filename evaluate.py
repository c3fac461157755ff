"""Evaluate a checkpoint on a dataset split: mIoU, pixel accuracy, per-class IoU.

    python evaluate.py ckpt_path=outputs/<date>/<time>/checkpoints/last.ckpt
    python evaluate.py ckpt_path=... split=val
    python evaluate.py ckpt_path=... data=folder data.root=/my/data data.num_classes=6

The model config travels inside the checkpoint; without ``data=...`` the dataset
it was trained on is used. Prints a table and writes metrics.json in the run folder.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf


def evaluate(cfg: DictConfig) -> dict[str, float]:
    from pathlib import Path

    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from segexp.checkpoint import load_module
    from segexp.rundir import write_json, write_metadata
    from segexp.summary import print_summary

    run_dir = Path(cfg.paths.output_dir)
    model = load_module(cfg.ckpt_path)

    if cfg.get("data"):
        data_cfg = cfg.data
    elif model.run_config and model.run_config.get("data"):
        data_cfg = OmegaConf.create(model.run_config["data"])
    else:
        raise ValueError(
            f"ckpt_path={cfg.ckpt_path} does not record its dataset; choose one with data=NAME"
        )
    overrides = {"test_split": cfg.split, "mean": model.hparams.mean, "std": model.hparams.std}
    if cfg.batch_size:
        overrides["batch_size"] = cfg.batch_size
    datamodule = instantiate(data_cfg, **overrides)
    if datamodule.num_classes != model.hparams.num_classes:
        raise ValueError(
            f"data.num_classes={datamodule.num_classes} but the checkpoint predicts "
            f"{model.hparams.num_classes} classes; evaluate on a dataset with the same classes"
        )

    write_metadata(run_dir)
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=[])
    trainer.test(model, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics = {k.replace("test/", f"{cfg.split}/", 1): v for k, v in metrics.items()}
    write_json(run_dir / "metrics.json", metrics)
    print(f"checkpoint: {cfg.ckpt_path}  split: {cfg.split}")
    print_summary(metrics, run_dir, model.class_names, stage=cfg.split)
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    from segexp.checkpoint import CheckpointError

    try:
        evaluate(cfg)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
