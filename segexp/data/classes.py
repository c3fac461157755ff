"""How many classes: ``data.num_classes`` filled from the dataset before anything is built.

The dataset defines its classes when it can: the lines of a folder's ``classes.txt``,
a COCO file's categories (plus background), the fixed lists of VOC, Cityscapes and
ADE20K; else ``data.class_names`` when it is set. ``data.num_classes: null`` (the
default of every format but ``shapes``) takes that number. A value the user sets must
agree with it. With no source at all the user must say: one line, two ways out.

The model and the metrics read ``${data.num_classes}`` by interpolation, so
``resolve_num_classes`` runs on the composed config before anything is instantiated
(train.py, evaluate.py, segexp.check); train.py then records the filled value in the
run folder's ``.hydra/config.yaml`` (``segexp.run.lifecycle.record_config``), so reproduce and resume
read the same number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from segexp.data.datasets.base import DataError
from segexp.errors import UserError


class ClassesError(UserError):
    """``data.num_classes`` cannot be known, or disagrees with the dataset."""


def _declared(data_cfg: DictConfig) -> int | None:
    if OmegaConf.is_missing(data_cfg, "num_classes"):
        return None
    return data_cfg.get("num_classes")


def classes_of(dataset_class: Any, kwargs: dict[str, Any]) -> tuple[list[str] | None, str]:
    """(class names ``dataset_class`` defines with these arguments, where they come from),
    or (None, "") when it defines none or its folder is not there (yet)."""
    finder = getattr(dataset_class, "defined_classes", None)
    root = kwargs.get("root")
    if finder is None or (root is not None and not Path(root).exists()):
        return None, ""  # not there (yet: data.generate writes it); see decide_num_classes
    names = finder(**kwargs)
    if names is None:
        return None, ""
    source = {
        "FolderDataset": f"{root}/classes.txt",
        "COCODataset": f"the categories of the '{kwargs.get('split')}' annotation file",
    }.get(dataset_class.__name__, f"{dataset_class.__name__}'s class list")
    return list(names), source


def decide_num_classes(
    declared: Any,
    names: list[str] | None,
    source: str,
    class_names: Any = None,
    root: Any = None,
    default: int | None = None,
) -> int:
    """The number of classes from what the user set and what the dataset defines (module doc)."""
    if class_names is not None:
        repeated = sorted({str(n) for n in class_names if list(class_names).count(n) > 1})
        if repeated:
            raise ClassesError(
                f"data.class_names={list(class_names)} repeats {', '.join(repeated)}; each class "
                "needs its own name (metrics are reported by name)."
            )
    if names is None and class_names is not None:
        names, source = list(class_names), "data.class_names"
    if declared is None:
        if names is not None:
            return len(names)
        if default is not None:
            return int(default)
        if root is not None and not Path(str(root)).exists():
            raise DataError(
                f"data.root={root} does not exist; point data.root at your dataset's folder."
            )
        where = f"{root}/classes.txt" if root is not None else "the dataset's class list"
        raise ClassesError(
            f"data.num_classes is not set and there is no {where}: set data.num_classes=N "
            "(background included) or write classes.txt (one class name a line)."
        )
    valid = isinstance(declared, int) and not isinstance(declared, bool) and declared >= 2
    if names is not None and valid and declared != len(names):  # (bad values: check_config)
        raise ClassesError(
            f"data.num_classes={declared} but {source} defines {len(names)} classes "
            f"({', '.join(map(str, names[:6]))}{', ...' if len(names) > 6 else ''}); "
            f"drop data.num_classes (it defaults to {len(names)}) or make them agree."
        )
    return declared


def dataset_spec(data_cfg: DictConfig) -> tuple[Any, dict[str, Any]]:
    """(the dataset class ``data.dataset`` names, its arguments resolved), or (None, {})."""
    from hydra.utils import get_class

    dataset = data_cfg.get("dataset")
    if dataset is None or not dataset.get("_target_"):
        return None, {}
    try:
        dataset_class = get_class(dataset._target_)
    except Exception:  # an unknown class: instantiate reports it later, with Hydra's message
        return None, {}
    kwargs = {
        k: v
        for k, v in OmegaConf.to_container(dataset, resolve=True).items()
        if not k.startswith("_")
    }
    return dataset_class, kwargs


def dataset_classes(data_cfg: DictConfig) -> tuple[list[str] | None, str]:
    """(class names the configured dataset defines, where they come from), or (None, "")."""
    dataset_class, kwargs = dataset_spec(data_cfg)
    if dataset_class is None:
        return None, ""
    kwargs.setdefault("split", data_cfg.get("train_split") or "train")
    return classes_of(dataset_class, kwargs)


def resolve_num_classes(data_cfg: DictConfig, default: int | None = None) -> int:
    """Fill ``data_cfg.num_classes`` (in place) from the dataset; return it.

    ``default`` stands in when nothing defines the classes (evaluate.py: the checkpoint's).
    Raises ClassesError when the dataset and a set value disagree, or nothing says how
    many classes there are.
    """
    declared = _declared(data_cfg)
    names, source = dataset_classes(data_cfg)
    number = decide_num_classes(
        declared, names, source, data_cfg.get("class_names"), data_cfg.get("root"), default
    )
    if declared is None:
        with open_dict(data_cfg):
            data_cfg.num_classes = number
    check_ignore_index(data_cfg.get("ignore_index"), number, names)
    return number


def check_ignore_index(ignore_index: Any, number: int, names: list[str] | None = None) -> None:
    """Refuse a ``data.ignore_index`` that is one of the ``number`` class ids: that class
    would be left out of the loss and score 0 IoU, dragging mIoU down without a word."""
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        return
    if 0 <= ignore_index < number:
        name = f" ({names[ignore_index]!r})" if names and ignore_index < len(names) else ""
        raise ClassesError(
            f"data.ignore_index={ignore_index} is class {ignore_index}{name}, one of the "
            f"{number} classes (0..{number - 1}): its pixels would be ignored and the class "
            f"would score 0. Set data.ignore_index to a value that is no class (e.g. 255), or "
            "relabel the pixels to ignore with it."
        )
