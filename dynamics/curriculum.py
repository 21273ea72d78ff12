"""The paper's curriculum as small plug-ins on the unchanged MeanFlow objective.

    L = E[ 1(t = r) alpha(t) L_v(z_t, t) + 1(t != r) beta(dt, s) L_u(z_t, r, t) ],   dt = t - r

- alpha(t): the v-term weight; MinSNR-gamma on the velocity error (`MinSNRWeight`).
- p_acc(t): the v-term timestep sampling; DTD's easiest-first clusters (`DTDSchedule`, a v_time piece).
- beta(dt, s): the progressive u-term weight (`ProgressiveUWeight`).
- phases: a run as a sequence of (epochs, loss terms, sampler) (`build_objective` per phase).
- contamination: the O1 probe's corrupted v target (`contaminate`).
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import Tensor

from . import pieces
from .config import DTDConfig, PhaseConfig, RunConfig
from .meanflow.loss import MeanFlowLoss
from .meanflow.samplers import TimeSampler, build_sampler
from .pieces import PieceContext, PieceError, VTimePiece, register_piece


class MinSNRWeight:
    """alpha(t) = min((1 - t)^2, gamma t^2) / E_t[min((1 - t)^2, gamma t^2)].

    Min-SNR-gamma (Hang et al. 2023) weights the x0-space error by min(SNR, gamma), SNR = ((1 - t) / t)^2.
    Since x_hat = z_t - t u_hat, ||x - x_hat|| = t ||v - u_hat||, so on the velocity error the weight is
    min(SNR, gamma) t^2 = min((1 - t)^2, gamma t^2). Dividing by its mean over the sampler's v-row t
    distribution (exact quadrature of the quantile function) keeps the v term's overall scale.
    """

    def __init__(self, sampler: TimeSampler, gamma: float = 5.0):
        self.gamma = gamma
        self.norm = sampler.v_expectation(self.unnormalised)

    def unnormalised(self, t: Tensor) -> Tensor:
        return torch.minimum((1 - t) ** 2, self.gamma * t**2)

    def __call__(self, t: Tensor) -> Tensor:
        return self.unnormalised(t) / self.norm


class ProgressiveUWeight:
    """beta(dt, s) = (1 - s) + s lambda (1 - dt), with s = 1 - (i / T)^k and lambda = 1 / E[1 - dt].

    E[1 - dt] is over the sampler's u rows (exact: 2 * integral F (1 - F) for the sorted iid pair), so the
    expected weight at the start (s = 1) is 1; at the end (s = 0) every interval weighs 1.
    """

    def __init__(self, sampler: TimeSampler, total_steps: int, k: float = 1.0):
        self.k = k
        self.total_steps = total_steps
        self.lam = 1.0 / (1.0 - sampler.mean_dt())

    def progress(self, step: int) -> float:
        """s = 1 - (i / T)^k: 1 at the first step, 0 at the last."""
        return 1.0 - (min(step, self.total_steps) / self.total_steps) ** self.k

    def __call__(self, dt: Tensor, step: int) -> Tensor:
        s = self.progress(step)
        return (1 - s) + s * self.lam * (1 - dt)


def build_piece(kind: str, cfg: RunConfig, ctx: PieceContext):
    """The run's piece of `kind` (None: the kind's OFF name), its parameters from objective.<field>_params."""
    name_field = pieces.FIELD[kind]
    piece = pieces.get_piece(kind, getattr(cfg.objective, name_field))
    if piece is None:
        return None
    params = (RunConfig.params_of(piece.params, getattr(cfg.objective, f"{name_field}_params"), name_field)
              if piece.params is not None else None)
    return piece.build(ctx, params)


def build_v_time(cfg: RunConfig):
    """The run's v-time sampler (None: the base sampler's own v rows), built once per run: it may keep state
    across phases and checkpoints (DTD's stage)."""
    pieces.import_modules(cfg.modules)
    base = build_sampler(cfg.objective.sampler)
    piece = build_piece("v_time", cfg, PieceContext(base, base, cfg.total_steps(), cfg.objective))
    if piece is not None and not isinstance(piece, VTimePiece):
        raise PieceError(f"objective.v_sampling={cfg.objective.v_sampling!r} returned a {type(piece).__name__!r}; "
                         "a v_time piece must subclass dynamics.pieces.VTimePiece (its hooks default to no-ops)")
    return piece


class DTDSchedule(VTimePiece):
    """DTD (Kim, Go et al. 2024): N equal-probability clusters of the v-row t distribution, easiest first.

    Cluster j covers the quantiles [1 - (j + 1) / N, 1 - j / N] (j = 0 is t near 1, the noisiest and
    easiest denoising task). At stage s the clusters 0..s are open and t is drawn from their union (DTD's
    accumulation); at stage N - 1 that union is the whole base distribution, kept to the end of the run. DTD
    clusters the timesteps uniformly under its uniform sampler; under a non-uniform base sampler
    equal-probability clusters carry that rule over. The stage advances
    - `patience` (default, DTD's adaptive pacing): the mean v error over a window of P = patience * T steps
      (at least 1) is compared with the best window of the current stage; a window that does not improve on
      it means no improvement within the maximum patience, and the next cluster opens (the best resets);
    - `pace`: cluster s opens at step s / N * pace_until * T (deterministic, reproducible).
    Choices the DTD paper leaves open, stated: the loss compared is the raw per-sample v error D (comparable
    within a stage), averaged over the window instead of smoothed per iteration.
    """

    def __init__(self, cfg: DTDConfig, total_steps: int):
        self.cfg = cfg
        self.total_steps = total_steps
        self.window = max(1, round(cfg.patience * total_steps))
        self.stage = 0
        self.best = math.inf
        self.bad_windows = 0
        self.window_sum = 0.0
        self.window_n = 0

    @property
    def finished(self) -> bool:
        return self.stage >= self.cfg.clusters - 1

    def q_range(self) -> tuple[float, float]:
        return (0.0 if self.finished else 1.0 - (self.stage + 1) / self.cfg.clusters, 1.0)

    def quantiles(self, n: int, gen: torch.Generator, device: torch.device) -> Tensor:
        """n v-row quantiles, uniform over the open clusters' union q_range()."""
        lo, hi = self.q_range()
        return lo + (hi - lo) * torch.rand(n, generator=gen, device=device)

    def stats(self) -> dict:
        return {"dtd_stage": self.stage}

    def update(self, step: int, loss_v: float) -> None:
        """Called after each optimiser step with the batch's mean v error (nan when it had no v rows)."""
        n = self.cfg.clusters
        if self.cfg.mode == "pace":
            per_cluster = self.cfg.pace_until * self.total_steps / n
            self.stage = min(n - 1, int(step / per_cluster))
            return
        if self.finished or not math.isfinite(loss_v):
            return
        self.window_sum += loss_v
        self.window_n += 1
        if self.window_n < self.window:
            return
        mean = self.window_sum / self.window_n
        self.window_sum, self.window_n = 0.0, 0
        if mean < self.best:
            self.best, self.bad_windows = mean, 0
            return
        self.stage += 1  # no improvement within the patience window: open the next cluster
        self.best, self.bad_windows = math.inf, 0

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("stage", "best", "bad_windows", "window_sum", "window_n")}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)


def contamination_noise(v: Tensor, gen: torch.Generator, k: float, form: str = "literal") -> Tensor:
    """O1's noise on the v-row target, for the conditional velocities `v` of those rows.

    literal (default; the paper: "Gaussian noise ... scaled by k * ||v_t(z_t|eps)||"): k ||v|| xi with
    xi ~ N(0, I) per element, so ||noise|| ~ k ||v|| sqrt(d): the same k is sqrt(d1 / d2) times stronger on
    d1-dimensional data than on d2-dimensional data (B/4 latents, d = 4096, against 2-D toy data: ~45x).
    normalised: k ||v|| xi / ||xi||, noise of norm exactly k ||v|| at every d.
    ||v|| is the per-sample norm of the conditional velocity e - x, not of the CFG-guided velocity.
    """
    xi = torch.randn(v.shape, generator=gen, device=v.device, dtype=v.dtype)
    scale = k * v.flatten(1).norm(dim=1)
    if form == "normalised":
        scale = scale / xi.flatten(1).norm(dim=1)
    return scale.reshape(-1, *([1] * (v.dim() - 1))) * xi


def contaminate(v: Tensor, gen: torch.Generator, k: float, form: str = "literal") -> Tensor:
    """v + contamination_noise(v): the corrupted target when the target is v itself."""
    return v + contamination_noise(v, gen, k, form)


# The paper's pieces, registered by name as a user's are (dynamics.pieces); their parameters are the objective's
# own fields, so configs and result hashes read as before.
@register_piece("alpha", "minsnr")
def _minsnr(ctx: PieceContext, params: None) -> MinSNRWeight:
    return MinSNRWeight(ctx.base_sampler, ctx.objective.minsnr_gamma)


@register_piece("beta", "progressive")
def _progressive(ctx: PieceContext, params: None) -> ProgressiveUWeight:
    return ProgressiveUWeight(ctx.sampler, ctx.total_steps, ctx.objective.beta_k)


@register_piece("v_time", "dtd")
def _dtd(ctx: PieceContext, params: None) -> DTDSchedule:
    return DTDSchedule(ctx.objective.dtd, ctx.total_steps)


def build_objective(cfg: RunConfig, phase: PhaseConfig, num_classes: int = 0, v_time=None) -> MeanFlowLoss:
    """The MeanFlow loss of one phase, with the run's pieces plugged in. `v_time`: the run's v-time sampler
    (`build_v_time`, shared by its phases); None draws the v rows' t from the phase's sampler."""
    obj = cfg.objective
    total = cfg.total_steps()
    base_sampler = build_sampler(obj.sampler)
    sampler = build_sampler(phase.sampler) if phase.sampler is not None else base_sampler
    ratio = {"both": obj.sampler.ratio_r_eq_t if phase.sampler is None else phase.sampler.ratio_r_eq_t,
             "v": 1.0, "u": 0.0}[phase.terms]
    pieces.import_modules(cfg.modules)  # a worker or a reloaded run imports the modules of the run's pieces
    ctx = PieceContext(sampler, base_sampler, total, obj)
    alpha, beta, target = (build_piece(kind, cfg, ctx) for kind in ("alpha", "beta", "target"))
    return MeanFlowLoss(
        sampler=sampler,
        ratio_r_eq_t=ratio,
        adaptive_p=obj.adaptive_p,
        adaptive_c=obj.adaptive_c,
        alpha=alpha,
        beta=beta,
        v_time=v_time,
        target_transform=target,
        v_target_noise=(partial(contamination_noise, k=obj.contamination_k, form=obj.contamination_form)
                        if obj.contamination_k > 0 else None),
        guidance=obj.guidance if num_classes > 0 else None,
        num_classes=num_classes,
        jvp_strategy=obj.jvp,
    )
