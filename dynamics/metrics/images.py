"""What the image metrics share: the cache directory of metric models, [-1, 1] -> uint8 with ADM's rule, and a
Dataset of uint8 images in the form torch-fidelity reads."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset


def default_cache_dir() -> Path:
    """Where trained metric models live: `$DYNAMICS_CACHE`, else `~/.cache/dynamics`."""
    return Path(os.environ.get("DYNAMICS_CACHE") or Path.home() / ".cache" / "dynamics")


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images -> uint8 [0, 255] with ADM's rule (clamp, then truncate)."""
    return ((images.detach().float().cpu() + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)


class ImageDataset(Dataset):
    """A fixed set of uint8 images [N, C, H, W], one per item: the input form torch-fidelity expects. The images
    are a tensor or a numpy array, e.g. a memmap of 50,000 decoded samples on disk (read one item at a time).

    Feeding a Dataset (not a torch-fidelity generator) avoids its generator path, which calls `np.int`
    when classes are used and fails on NumPy >= 1.24.
    """

    def __init__(self, images: torch.Tensor | np.ndarray):
        dtype_ok = images.dtype == (torch.uint8 if isinstance(images, torch.Tensor) else np.uint8)
        if not dtype_ok or images.ndim != 4:
            raise ValueError(f"expected uint8 images [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        item = self.images[i]
        return item if isinstance(item, torch.Tensor) else torch.from_numpy(np.array(item))
