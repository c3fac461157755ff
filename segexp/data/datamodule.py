"""SegDataModule: datasets + joint transforms + loaders, with early data checks."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from segexp.data.classes import classes_of, decide_num_classes
from segexp.data.collate import pad_collate
from segexp.data.datasets.base import DataError, SegDataset
from segexp.data.sampling import SeededAugmentation, SeededSampler
from segexp.data.scan import check_arrays
from segexp.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform
from segexp.errors import UserError


def check_sample(dataset: SegDataset, index: int, num_classes: int, ignore_index: int) -> None:
    """Read one raw sample and fail with a clear DataError if it cannot be trained on."""
    image_path, mask_path = dataset.samples[index][:2]
    image, mask = dataset.load(index)
    problems = check_arrays(image, mask, image_path, mask_path, num_classes, ignore_index)
    if problems:
        raise DataError(problems[0].message, kind=problems[0].kind)


class SkippedSamples(pl.Callback):
    """Prints, at the end of each epoch, the samples ``data.on_bad_sample=skip`` dropped in it."""

    def __init__(self, datamodule: SegDataModule) -> None:
        self.datamodule = datamodule

    def _flush(self, trainer: pl.Trainer, stage: str) -> None:
        new = self.datamodule.epoch_skipped.pop(stage, None)
        if new and trainer.is_global_zero:
            lines = "\n".join(f"  - {message}" for message in sorted(new))
            print(
                f"data.on_bad_sample=skip: {len(new)} bad sample(s) skipped in {stage} "
                f"(epoch {trainer.current_epoch}):\n{lines}",
                flush=True,
            )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer, "train")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer, "test")


class SegDataModule(pl.LightningDataModule):
    """Train/val/test loaders for one dataset format.

    Args:
        dataset: a callable ``dataset(split=..., transform=...) -> SegDataset``
            (in config: the dataset class with ``_partial_: true`` and its layout arguments).
        num_classes: number of classes; labels are 0..num_classes-1. None: the number the
            dataset defines (``segexp.data.classes``).
        ignore_index: mask value excluded from loss and metrics.
        class_names: names for the classes (else the dataset's own, else ``class_<i>``).
        train_transforms / val_transforms: albumentations transforms (before normalisation).
        mean / std: normalisation, in [0, 1] units.
        pin_memory: page-locked batches (faster host-to-GPU copies); None: when CUDA is present.
        generate: optional callable run once in ``prepare_data`` (writes a generated dataset).
        test_split: the split ``test_dataloader`` reads (evaluate.py sets it); None: ``test``
            when the dataset has one, else the val split (with a printed notice).
        root: the dataset's folder, for messages and tools (the dataset reads its own copy).
        seed: seeds the training order and augmentation (``SeededSampler``); None: the
            seed given to ``seed_everything`` (``PL_GLOBAL_SEED``), else 0.
        pad_to_multiple: batches are padded (image 0, mask ``ignore_index``) to the largest
            sample, rounded up to this multiple, so images of any size batch and fit the encoder.
        on_bad_sample: ``raise`` (a DataError naming the file, at any sample) or ``skip``
            (drop it, print it at the end of the epoch; ``skipped`` lists them for run_info.json).
    """

    def __init__(
        self,
        dataset: Callable[..., SegDataset],
        num_classes: int | None,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        train_transforms: Sequence[Any] = (),
        val_transforms: Sequence[Any] = (),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        generate: Callable[[], Any] | None = None,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str | None = None,
        root: str | None = None,
        seed: int | None = None,
        pad_to_multiple: int = 32,
        on_bad_sample: str = "raise",
    ) -> None:
        super().__init__()
        if num_classes is None:  # from the dataset (train.py fills the config before this)
            factory_class = getattr(dataset, "func", None)
            kwargs = {**getattr(dataset, "keywords", {}), "split": train_split}
            names, source = classes_of(factory_class, kwargs) if factory_class else (None, "")
            num_classes = decide_num_classes(None, names, source, class_names, root)
        if num_classes < 2:
            raise UserError(f"data.num_classes={num_classes}: need at least 2 (background + 1).")
        if batch_size < 1:
            raise UserError(f"data.batch_size={batch_size}: must be at least 1.")
        self.dataset_factory = dataset
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self._class_names = list(class_names) if class_names is not None else None
        self.train_transforms_list = list(train_transforms)
        self.val_transforms_list = list(val_transforms)
        self.mean, self.std = list(mean), list(std)
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        # None: pin when a GPU will take the batches (page-locked memory copies to it faster).
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.generate = generate
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.root = root
        self.seed = seed
        # (epoch, samples already trained on) of the checkpoint fit resumed from; see load_state_dict.
        self.resume_position: tuple[int, int] | None = None
        self.pad_to_multiple = int(pad_to_multiple)
        self.datasets: dict[str, SegDataset] = {}
        if on_bad_sample not in ("raise", "skip"):
            raise UserError(
                f"data.on_bad_sample={on_bad_sample!r}: must be 'raise' (stop at the first bad "
                "sample) or 'skip' (drop it and list it at the end of the epoch)."
            )
        self.on_bad_sample = on_bad_sample
        # data.on_bad_sample=skip: stage -> the messages of the samples skipped (whole run),
        # and those of the current epoch, which SkippedSamples prints at its end.
        self.skipped: dict[str, list[str]] = {}
        self.epoch_skipped: dict[str, set[str]] = {}

    @property
    def class_names(self) -> list[str]:
        names = self._class_names
        if names is None and not self.datasets:
            # Formats name their own classes (VOC, COCO categories, classes.txt): build the
            # train split now (setup() reuses it) rather than fall back to class_<i>.
            try:
                self.setup_split("train")
            except DataError:
                pass  # setup() raises the same error when training starts
        if names is None and self.datasets:
            names = next(iter(self.datasets.values())).class_names
        if names is None:
            names = [f"class_{i}" for i in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise DataError(
                f"data.num_classes={self.num_classes} but {len(names)} class names were given "
                f"({names[:5]}...); make data.class_names (or classes.txt) list one name per class."
            )
        return list(names)

    def prepare_data(self) -> None:
        if self.generate is not None:
            self.generate()

    def available_splits(self) -> list[str] | None:
        """The split names the dataset has on disk (None: its format cannot tell)."""
        finder = getattr(getattr(self.dataset_factory, "func", None), "find_splits", None)
        if finder is None:
            return None
        return finder(**getattr(self.dataset_factory, "keywords", {}))

    def split_name(self, stage_key: str) -> str:
        """The dataset's split for ``train``/``val``/``test``; resolves ``test_split: null``."""
        split = self.splits[stage_key]
        if split is None and stage_key == "test":
            found = self.available_splits()
            if found is None or "test" in found:
                split = "test"
            else:
                split = self.splits["val"]
                trainer = getattr(self, "trainer", None)
                if trainer is None or trainer.is_global_zero:
                    print(
                        f"data: no 'test' split in {self.root or 'the dataset'} (found: "
                        f"{', '.join(found) or 'none'}); testing on '{split}' instead. "
                        "Set data.test_split to choose.",
                        flush=True,
                    )
            self.splits["test"] = split
        return split

    def raw_dataset(self, stage_key: str, strict: bool = True) -> SegDataset:
        """The dataset of one stage (``train``/``val``/``test``) without transforms, for tools."""
        return self.dataset_factory(split=self.split_name(stage_key), transform=None, strict=strict)

    def _build(self, stage_key: str, transforms: Sequence[Any]) -> SegDataset:
        split = self.split_name(stage_key)
        transform = build_transform(transforms, self.mean, self.std)
        dataset = self.dataset_factory(split=split, transform=transform)
        if len(dataset) == 0:
            raise DataError(
                f"split '{split}' ({self.root or type(dataset).__name__}) is empty: an empty split "
                f"would train or evaluate on nothing. Add samples, or point data.{stage_key}_split "
                "at a split that has them.",
                kind="empty split",
            )
        dataset.expect(self.num_classes, self.ignore_index, self.on_bad_sample)
        if self.on_bad_sample == "raise":  # fail before the first step, not in a worker
            check_sample(dataset, 0, self.num_classes, self.ignore_index)
        return dataset

    def setup(self, stage: str | None = None) -> None:
        wanted = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": ("test",),
            None: ("train", "val", "test"),
        }[stage]
        for key in wanted:
            self.setup_split(key)
        trainer = getattr(self, "trainer", None)
        if (
            self.on_bad_sample == "skip"
            and trainer is not None
            and not any(isinstance(c, SkippedSamples) for c in trainer.callbacks)
        ):
            trainer.callbacks.append(SkippedSamples(self))

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Take the skipped samples' messages out of the batch (data.on_bad_sample=skip)."""
        if isinstance(batch, dict) and "skipped" in batch:
            messages = batch.pop("skipped")
            trainer = getattr(self, "trainer", None)
            running = getattr(getattr(getattr(trainer, "state", None), "stage", None), "value", "")
            stage = {"train": "train", "test": "test"}.get(running, "val")
            seen = self.skipped.setdefault(stage, [])
            seen += [m for m in messages if m not in seen]
            self.epoch_skipped.setdefault(stage, set()).update(messages)
        return batch

    def setup_split(self, key: str) -> SegDataset:
        """Build (once) and check the dataset of one stage: ``train``, ``val`` or ``test``."""
        if key not in self.datasets:
            transforms = self.train_transforms_list if key == "train" else self.val_transforms_list
            self.datasets[key] = self._build(key, transforms)
        return self.datasets[key]

    def _loader(self, key: str, shuffle: bool, batch_size: int) -> DataLoader:
        return DataLoader(
            self.datasets[key],
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=shuffle and len(self.datasets[key]) > batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=partial(
                pad_collate, ignore_index=self.ignore_index, multiple=self.pad_to_multiple
            ),
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self.datasets["train"]
        seed = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        return DataLoader(
            SeededAugmentation(dataset),
            batch_size=self.batch_size,
            sampler=SeededSampler(len(dataset), seed, resume_at=self.resume_position),
            drop_last=len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=partial(
                pad_collate, ignore_index=self.ignore_index, multiple=self.pad_to_multiple
            ),
        )

    def state_dict(self) -> dict[str, Any]:
        """Where training stands in the epoch's data order (saved in every checkpoint)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or not trainer.training:
            return {}
        batches = int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        return {
            "epoch": int(trainer.current_epoch),
            "batches_done": batches,
            "epoch_done": bool(batches >= trainer.num_training_batches),
            "world_size": int(trainer.world_size),
            "accumulate_grad_batches": int(trainer.accumulate_grad_batches),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume the data order where the checkpoint stopped.

        Lightning restores this before it builds the train loader. The sampler needs the
        position even at an epoch boundary: on a restart Lightning starts the train
        iterator before it calls set_epoch, so without it the first resumed epoch would be
        drawn in epoch 0's order. A mid-epoch position is exact for one process without
        gradient accumulation; otherwise Lightning's own (approximate) restart applies.
        """
        if "epoch" not in state:
            return
        if state["epoch_done"]:
            self.resume_position = (state["epoch"] + 1, 0)
        elif state.get("world_size", 1) == 1 and state.get("accumulate_grad_batches", 1) == 1:
            self.resume_position = (state["epoch"], state["batches_done"] * self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False, batch_size=self.val_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False, batch_size=self.val_batch_size)
