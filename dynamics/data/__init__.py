"""Data sets. Each one gives stateless batches, `batch(step, batch_size, seed, rank, world_size)`, so the
batch at a step is a pure function of its arguments and a resumed run sees exactly the same data."""

from __future__ import annotations

from functools import partial

from ..config import TOY_DATASETS, DataConfig
from .toy2d import ToyDataset, gaussian_mean_flow


def build_dataset(cfg: DataConfig):
    if cfg.name in TOY_DATASETS:
        return ToyDataset(cfg.name, cfg.mean, cfg.scale) if cfg.name == "gaussian" else ToyDataset(cfg.name)
    if cfg.name == "digits":
        from .digits import Digits

        return Digits()
    if cfg.name == "imagenet_latents":
        from .imagenet import LatentShards

        shards = LatentShards(cfg.path)
        if not cfg.hflip:
            shards.batch = partial(shards.batch, flip=False)
        return shards
    raise ValueError(f"unknown data set {cfg.name!r}")


__all__ = ["ToyDataset", "gaussian_mean_flow", "build_dataset"]
