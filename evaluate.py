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

import sys

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict


def data_config(cfg: DictConfig, model) -> DictConfig:
    """The dataset to evaluate on: ``data=...`` from the command line, else the training one."""
    if cfg.get("data"):
        data_cfg = cfg.data
        # A folder given on the command line takes its class count from the checkpoint.
        if OmegaConf.is_missing(data_cfg, "num_classes"):
            with open_dict(data_cfg):
                data_cfg.num_classes = model.hparams.num_classes
        return data_cfg
    if model.run_config and model.run_config.get("data"):
        return OmegaConf.create(model.run_config["data"])
    raise ValueError(
        f"ckpt_path={cfg.ckpt_path} does not record its dataset; choose one with data=NAME "
        "(e.g. data=folder data.root=/my/data)"
    )


def split_name(data: DictConfig, split: str) -> str:
    """The dataset's own name for ``split``: a role (train / val / test) goes through
    ``data.<role>_split`` (VOC's test role reads ``val``, COCO's val reads ``val2017``);
    any other name is the dataset's split as written (e.g. ``split=train_aug``)."""
    if split in ("train", "val", "test"):
        return str(data.get(f"{split}_split") or split)
    return split


def evaluate(cfg: DictConfig) -> dict[str, float]:
    from pathlib import Path

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
    datamodule = instantiate(data, **overrides)
    if datamodule.num_classes != model.hparams.num_classes:
        raise ValueError(
            f"data.num_classes={datamodule.num_classes} but the checkpoint predicts "
            f"{model.hparams.num_classes} classes; evaluate on a dataset with the same classes"
        )

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
    from segexp.data.datasets.base import DataError
    from segexp.run.checkpoint import CheckpointError

    try:
        evaluate(cfg)
    except (CheckpointError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    from segexp.run.hydra_help import speed_up_help

    speed_up_help()
    main()
