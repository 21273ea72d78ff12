"""Sample pictures: a PNG a person can look at beside the numbers.

A distance can rank smooth blobs below noise (issue 10), so every evaluation of an image run also writes
a grid of samples. Image runs: one row per class, and per sampler (1-NFE u, 2-NFE u, 32-NFE v, ...) a
block of `per_class` columns, every block drawn from the SAME noise, so a column reads across samplers.
Toy 2-D runs: one scatter panel per sampler beside the data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..meanflow.sampling import generate

SCALE = 4  # an 8x8 digit is drawn as 32x32 pixels
GAP = 1  # pixels (before scaling) between images; GAP * 4 between sampler blocks


def tile(images: torch.Tensor, rows: int, cols: int) -> np.ndarray:
    """[rows * cols, C, H, W] images in [-1, 1] (row-major) -> one uint8 [H', W'] or [H', W', 3] mosaic."""
    n, c, h, w = images.shape
    if n != rows * cols:
        raise ValueError(f"{n} images do not fill a {rows} x {cols} grid")
    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    canvas = np.full((c, rows * (h + GAP) - GAP, cols * (w + GAP) - GAP), 255, dtype=np.uint8)
    for k in range(n):
        i, j = divmod(k, cols)
        canvas[:, i * (h + GAP):i * (h + GAP) + h, j * (w + GAP):j * (w + GAP) + w] = pixels[k]
    return canvas[0] if c == 1 else canvas.transpose(1, 2, 0)


def side_by_side(blocks: list[np.ndarray], gap: int = 4 * GAP) -> np.ndarray:
    """Mosaics of equal height joined left to right with a white gap."""
    spacer = np.full((blocks[0].shape[0], gap, *blocks[0].shape[2:]), 255, dtype=np.uint8)
    out = [blocks[0]]
    for b in blocks[1:]:
        out += [spacer, b]
    return np.concatenate(out, axis=1)


def write_png(path: str | Path, mosaic: np.ndarray, scale: int = SCALE) -> Path:
    """Write a uint8 mosaic as a PNG, each pixel drawn as scale x scale (nearest), atomically."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    big = mosaic.repeat(scale, axis=0).repeat(scale, axis=1)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(big).save(tmp, format="PNG")
    tmp.replace(path)
    return path


def grid_noise(shape: tuple[int, ...], num_classes: int, per_class: int, seed: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Noise (and labels: class c for row c) of a grid; a fixed seed, so grids of a run's steps compare."""
    g = torch.Generator().manual_seed(seed)
    rows = max(num_classes, 1)
    noise = torch.randn(rows * per_class, *shape, generator=g)
    labels = torch.arange(num_classes).repeat_interleave(per_class) if num_classes > 0 else None
    return noise, labels


@torch.no_grad()
def image_grid(model: nn.Module, shape: tuple[int, ...], num_classes: int, samplers: list[tuple[str, int]],
               per_class: int = 10, seed: int = 0, device: torch.device | str = "cpu") -> np.ndarray:
    """The grid of an image model: rows = classes (one row if unconditional), a block per (mode, nfe)."""
    noise, labels = grid_noise(shape, num_classes, per_class, seed)
    noise = noise.to(device)
    labels = labels.to(device) if labels is not None else None
    rows = max(num_classes, 1)
    blocks = [tile(generate(model, noise, nfe, mode, labels), rows, per_class) for mode, nfe in samplers]
    return side_by_side(blocks)


@torch.no_grad()
def toy_figure(model: nn.Module, data: torch.Tensor, samplers: list[tuple[str, int]], path: str | Path,
               num: int = 2000, seed: int = 0) -> Path:
    """Scatter panels of a 2-D run: the data, then one panel per (mode, nfe), all on the same axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    noise = torch.randn(num, data.shape[1], generator=torch.Generator().manual_seed(seed))
    panels = [("data", data[:num])] + [(label(m, n), generate(model, noise, n, m)) for m, n in samplers]
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3), sharex=True, sharey=True)
    for ax, (title, pts) in zip(np.atleast_1d(axes), panels):
        pts = pts.detach().float().cpu().numpy()
        ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.5)
        ax.set_title(title)
    lim = np.abs(data[:num].numpy()).max() * 1.5
    axes[0].set_xlim(-lim, lim)
    axes[0].set_ylim(-lim, lim)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def label(mode: str, nfe: int) -> str:
    return f"{nfe}-NFE {mode}"
