"""Training order and augmentation drawn from (seed, epoch, sample) alone, so that neither
the number of workers nor a resume changes what a run trains on.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from segexp.data.datasets.base import SegDataset


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
