"""Data sets. Each one gives stateless batches, `batch(step, batch_size, seed, rank, world_size)`, so the
batch at a step is a pure function of its arguments and a resumed run sees exactly the same data."""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from ..config import TOY_DATASETS, DataConfig
from .toy2d import ToyDataset, gaussian_mean_flow


class Dataset(Protocol):
    """What the trainer, the evaluator and TAS read from a data set (toy, digits, ImageNet latents)."""

    shape: tuple[int, ...]  # one sample's shape

    def batch(self, step: int, batch_size: int, seed: int, rank: int = 0,
              world_size: int = 1) -> tuple[Tensor, Tensor | None]:
        """This rank's (x, labels or None) of the global batch at `step`: a pure function of its arguments."""
        ...


def build_dataset(cfg: DataConfig) -> Dataset:
    if cfg.name in TOY_DATASETS:
        return ToyDataset(cfg.name, cfg.mean, cfg.scale) if cfg.name == "gaussian" else ToyDataset(cfg.name)
    if cfg.name == "digits":
        from .digits import Digits

        return Digits()
    if cfg.name == "imagenet_latents":
        from .imagenet import LatentShards

        return LatentShards(cfg.path, hflip=cfg.hflip)
    raise ValueError(f"unknown data set {cfg.name!r}")


__all__ = ["Dataset", "ToyDataset", "gaussian_mean_flow", "build_dataset"]
