"""Exact sample distances for toy data: sliced Wasserstein-2 and energy distance.

Each is reported with a floor (the same distance between two fresh data samples of the same size: the
value a perfect model would get) and a ceiling (between prior noise and data), so 0 and 1 of the scale
are visible next to every number.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sorted_projections(x: Tensor, num_projections: int = 256, seed: int = 0) -> Tensor:
    """x (n, d) projected on `num_projections` random unit directions fixed by `seed`, each column sorted: the
    empirical 1-D quantiles that sliced W2 compares. A fixed reference's can be computed once and reused."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(x.shape[1], num_projections, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    return torch.sort(x.double() @ dirs, dim=0).values


def sliced_w2_from_projections(pa: Tensor, pb: Tensor) -> float:
    """sqrt(mean over directions of W2^2): between equal-size samples, W2^2 of 1-D laws is the mean squared
    difference of their sorted values."""
    if pa.shape != pb.shape:
        raise ValueError(f"sliced W2: projections of shapes {tuple(pa.shape)} and {tuple(pb.shape)} differ")
    return float(((pa - pb) ** 2).mean().sqrt())


def sliced_w2(a: Tensor, b: Tensor, num_projections: int = 256, seed: int = 0) -> float:
    """sqrt of the mean over random unit directions of W2^2 between the 1-D projections (equal sizes)."""
    n = min(len(a), len(b))
    return sliced_w2_from_projections(sorted_projections(a[:n], num_projections, seed),
                                      sorted_projections(b[:n], num_projections, seed))


def energy_distance(a: Tensor, b: Tensor) -> float:
    """2 E|X - Y| - E|X - X'| - E|Y - Y'| (Szekely's energy distance, squared form; 0 iff equal laws).

    The within-sample terms exclude the zero diagonal (unbiased U-statistics)."""
    a, b = a.double(), b.double()
    n, m = len(a), len(b)
    xy = torch.cdist(a, b).mean()
    xx = torch.cdist(a, a).sum() / (n * (n - 1))
    yy = torch.cdist(b, b).sum() / (m * (m - 1))
    return float(2 * xy - xx - yy)


TOY_METRICS = {"sw2": sliced_w2, "energy": energy_distance}
