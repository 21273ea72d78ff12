"""(t, r) samplers: the distribution of time pairs that the MeanFlow loss is averaged over.

Every sampler returns a batch laid out with the v rows (r = t) first and the u rows (r < t) after them,
`n_v` of each batch being v rows. A fixed layout keeps tensor shapes static, which lets the objective
compute the JVP tangent for the u rows only (the (t - r) dudt term vanishes where r = t).

Each sampler also exposes the distribution of t on the v rows through its inverse CDF (`v_quantile`),
which is what DTD's equal-probability clusters and MinSNR's normalisation are defined against, and
E[1 - dt] over its u rows, which the progressive L_u weighting normalises by.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor

from ..config import SamplerConfig

# (n, generator, device) -> n quantiles in [0, 1] of the v-row t distribution (a v_time piece's `quantiles`)
QuantileFn = Callable[[int, torch.Generator, torch.device], Tensor]

_QUAD_POINTS = 200_001  # midpoint-rule nodes for the expectations below (error ~1e-10 for smooth integrands)


class TimeSampler(ABC):
    """Base class. Subclasses draw iid base pairs and define the v-row quantile function."""

    def __init__(self, cfg: SamplerConfig):
        self.cfg = cfg

    # -- the base distribution of one time draw --------------------------------------------------------
    @abstractmethod
    def _draw(self, n: int, gen: torch.Generator, device: torch.device) -> Tensor:
        """n iid draws of one time."""

    @abstractmethod
    def _cdf(self, x: Tensor) -> Tensor:
        """CDF of one draw."""

    @abstractmethod
    def _icdf(self, p: Tensor) -> Tensor:
        """Inverse CDF of one draw."""

    # -- pairs ------------------------------------------------------------------------------------------
    def sample_u(self, n: int, gen: torch.Generator, device: torch.device) -> tuple[Tensor, Tensor]:
        """n pairs with r <= t: two iid draws, sorted (MeanFlow's sampler)."""
        a, b = self._draw(n, gen, device), self._draw(n, gen, device)
        return torch.maximum(a, b), torch.minimum(a, b)

    def v_quantile(self, q: Tensor) -> Tensor:
        """Inverse CDF of t on the v rows: the max of two iid draws, so F_v = F^2 and F_v^-1(q) = F^-1(sqrt q)."""
        return self._icdf(q.clamp(0, 1).sqrt())

    def sample_v(self, n: int, gen: torch.Generator, device: torch.device,
                 quantiles: QuantileFn | None = None) -> Tensor:
        """n v-row times t = F_v^-1(q): q uniform on [0, 1], or drawn by `quantiles` (a v-time sampler: DTD)."""
        q = quantiles(n, gen, device) if quantiles is not None else torch.rand(n, generator=gen, device=device)
        return self.v_quantile(q)

    def sample(self, n: int, n_v: int, gen: torch.Generator, device: torch.device,
               quantiles: QuantileFn | None = None) -> tuple[Tensor, Tensor]:
        """(t, r) for a batch of n: rows [0, n_v) have r = t, rows [n_v, n) have r < t (almost surely)."""
        t_v = self.sample_v(n_v, gen, device, quantiles)
        t_u, r_u = self.sample_u(n - n_v, gen, device)
        return torch.cat([t_v, t_u]), torch.cat([t_v, r_u])

    # -- expectations -----------------------------------------------------------------------------------
    def v_expectation(self, f) -> float:
        """E[f(t)] over the v rows, by the midpoint rule on the quantile function (deterministic)."""
        q = (torch.arange(_QUAD_POINTS, dtype=torch.float64) + 0.5) / _QUAD_POINTS
        return float(f(self.v_quantile(q)).mean())

    def mean_dt(self) -> float:
        """E[t - r] over the u rows. For iid draws, E|X - Y| = 2 * integral of F (1 - F) dx over [0, 1]."""
        x = (torch.arange(_QUAD_POINTS, dtype=torch.float64) + 0.5) / _QUAD_POINTS
        F = self._cdf(x)
        return float(2 * (F * (1 - F)).mean())


class LogitNormalSampler(TimeSampler):
    """t = sigmoid(N(mu, sigma)) per draw (MeanFlow default mu = -0.4, sigma = 1)."""

    def _draw(self, n, gen, device):
        return torch.sigmoid(self.cfg.mu + self.cfg.sigma * torch.randn(n, generator=gen, device=device))

    def _cdf(self, x):
        logit = torch.log(x) - torch.log1p(-x)
        return 0.5 * (1 + torch.erf((logit - self.cfg.mu) / (self.cfg.sigma * math.sqrt(2))))

    def _icdf(self, p):
        return torch.sigmoid(self.cfg.mu + self.cfg.sigma * torch.special.ndtri(p))


class UniformSampler(TimeSampler):
    """t ~ U[0, 1] per draw."""

    def _draw(self, n, gen, device):
        return torch.rand(n, generator=gen, device=device)

    def _cdf(self, x):
        return x.clamp(0, 1)

    def _icdf(self, p):
        return p


class DtBinSampler(UniformSampler):
    """The O2 interval bins: dt ~ U[dt_min, dt_max], then t ~ U[dt, 1], r = t - dt.

    v rows (if any) use uniform t.
    """

    def sample_u(self, n, gen, device):
        dt = self.cfg.dt_min + (self.cfg.dt_max - self.cfg.dt_min) * torch.rand(n, generator=gen, device=device)
        t = dt + (1 - dt) * torch.rand(n, generator=gen, device=device)
        return t, t - dt

    def v_quantile(self, q):
        return q.clamp(0, 1)

    def mean_dt(self) -> float:
        return 0.5 * (self.cfg.dt_min + self.cfg.dt_max)


def build_sampler(cfg: SamplerConfig) -> TimeSampler:
    return {"logit_normal": LogitNormalSampler, "uniform": UniformSampler, "dt_bin": DtBinSampler}[cfg.kind](cfg)
