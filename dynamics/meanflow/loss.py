"""The MeanFlow objective, split into its v term (t = r) and u term (t != r).

    L = E[ 1(t = r) alpha(t) L_v + 1(t != r) beta(dt, s) L_u ],   L = D / sg((D + c)^p),
    D = ||u_theta(z_t, r, t) - sg(u_tgt)||^2,   u_tgt = v - (t - r) du/dt

alpha, beta, the v-row time sampler, a target transform and the v-target noise (O1's contamination) are hooks
(identity when None); `dynamics.curriculum` fills them. The model is called as a function u_theta(z, r, t, y).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from ..config import GuidanceConfig
from ..pieces import TargetInputs
from .path import conditional_velocity, interpolate, per_sample_sq_norm
from .samplers import TimeSampler
from .target import at_least_fp32, full_precision, mean_flow_target


class VTimeSampler(Protocol):
    """Where the v rows' t fall (a v_time piece, e.g. DTD): n quantiles in [0, 1] of the sampler's v-row t
    distribution, so a curriculum moves the draws without changing the base distribution's shape."""

    def quantiles(self, n: int, gen: torch.Generator, device: torch.device) -> Tensor: ...


@dataclass
class Draw:
    """The randomness of one step: (t, r) with the `n_v` v rows (r = t) first, the noise e, the labels after
    class dropout. Unpacks as (t, r, e, y, n_v)."""

    t: Tensor
    r: Tensor
    e: Tensor
    y: Tensor | None
    n_v: int

    def __iter__(self):
        return iter((self.t, self.r, self.e, self.y, self.n_v))


@dataclass
class LossOutput:
    loss: Tensor  # the scalar to back-propagate
    loss_v: Tensor  # mean D over the v rows (nan when the batch has none); 0-d, detached
    loss_u: Tensor  # mean D over the u rows (nan when the batch has none); 0-d, detached
    D: Tensor  # per-sample squared error, detached
    weight: Tensor  # per-sample alpha / beta weight
    t: Tensor
    r: Tensor
    target: Tensor | None = None  # u_tgt as the loss saw it (after guidance and contamination), detached
    noise_ratio: Tensor | None = None  # contamination: mean ||noise|| / ||v|| over the v rows (None: off)
    is_v: Tensor | None = None  # which rows are v rows (r = t): the masks of loss_v and loss_u, for global means


def adaptive_loss(D: Tensor, p: float, c: float) -> Tensor:
    """MeanFlow's adaptive weighting: D / sg((D + c)^p) (D is the squared error, not squared again)."""
    return D / (D.detach() + c).pow(p)


def guided_velocity(u_fn, z: Tensor, t: Tensor, v: Tensor, y: Tensor, num_classes: int,
                    guidance: GuidanceConfig) -> Tensor:
    """v_g = w v + kappa u(z, t, t | c) + (1 - w - kappa) u(z, t, t | null) for labelled rows with t in
    [t_min, t_max] (no grad); dropped rows (y = null) and rows outside the interval keep v.
    Part of the target, so float32 with autocast off (as the JVP)."""
    if guidance.w == 1.0 and guidance.kappa == 0.0:
        return v
    guide = (y != num_classes) & (t >= guidance.t_min) & (t <= guidance.t_max)
    if not bool(guide.any()):
        return v
    z, t, v = at_least_fp32(z, t, v)
    with torch.no_grad(), full_precision(z.device):
        zg, tg, yg = z[guide], t[guide], y[guide]
        u_cond = u_fn(zg, tg, tg, yg)
        u_null = u_fn(zg, tg, tg, torch.full_like(yg, num_classes))
        v_g = v.clone()
        v_g[guide] = guidance.w * v[guide] + guidance.kappa * u_cond + (1 - guidance.w - guidance.kappa) * u_null
    return v_g


class MeanFlowLoss:
    def __init__(self, sampler: TimeSampler, ratio_r_eq_t: float = 0.75, adaptive_p: float = 1.0,
                 adaptive_c: float = 1e-3, alpha: Callable[[Tensor], Tensor] | None = None,
                 beta: Callable[[Tensor, int], Tensor] | None = None,
                 v_time: VTimeSampler | None = None,
                 target_transform: Callable[[Tensor, TargetInputs], Tensor] | None = None,
                 v_target_noise: Callable[[Tensor, torch.Generator], Tensor] | None = None,
                 guidance: GuidanceConfig | None = None, num_classes: int = 0, jvp_strategy: str = "rows"):
        self.sampler = sampler
        self.ratio_r_eq_t = ratio_r_eq_t
        self.p, self.c = adaptive_p, adaptive_c
        self.alpha, self.beta = alpha, beta
        self.v_time = v_time
        self.target_transform = target_transform
        self.v_target_noise = v_target_noise
        self.guidance, self.num_classes = guidance, num_classes
        self.jvp_strategy = jvp_strategy

    def draw(self, x: Tensor, y: Tensor | None, gen: torch.Generator) -> Draw:
        """The randomness of one step: (t, r) laid out v rows first, noise e, class dropout."""
        n = len(x)
        n_v = round(n * self.ratio_r_eq_t)
        t, r = self.sampler.sample(n, n_v, gen, x.device, self.v_time.quantiles if self.v_time else None)
        e = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        if self.guidance is not None and y is not None:
            y = torch.where(self.dropped_rows(n, gen, x.device), torch.full_like(y, self.num_classes), y)
        return Draw(t.to(x.dtype), r.to(x.dtype), e, y, n_v)

    def dropped_rows(self, n: int, gen: torch.Generator, device: torch.device) -> Tensor:
        """CFG class dropout mask. `leading` (the official code): as many rows as a Bernoulli draw per row
        would drop, taken from the front of the batch, i.e. from the r = t rows; `random`: the Bernoulli rows."""
        drop = torch.rand(n, generator=gen, device=device) < self.guidance.class_dropout
        if self.guidance.dropout_rows == "leading":
            drop = torch.arange(n, device=device) < drop.sum()
        return drop

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor | None, gen: torch.Generator,
                 step: int = 0) -> LossOutput:
        return self.loss_at(model, x, self.draw(x, y, gen), step, gen)

    def loss_at(self, model: nn.Module, x: Tensor, d: Draw, step: int = 0, gen: torch.Generator | None = None,
                target_model: nn.Module | None = None) -> LossOutput:
        """The loss for a given draw (TAS replays one draw before and after a lookahead step)."""
        return self.loss(model, x, d.e, d.t, d.r, d.y, n_v=d.n_v, step=step, gen=gen, target_model=target_model)

    def loss(self, model: nn.Module, x: Tensor, e: Tensor, t: Tensor, r: Tensor, y: Tensor | None,
             n_v: int | None = None, step: int = 0, gen: torch.Generator | None = None,
             target_model: nn.Module | None = None) -> LossOutput:
        """The loss for given randomness (used directly by tests and DDP checks). `target_model`: the network
        whose guidance and JVP make the stop-gradient target, when it is not `model` (TAS's held target)."""
        target_model = model if target_model is None else target_model
        z = interpolate(x, e, t)
        v = v_cond = conditional_velocity(x, e)
        if self.guidance is not None and y is not None:
            v = guided_velocity(target_model, z, t, v, y, self.num_classes, self.guidance)
        is_v = (r == t) if n_v is None else torch.arange(len(x), device=x.device) < n_v
        u, u_tgt = mean_flow_target(model, z, r, t, v, y, n_v=n_v, strategy=self.jvp_strategy,
                                    target_fn=target_model)
        if self.target_transform is not None:
            u_tgt = self.target_transform(u_tgt, TargetInputs(v, t, r, is_v, gen)).detach()
        noise_ratio = None
        if self.v_target_noise is not None and bool(is_v.any()):
            # noise scaled by the conditional velocity's norm (not the guided one's), on the v rows only
            noise = self.v_target_noise(v_cond[is_v].to(u_tgt.dtype), gen)
            u_tgt = u_tgt.clone()
            u_tgt[is_v] = u_tgt[is_v] + noise
            noise_ratio = (noise.flatten(1).norm(dim=1) / v_cond[is_v].flatten(1).norm(dim=1).to(noise.dtype)).mean()
        D = per_sample_sq_norm(u.float() - u_tgt.float())
        weight = torch.ones_like(D)
        if self.alpha is not None:
            weight = torch.where(is_v, self.alpha(t.float()), weight)
        if self.beta is not None:
            weight = torch.where(is_v, weight, self.beta((t - r).float(), step))
        loss = (weight * adaptive_loss(D, self.p, self.c)).mean()
        D = D.detach()
        loss_v = (D * is_v).sum() / is_v.sum()  # 0 / 0 = nan when there are no v rows
        loss_u = (D * ~is_v).sum() / (~is_v).sum()
        return LossOutput(loss, loss_v, loss_u, D, weight.detach(), t, r, target=u_tgt.detach(),
                          noise_ratio=noise_ratio, is_v=is_v)
