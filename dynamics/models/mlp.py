"""An MLP for 2-D data conditioned on (t, t - r).

Raw times as inputs are the right conditioning at this size: DiT's sinusoidal features at frequency
scale 1000 made one-step generation stall on toy data (the issue's calibration probe), so they are an
option here, not the default.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_embedding(t: Tensor, dim: int, scale: float = 1000.0, max_period: float = 10000.0) -> Tensor:
    """DiT's timestep features: cos/sin of scale * t at geometrically spaced frequencies."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = scale * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(t.dtype)


class MLP(nn.Module):
    def __init__(self, data_dim: int = 2, width: int = 256, depth: int = 3, time_embedding: str = "raw",
                 time_dim: int = 32):
        super().__init__()
        self.time_embedding = time_embedding
        self.time_dim = time_dim if time_embedding == "sinusoidal" else 1
        layers: list[nn.Module] = []
        d_in = data_dim + 2 * self.time_dim
        for _ in range(depth):
            layers += [nn.Linear(d_in, width), nn.SiLU()]
            d_in = width
        layers.append(nn.Linear(d_in, data_dim))
        self.net = nn.Sequential(*layers)

    def embed(self, t: Tensor) -> Tensor:
        if self.time_embedding == "raw":
            return t[:, None]
        return sinusoidal_embedding(t, self.time_dim)

    def forward(self, x: Tensor, r: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """u_theta(x, r, t); y is ignored (unconditional)."""
        return self.net(torch.cat([x, self.embed(t), self.embed(t - r)], dim=-1))
