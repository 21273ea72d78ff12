"""The MeanFlow objective in one function, as the paper writes it: the reference that every JVP strategy of
target.py is tested against (tests/test_jvp_strategies.py).

    z_t   = (1 - t) x + t e                              t = 0 is data, t = 1 is noise
    v     = e - x                                        the conditional velocity dz_t/dt
    du/dt = v . grad_z u(z_t, r, t) + d_t u(z_t, r, t)   the JVP of u at (z_t, r, t) along the tangent (v, 0, 1)
    u_tgt = sg(v - (t - r) du/dt)                        where r = t, u_tgt = v
    D     = ||u(z_t, r, t) - u_tgt||^2,   L = mean of D / sg((D + c)^p)

loss.py computes the same loss with unit weights and no guidance, faster (a JVP on the u rows only, float32
under autocast) and with the curriculum's hooks; this one takes no shortcut.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from .path import expand_like
from .target import UFn


def reference_loss(u_fn: UFn, x: Tensor, e: Tensor, t: Tensor, r: Tensor, y: Tensor | None = None,
                   p: float = 1.0, c: float = 1e-3) -> tuple[Tensor, Tensor, Tensor]:
    """(L, u, u_tgt) for data x, noise e and times (t, r) per row; u_fn(z, r, t, y) is the network."""
    t_, r_ = expand_like(t, x), expand_like(r, x)
    z = (1 - t_) * x + t_ * e
    v = e - x
    with sdpa_kernel([SDPBackend.MATH]):  # forward-mode AD has no rule for the fused attention kernels
        u, dudt = torch.func.jvp(lambda z, r, t: u_fn(z, r, t, y), (z, r, t),
                                 (v, torch.zeros_like(r), torch.ones_like(t)))
    u_tgt = (v - (t_ - r_) * dudt).detach()
    D = (u - u_tgt).pow(2).flatten(1).sum(1)
    loss = (D / (D.detach() + c).pow(p)).mean()
    return loss, u, u_tgt
