"""The linear path of MeanFlow (t = 0 is data, t = 1 is noise) and its conditional velocity."""

from __future__ import annotations

from torch import Tensor


def expand_like(t: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample [B] tensor to broadcast against x [B, ...]."""
    return t.reshape(-1, *([1] * (x.dim() - 1)))


def interpolate(x: Tensor, e: Tensor, t: Tensor) -> Tensor:
    """z_t = (1 - t) x + t e."""
    t = expand_like(t, x)
    return (1 - t) * x + t * e


def conditional_velocity(x: Tensor, e: Tensor) -> Tensor:
    """v = dz_t/dt = e - x."""
    return e - x


def per_sample_sq_norm(x: Tensor) -> Tensor:
    """sum over all non-batch dims of x^2: the per-sample error D of the MeanFlow loss."""
    return x.pow(2).flatten(1).sum(1)


__all__ = ["expand_like", "interpolate", "conditional_velocity", "per_sample_sq_norm"]
