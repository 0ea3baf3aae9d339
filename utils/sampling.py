"""Where training samples come from, reproducibly: seeds per round and per sample, and batching.

A *round* is the stretch of training between two validations (an epoch, or
``train.val_interval`` iterations; see utils/train_state.py). Its seed is a
function of (seed, round, rank) only (:func:`round_seed`), so a resumed run
draws what an uninterrupted one would. :class:`SeededSampler` hands every
sample a seed of its own and :class:`SeededDataset` draws that sample's
augmentations from it: the same with 0 or N loader workers, persistent or not.
"""
from __future__ import annotations

import random
import signal
from typing import Any, Iterator, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from utils.errors import DataError


def round_seed(seed: int, round_index: int, rank: int = 0) -> int:
    """The seed of round ``round_index`` on process ``rank``: a function of the three only, so a resumed
    run draws the same shuffles and augmentations as one never stopped."""
    return (seed * 1_000_003 + round_index * 9_973 + rank * 7_919) % 2**31


def round_batches(loader: DataLoader, seed: int, round_index: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Batches for one round: passes over ``loader`` as many as needed, each reshuffled, all fixed by the seed."""
    if loader.generator is not None:
        loader.generator.manual_seed(round_seed(seed, round_index))
    if isinstance(loader.sampler, SeededSampler):
        loader.sampler.start_round(round_index, round_seed(seed, round_index))
    while True:
        yield from loader


class SeededSampler(Sampler):
    """Wraps the training sampler to yield ``(index, seed)``: every sample draws its augmentations from a
    seed of its own, a function of the round, the pass over the data, the position and the rank.

    The augmentations then do not depend on which process runs them: the same
    with 0 or 8 loader workers, persistent or not, and the same when
    ``--resume`` replays part of a round in fresh workers. :meth:`start_round`
    is called by :func:`round_batches` before each round.
    """

    def __init__(self, sampler: Sampler, rank: int = 0) -> None:
        self.sampler, self.rank = sampler, rank
        self.round_index, self.round_seed, self.passes = 0, 0, 0

    def start_round(self, round_index: int, seed: int) -> None:
        """Fix this round's orders and seeds. The order comes from the sampler's own generator (or
        ``set_epoch``), never from the loader's, whose draws differ between a fresh and a reused iterator."""
        self.round_index, self.round_seed, self.passes = round_index, seed, 0
        generator = getattr(self.sampler, "generator", None)
        if generator is not None:
            generator.manual_seed(seed)

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(self.round_index * 1000 + self.passes)
        entropy = [self.round_seed, self.passes, self.rank]
        self.passes += 1
        for position, index in enumerate(self.sampler):
            yield index, int(np.random.SeedSequence([*entropy, position]).generate_state(1)[0])

    def __len__(self) -> int:
        return len(self.sampler)


class SeededDataset(Dataset):
    """Reads ``(index, seed)`` from :class:`SeededSampler`: the sample is drawn with torch, numpy and
    ``random`` seeded by ``seed``, inside a fork, so the caller's RNG streams are left as they were."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: Tuple[int, int]) -> Any:
        index, seed = item
        numpy_state, python_state = np.random.get_state(), random.getstate()
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only: torch.manual_seed also seeds every device, ~100x slower.
            torch.default_generator.manual_seed(seed)
            np.random.seed(seed)
            random.seed(seed)
            try:
                return self.dataset[index]
            finally:
                np.random.set_state(numpy_state)
                random.setstate(python_state)


def worker_init(worker_id: int) -> None:
    """Distinct, reproducible numpy/random seeds per worker; Ctrl-C is the main process's."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def collate(batch: Sequence[Tuple[torch.Tensor, torch.Tensor]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stack (image, mask) pairs; different sizes get a message saying what to change."""
    sizes = {tuple(img.shape[-2:]) for img, _ in batch}
    if len(sizes) > 1:
        raise DataError(
            f"cannot batch images of different sizes {sorted(sizes)}: add a resize or crop to the "
            "transforms of this split, or use batch size 1 (train.val_batch_size: 1 for validation)")
    images = torch.stack([img.as_subclass(torch.Tensor) for img, _ in batch])
    masks = torch.stack([m.as_subclass(torch.Tensor) for _, m in batch])
    return images, masks
