"""SegDataModule: datasets + joint transforms + loaders, with early data checks."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from segexp.data.datasets.base import DataError, SegDataset
from segexp.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform
from segexp.errors import UserError


def check_sample(dataset: SegDataset, index: int, num_classes: int, ignore_index: int) -> None:
    """Read one raw sample and fail with a clear DataError if it cannot be trained on."""
    image_path, mask_path = dataset.samples[index][:2]
    image, mask = dataset.load(index)
    if image.shape[:2] != mask.shape[:2]:
        raise DataError(
            f"{image_path} is {image.shape[1]}x{image.shape[0]} but its mask {mask_path} is "
            f"{mask.shape[1]}x{mask.shape[0]} (width x height); image and mask must be the "
            "same size. Re-export the mask at the image's size."
        )
    labels = np.unique(mask)
    bad = [int(v) for v in labels if (v < 0 or v >= num_classes) and v != ignore_index]
    if bad:
        raise DataError(
            f"data.num_classes={num_classes} but mask {mask_path} contains label(s) "
            f"{bad[:10]} (valid: 0..{num_classes - 1} or ignore_index={ignore_index}). "
            "Fix data.num_classes, data.ignore_index, or the mask."
        )


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of one sample in one epoch: a pure function of its inputs.

    ``index=-1`` gives the epoch's shuffling seed. (SeedSequence takes non-negative words.)
    """
    words = [abs(seed), int(seed < 0), epoch, index + 1]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


class SeededSampler(Sampler):
    """Training order and augmentation seeds drawn from (seed, epoch) alone.

    Yields ``(index, sample_seed)`` pairs. The order and every sample's
    augmentation then depend only on the run's seed and the epoch number, not
    on the number of workers, on which worker draws which sample, or on how
    many epochs this process has run: a run resumed at an epoch boundary sees
    the same data as an uninterrupted one. Lightning calls ``set_epoch`` (also
    through its DDP wrapper, which shards this order across ranks).
    """

    def __init__(
        self,
        num_samples: int,
        seed: int,
        shuffle: bool = True,
        resume_at: tuple[int, int] | None = None,
    ) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        # (epoch, samples already trained on): a mid-epoch resume continues the same order.
        self.resume_at = resume_at

    def set_epoch(self, epoch: int) -> None:
        if self.resume_at is not None and epoch != self.resume_at[0]:
            self.resume_at = None  # past the resumed epoch: full epochs from here on
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, done = self.epoch, 0
        if self.resume_at is not None:
            # A resumed run's first iteration is in the resumed epoch, even when it starts
            # before Lightning calls set_epoch: on a restart Lightning creates the train
            # iterator first, and loader workers prefetch indices as soon as it exists (the
            # rest of that epoch was drawn from epoch 0's order). Every iterator of that
            # epoch skips what was already trained on; set_epoch to a later one clears it.
            epoch, done = self.resume_at
        if self.shuffle:
            generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, -1))
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        for index in order[done:]:
            yield index, sample_seed(self.seed, epoch, index)


class SeededAugmentation(Dataset):
    """Wraps a SegDataset so that ``dataset[(index, seed)]`` augments with that seed.

    Albumentations' Compose keeps its own random state (global seeds do not
    reach it), and each DataLoader worker gets a copy of it; re-seeding per
    sample makes the augmentation reproducible. ``set_random_state`` shares one
    generator across the pipeline: ``Compose(seed=...)``/``set_random_seed``
    would give every transform the same stream (e.g. both flips always together).
    """

    def __init__(self, dataset: SegDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        index, seed = item
        transform = self.dataset.transform
        if transform is not None and hasattr(transform, "set_random_state"):
            transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        return self.dataset[index]


def pad_collate(
    batch: list[dict[str, Any]], ignore_index: int = 255, multiple: int = 32
) -> dict[str, Any]:
    """Stack samples of different sizes: pad each to the largest height/width in the batch,
    rounded up to ``multiple`` (encoders downsample by 32), at the bottom/right.

    Padded image pixels are 0 (the mean colour after normalisation); padded mask pixels
    are ``ignore_index``, so they count in neither loss nor metrics.
    """
    import torch

    height = max(sample["image"].shape[-2] for sample in batch)
    width = max(sample["image"].shape[-1] for sample in batch)
    if multiple > 1:
        height, width = -(-height // multiple) * multiple, -(-width // multiple) * multiple
    images = batch[0]["image"].new_zeros((len(batch), batch[0]["image"].shape[0], height, width))
    masks = torch.full((len(batch), height, width), ignore_index, dtype=torch.long)
    for i, sample in enumerate(batch):
        h, w = sample["mask"].shape[-2:]
        images[i, :, :h, :w] = sample["image"]
        masks[i, :h, :w] = sample["mask"]
    return {"image": images, "mask": masks, "name": [sample["name"] for sample in batch]}


class SegDataModule(pl.LightningDataModule):
    """Train/val/test loaders for one dataset format.

    Args:
        dataset: a callable ``dataset(split=..., transform=...) -> SegDataset``
            (in config: the dataset class with ``_partial_: true`` and its layout arguments).
        num_classes: number of classes; labels are 0..num_classes-1.
        ignore_index: mask value excluded from loss and metrics.
        class_names: names for the classes (else the dataset's own, else ``class_<i>``).
        train_transforms / val_transforms: albumentations transforms (before normalisation).
        mean / std: normalisation, in [0, 1] units.
        generate: optional callable run once in ``prepare_data`` (writes a generated dataset).
        test_split: the split ``test_dataloader`` reads (evaluate.py sets it).
        root: the dataset's folder, for messages and tools (the dataset reads its own copy).
        seed: seeds the training order and augmentation (``SeededSampler``); None: the
            seed given to ``seed_everything`` (``PL_GLOBAL_SEED``), else 0.
        pad_to_multiple: batches are padded (image 0, mask ``ignore_index``) to the largest
            sample, rounded up to this multiple, so images of any size batch and fit the encoder.
    """

    def __init__(
        self,
        dataset: Callable[..., SegDataset],
        num_classes: int,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        train_transforms: Sequence[Any] = (),
        val_transforms: Sequence[Any] = (),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        generate: Callable[[], Any] | None = None,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "test",
        root: str | None = None,
        seed: int | None = None,
        pad_to_multiple: int = 32,
    ) -> None:
        super().__init__()
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
        self.pin_memory = pin_memory
        self.generate = generate
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.root = root
        self.seed = seed
        # (epoch, samples already trained on) of the checkpoint fit resumed from; see load_state_dict.
        self.resume_position: tuple[int, int] | None = None
        self.pad_to_multiple = int(pad_to_multiple)
        self.datasets: dict[str, SegDataset] = {}

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

    def raw_dataset(self, stage_key: str, strict: bool = True) -> SegDataset:
        """The dataset of one stage (``train``/``val``/``test``) without transforms, for tools."""
        return self.dataset_factory(split=self.splits[stage_key], transform=None, strict=strict)

    def _build(self, stage_key: str, transforms: Sequence[Any]) -> SegDataset:
        split = self.splits[stage_key]
        transform = build_transform(transforms, self.mean, self.std)
        dataset = self.dataset_factory(split=split, transform=transform)
        if len(dataset) == 0:
            raise DataError(
                f"split '{split}' ({self.root or type(dataset).__name__}) is empty: an empty split "
                f"would train or evaluate on nothing. Add samples, or point data.{stage_key}_split "
                "at a split that has them."
            )
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
