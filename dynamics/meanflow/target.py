"""The MeanFlow target: u_tgt = v - (t - r) * d/dt u_theta(z_t, r, t), stop-gradient.

d/dt u is the total derivative along the trajectory, v . grad_z u + d_t u: the JVP of u_theta at the
inputs (z, r, t) with tangent (v, 0, 1). The order matters (MeanFlow's ablation: any other tangent
breaks one-step generation), so the tangent is built in one place, `total_derivative`.

Forward-mode AD has no rule for the fused SDPA kernels, so every JVP runs with the math attention
backend, which decomposes into differentiable ops; the fast kernels stay on for the plain forward.

Strategies (a small, swappable part; results agree to float precision):
- `rows`: the plain forward with grad on the whole batch, and the tangent (under no_grad) only for the
  u rows, where (t - r) != 0. Default: the tangent term is exactly zero on the v rows.
- `full`: one torch.func.jvp over the whole batch whose primal output carries the graph (py-meanflow's
  way), kept as the reference and for benchmarks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from .path import expand_like

# u_theta(z, r, t, y): the network as a function; y (class labels) may be None.
UFn = Callable[[Tensor, Tensor, Tensor, "Tensor | None"], Tensor]
JVP_STRATEGIES = ("rows", "full")


def _rows(y: Tensor | None, rows) -> Tensor | None:
    return None if y is None else y[rows]


def total_derivative(u_fn: UFn, z: Tensor, r: Tensor, t: Tensor, v: Tensor,
                     y: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(u, du/dt) with du/dt = JVP of u_theta(., ., ., y) at (z, r, t) along the tangent (v, 0, 1)."""
    with sdpa_kernel([SDPBackend.MATH]):
        return torch.func.jvp(lambda z_, r_, t_: u_fn(z_, r_, t_, y), (z, r, t),
                              (v, torch.zeros_like(r), torch.ones_like(t)))


def target_from_derivative(v: Tensor, r: Tensor, t: Tensor, dudt: Tensor) -> Tensor:
    """The MeanFlow identity rearranged: u_tgt = v - (t - r) du/dt."""
    return v - expand_like(t - r, v) * dudt


def mean_flow_target(u_fn: UFn, z: Tensor, r: Tensor, t: Tensor, v: Tensor, y: Tensor | None = None,
                     n_v: int | None = None, strategy: str = "rows") -> tuple[Tensor, Tensor]:
    """(u_theta(z, r, t | y) with grad, u_tgt detached).

    `n_v`: the number of leading v rows (r = t) of the batch, as the samplers lay it out; None finds the
    u rows by comparing r and t. On the v rows the target is v itself.
    """
    if strategy == "full":
        u, dudt = total_derivative(u_fn, z, r, t, v, y)
        return u, target_from_derivative(v, r, t, dudt).detach()
    if strategy != "rows":
        raise ValueError(f"unknown JVP strategy {strategy!r}; choose one of {', '.join(JVP_STRATEGIES)}")
    u = u_fn(z, r, t, y)
    rows = slice(n_v, None) if n_v is not None else (r != t)
    u_tgt = v.detach().clone()
    if (n_v is not None and n_v < len(z)) or (n_v is None and bool(rows.any())):
        with torch.no_grad():
            _, dudt = total_derivative(u_fn, z[rows], r[rows], t[rows], v[rows], _rows(y, rows))
            u_tgt[rows] = target_from_derivative(v[rows], r[rows], t[rows], dudt)
    return u, u_tgt
