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
from omegaconf import DictConfig, OmegaConf


def data_config(cfg: DictConfig, model) -> DictConfig:
    """The dataset to evaluate on: ``data=...`` from the command line, else the training one."""
    if cfg.get("data"):
        from segexp.data.classes import resolve_num_classes

        data_cfg = cfg.data
        # data.num_classes unset: the dataset's count (classes.txt, COCO categories, ...),
        # else the checkpoint's; a disagreement with the checkpoint is an error below.
        resolve_num_classes(data_cfg, default=model.hparams.num_classes)
        return data_cfg
    if model.run_config and model.run_config.get("data"):
        data_cfg = OmegaConf.create(model.run_config["data"])
        generate = data_cfg.get("generate")
        if generate is not None and generate.get("root"):
            # A generated dataset is drawn again under this machine's data folder, never
            # where a checkpoint from elsewhere says (it is data, not a place to write).
            root = Path(cfg.paths.data_dir) / Path(str(generate.root)).name
            generate.root = str(root)
            if data_cfg.get("root") is not None:
                data_cfg.root = str(root)
        return data_cfg
    from segexp.errors import UserError

    raise UserError(
        f"ckpt_path={cfg.ckpt_path} does not record its dataset; choose one with data=NAME "
        "(e.g. data=folder data.root=/my/data)"
    )


def split_name(data: DictConfig, split: str) -> str | None:
    """The dataset's own name for ``split``: a role (train / val / test) goes through
    ``data.<role>_split`` (VOC's test role reads ``val``, COCO's val reads ``val2017``);
    any other name is the dataset's split as written (e.g. ``split=train_aug``)."""
    if split == "test" and "test_split" in data and data.test_split is None:
        return None  # the datamodule's choice: "test" when the dataset has it, else val
    if split in ("train", "val", "test"):
        return str(data.get(f"{split}_split") or split)
    return split


def check_same_classes(ckpt_path: str, checkpoint_names: list[str], data: DictConfig) -> None:
    """Refuse a dataset whose classes differ from the checkpoint's in number or names.

    The dataset's names are its own (classes.txt, COCO categories, VOC's list...), else
    ``data.class_names``. Names count only where both sides have them (a checkpoint
    without names holds the placeholders ``class_<i>``); the number always does.
    """
    from segexp.data.classes import ClassesError, dataset_classes

    names, source = dataset_classes(data)
    if names is None and data.get("class_names") is not None:
        names, source = list(data.class_names), "data.class_names"
    count = len(names) if names is not None else int(data.num_classes)
    placeholders = [f"class_{i}" for i in range(len(checkpoint_names))]
    if count == len(checkpoint_names) and (
        names is None or checkpoint_names == placeholders or list(names) == checkpoint_names
    ):
        return
    where = source or (f"data.root={data.root}" if data.get("root") else "the dataset")
    dataset = f"{count} classes {list(names)}" if names is not None else f"{count} classes"
    raise ClassesError(
        f"ckpt_path={ckpt_path} predicts {len(checkpoint_names)} classes {checkpoint_names}, "
        f"but {where} defines {dataset}; the scores would be meaningless. Evaluate on a "
        "dataset with the checkpoint's classes (in the same order), or fix the dataset's "
        "classes.txt / data.class_names."
    )


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
    from segexp.run.hydra_help import speed_up_help

    speed_up_help()
    main()
