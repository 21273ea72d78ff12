"""Toy 2-D distributions, generated in code (no files), with exact fresh samples for the metrics.

Every set has a spread of order one, like the N(0, I) prior; two moons keeps its classic coordinates
(x in [-1, 2], y in [-0.5, 1]), so it is offset from the prior as real data is. `gaussian` (axis-aligned, given mean
and scale) has a closed-form mean flow (`gaussian_mean_flow`), which the tests train against.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..rng import stream


def _moons(n: int, g: torch.Generator) -> Tensor:
    k = torch.rand(n, generator=g) < 0.5
    th = math.pi * torch.rand(n, generator=g)
    upper = torch.stack([torch.cos(th), torch.sin(th)], 1)
    lower = torch.stack([1 - torch.cos(th), 0.5 - torch.sin(th)], 1)
    return torch.where(k[:, None], upper, lower) + 0.05 * torch.randn(n, 2, generator=g)


def _checkerboard(n: int, g: torch.Generator) -> Tensor:
    x1 = 4 * torch.rand(n, generator=g) - 2
    x2 = torch.rand(n, generator=g) - torch.randint(0, 2, (n,), generator=g) * 2.0
    x2 = x2 + (torch.floor(x1) % 2)
    return torch.stack([x1, x2], 1) / 1.15


def _gaussians8(n: int, g: torch.Generator) -> Tensor:
    angles = 2 * math.pi * torch.randint(0, 8, (n,), generator=g) / 8
    centers = 2 * torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    return (centers + 0.2 * torch.randn(n, 2, generator=g)) / 1.42


def _spirals(n: int, g: torch.Generator) -> Tensor:
    s = torch.sqrt(torch.rand(n, generator=g)) * 3 * math.pi
    sign = torch.where(torch.rand(n, generator=g) < 0.5, 1.0, -1.0)
    x = sign[:, None] * torch.stack([s * torch.cos(s), s * torch.sin(s)], 1)
    return (x + 0.3 * torch.randn(n, 2, generator=g)) / 5.0


def _rings(n: int, g: torch.Generator) -> Tensor:
    radius = torch.randint(1, 4, (n,), generator=g).float() / 2
    th = 2 * math.pi * torch.rand(n, generator=g)
    x = radius[:, None] * torch.stack([torch.cos(th), torch.sin(th)], 1)
    return (x + 0.04 * torch.randn(n, 2, generator=g)) / 1.1


_SAMPLERS = {"moons": _moons, "checkerboard": _checkerboard, "gaussians8": _gaussians8,
             "spirals": _spirals, "rings": _rings}


class ToyDataset:
    """A 2-D distribution (or an axis-aligned Gaussian of any dimension) as an infinite stream."""

    num_classes = 0

    def __init__(self, name: str, mean: list[float] | None = None, scale: list[float] | None = None):
        if name != "gaussian" and name not in _SAMPLERS:
            raise ValueError(f"unknown toy data set {name!r}; choose gaussian or one of {', '.join(_SAMPLERS)}")
        self.name = name
        self.mean = torch.tensor(mean if mean is not None else [0.0, 0.0], dtype=torch.float32)
        self.scale = torch.tensor(scale if scale is not None else [1.0, 1.0], dtype=torch.float32)
        self.shape = (len(self.mean),) if name == "gaussian" else (2,)

    def sample(self, n: int, gen: torch.Generator) -> Tensor:
        if self.name == "gaussian":
            return self.mean + self.scale * torch.randn(n, len(self.mean), generator=gen)
        return _SAMPLERS[self.name](n, gen)

    def batch(self, step: int, batch_size: int, seed: int, rank: int = 0,
              world_size: int = 1) -> tuple[Tensor, None]:
        """This rank's slice of the global batch (batch_size) at `step`: a pure function of its arguments."""
        if batch_size % world_size != 0:
            raise ValueError(f"global batch {batch_size} is not divisible by world_size {world_size}")
        local = batch_size // world_size
        x = self.sample(batch_size, stream(seed, "data", step))
        return x[rank * local:(rank + 1) * local], None

    def reference(self, n: int, seed: int) -> Tensor:
        """Fresh samples of the true distribution (a stream the training batches never use)."""
        return self.sample(n, stream(seed, "reference"))


def gaussian_mean_flow(z: Tensor, r: Tensor, t: Tensor, mean: Tensor, scale: Tensor) -> Tensor:
    """The exact average velocity u(z, r, t) for data N(mean, diag(scale^2)) and prior N(0, I).

    The marginal of z_t is N((1 - t) m, s_t^2) per dim with s_t^2 = (1 - t)^2 s^2 + t^2; the ODE flow of
    this affine field is the monotone affine map between the marginals, z_r = m_r + (s_r / s_t)(z_t - m_t),
    so u = (z_t - z_r) / (t - r). At r = t it is the marginal velocity
    v = -m + (t - (1 - t) s^2) / s_t^2 (z - (1 - t) m), used where t - r is tiny.
    """
    t_, r_ = t[:, None].double(), r[:, None].double()
    z, mean, scale = z.double(), mean.double(), scale.double()
    m_t, m_r = (1 - t_) * mean, (1 - r_) * mean
    s_t = torch.sqrt((1 - t_) ** 2 * scale**2 + t_**2)
    s_r = torch.sqrt((1 - r_) ** 2 * scale**2 + r_**2)
    z_r = m_r + (s_r / s_t) * (z - m_t)
    dt = t_ - r_
    v = -mean + (t_ - (1 - t_) * scale**2) / s_t**2 * (z - m_t)
    u = torch.where(dt.abs() > 1e-6, (z - z_r) / dt.clamp_min(1e-6), v)
    return u.float()
