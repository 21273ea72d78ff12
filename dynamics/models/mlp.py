"""An MLP for 2-D data conditioned on (t, t - r).

Raw times as inputs are the default conditioning at this size; DiT-style sinusoidal features are an option.
Their time scale is `model.time_scale` (1.0 by default: t in [0, 1] unscaled, as the official MeanFlow code;
a scale of 1000 multiplies d/dt u through every feature and made one-step generation stall on toy data).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_embedding(t: Tensor, dim: int, scale: float = 1.0, max_period: float = 10000.0) -> Tensor:
    """DiT's timestep features: cos/sin of scale * t at geometrically spaced frequencies."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = scale * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(t.dtype)


class MLP(nn.Module):
    def __init__(self, data_dim: int = 2, width: int = 256, depth: int = 3, time_embedding: str = "raw",
                 time_dim: int = 32, time_scale: float = 1.0):
        super().__init__()
        self.time_embedding = time_embedding
        self.time_scale = time_scale
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
        return sinusoidal_embedding(t, self.time_dim, scale=self.time_scale)

    def forward(self, x: Tensor, r: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """u_theta(x, r, t); y is ignored (unconditional)."""
        return self.net(torch.cat([x, self.embed(t), self.embed(t - r)], dim=-1))
