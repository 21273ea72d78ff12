"""scikit-learn's 8x8 digits as a tiny image dataset for the `digits` scale.

The images ship inside scikit-learn (no download). Pixels 0..16 are scaled to [-1, 1], the range the
models and the digits Frechet distance expect.

Batches are a pure function of (step, batch_size, seed, rank, world_size): the data order is an
endless stream of per-epoch permutations, each seeded by (seed, epoch), and step `i` takes positions
[i * batch_size, (i + 1) * batch_size) of that stream. A resumed run therefore sees exactly the batches
it would have seen, with no loader state to checkpoint, and every image appears exactly once per epoch
(batches straddle epoch boundaries instead of dropping a remainder).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

NUM_IMAGES = 1797
TEST_SIZE = 297
SPLIT_SEED = 0  # fixed: the train/test split must not depend on any run's seed
SPLITS = ("train", "test", "all")


@lru_cache(maxsize=1)
def _load_all() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 images in [-1, 1] as [N, 1, 8, 8] float32, and their labels (long)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32)) / 8.0 - 1.0  # 0..16 -> -1..1
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    return images.unsqueeze(1).contiguous(), labels


def split_indices(split: str) -> np.ndarray:
    """Sorted indices of a split: a fixed seeded permutation, its first 297 images are the test split."""
    if split not in SPLITS:
        raise ValueError(f"unknown digits split {split!r}; expected one of {SPLITS}")
    if split == "all":
        return np.arange(NUM_IMAGES)
    order = np.random.default_rng(SPLIT_SEED).permutation(NUM_IMAGES)
    chosen = order[:TEST_SIZE] if split == "test" else order[TEST_SIZE:]
    return np.sort(chosen)


@lru_cache(maxsize=8)
def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of one epoch; seeded by (seed, epoch) so any epoch can be recomputed alone."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    order.setflags(write=False)
    return order


class Digits:
    """One split of the digits: `x` [N, 1, 8, 8] in [-1, 1] (float32), `y` [N] class labels (long)."""

    num_classes = 10
    shape = (1, 8, 8)

    def __init__(self, split: str = "train"):
        images, labels = _load_all()
        index = torch.from_numpy(split_indices(split))
        self.split = split
        self.x = images[index]
        self.y = labels[index]

    def __len__(self) -> int:
        return self.x.shape[0]

    def batch(
        self, step: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of the global batch at `step` (batch_size is the global batch size).

        Rank r takes the r-th contiguous slice of batch_size // world_size positions, so ranks are
        disjoint and together make up exactly the single-process batch.
        """
        if step < 0 or batch_size <= 0:
            raise ValueError(f"need step >= 0 and batch_size > 0, got step={step}, batch_size={batch_size}")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if batch_size % world_size != 0:
            raise ValueError(f"batch_size {batch_size} is not divisible by world_size {world_size}")
        local = batch_size // world_size
        start = step * batch_size + rank * local
        positions = np.arange(start, start + local)
        n = len(self)
        epochs = positions // n
        index = np.empty(local, dtype=np.int64)
        for epoch in np.unique(epochs):
            here = epochs == epoch
            index[here] = _epoch_order(n, seed, int(epoch))[positions[here] % n]
        index_t = torch.from_numpy(index)
        return self.x[index_t], self.y[index_t]

    def real_images(self, n: int | None = None, split: str = "test") -> torch.Tensor:
        """Real images of any split (not only this one's) for metric references; see `real_images`."""
        return real_images(n, split)

    def epoch(self, step: int, batch_size: int) -> float:
        """Fractional epoch reached after `step` global batches (for logging)."""
        return step * batch_size / len(self)


def real_images(n: int | None = None, split: str = "test") -> torch.Tensor:
    """The first `n` real images of a split (all if None), [n, 1, 8, 8] in [-1, 1]: metric references."""
    x = Digits(split).x
    if n is None:
        return x.clone()
    if not 0 < n <= x.shape[0]:
        raise ValueError(f"asked for {n} images, the {split!r} split has {x.shape[0]}")
    return x[:n].clone()
