"""Sampling: few-step generation with u, and multi-step Euler with v read back as u(z, t, t)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import SAMPLING_MODES
from .path import expand_like


def uniform_schedule(nfe: int) -> list[float]:
    """Times 1 -> 0 in nfe equal steps: 1-NFE [1, 0], 2-NFE [1, 0.5, 0]."""
    return [1.0 - i / nfe for i in range(nfe + 1)]


@torch.no_grad()
def sample(model: nn.Module, noise: Tensor, schedule: list[float] | None = None,
           labels: Tensor | None = None) -> Tensor:
    """z_r = z_t - (t - r) u_theta(z_t, r, t) along the schedule (default 1-NFE: t = 1 -> r = 0)."""
    schedule = schedule or uniform_schedule(1)
    z = noise
    for t_now, r_next in zip(schedule[:-1], schedule[1:]):
        t = torch.full((len(z),), t_now, device=z.device, dtype=z.dtype)
        r = torch.full_like(t, r_next)
        z = z - expand_like(t - r, z) * model(z, r, t, labels)
    return z


@torch.no_grad()
def sample_euler_v(model: nn.Module, noise: Tensor, steps: int, labels: Tensor | None = None) -> Tensor:
    """Multi-step Euler on the learned instantaneous velocity v(z, t) = u_theta(z, t, t)."""
    z = noise
    schedule = uniform_schedule(steps)
    for t_now, t_next in zip(schedule[:-1], schedule[1:]):
        t = torch.full((len(z),), t_now, device=z.device, dtype=z.dtype)
        z = z - (t_now - t_next) * model(z, t, t, labels)
    return z


def generate(model: nn.Module, noise: Tensor, nfe: int, mode: str = "u", labels: Tensor | None = None) -> Tensor:
    """One entry point for evaluation: `u` few-step sampling or `v` Euler, with nfe network calls."""
    if mode == "u":
        return sample(model, noise, uniform_schedule(nfe), labels)
    if mode == "v":
        return sample_euler_v(model, noise, nfe, labels)
    raise ValueError(f"unknown sampling mode {mode!r}; choose one of {', '.join(SAMPLING_MODES)}")
