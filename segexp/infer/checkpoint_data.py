"""Which dataset a checkpoint is evaluated on: the one ``segexp eval`` and ``tune-crf`` share.

``data=...`` from the command line, else the dataset recorded in the checkpoint; the
split a role (train / val / test) names in that dataset; a refusal when the dataset's
classes are not the checkpoint's; and ``checkpoint_datamodule``, which does all of it.
"""

from __future__ import annotations

from pathlib import Path

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
        return recorded_data(cfg, model.run_config["data"])
    from segexp.errors import UserError

    raise UserError(
        f"ckpt_path={cfg.ckpt_path} does not record its dataset; choose one with data=NAME "
        "(e.g. data=folder data.root=/my/data)"
    )


def recorded_data(cfg: DictConfig, recorded) -> DictConfig:
    """The checkpoint's dataset, read as plain data (``segexp.run.trust.checkpoint_data``):
    nothing in it is built as it stands. A generated dataset is read from this machine's
    data folder and never drawn again from the file's recipe (a checkpoint never makes
    segexp write); when it is not there, the error gives the command line that draws it."""
    from segexp.errors import UserError
    from segexp.run.checkpoint import CheckpointError, checkpoint_data, trusted_packages

    data, problems = checkpoint_data(recorded, trusted_packages(cfg))
    if problems:  # load_module refused these already; never build them regardless
        raise CheckpointError(f"ckpt_path={cfg.ckpt_path}: " + "; ".join(problems[:3]))
    generated = data.pop("generated", None)
    if generated is not None:
        root = Path(cfg.paths.data_dir) / Path(str(data.get("root") or "shapes")).name
        data["root"] = str(root)
        if "dataset" in data:
            data["dataset"]["root"] = str(root)
        if not (root / "images").is_dir():
            settings = " ".join(f"data.generate.{k}={v}" for k, v in sorted(generated.items()))
            raise UserError(
                f"ckpt_path={cfg.ckpt_path} was trained on a generated dataset, which is not in "
                f"{root}; a checkpoint's recipe is never run. Draw it with the command's own "
                f"config: add data=shapes {settings}"
            )
    return OmegaConf.create(data)


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


def checkpoint_datamodule(cfg: DictConfig, model, split: str, **overrides):
    """The data module that scores ``model`` on ``split``: the dataset ``data_config``
    chooses, normalised like the checkpoint's training, its classes checked against the
    checkpoint's (``check_same_classes``); ``overrides`` go to the data module as well."""
    from hydra.utils import instantiate

    data = data_config(cfg, model)
    check_same_classes(cfg.ckpt_path, model.class_names, data)
    return instantiate(
        data,
        test_split=split_name(data, split),
        mean=model.hparams.mean,
        std=model.hparams.std,
        **overrides,
    )
