"""The paper's curriculum as small plug-ins on the unchanged MeanFlow objective.

    L = E[ 1(t = r) alpha(t) L_v(z_t, t) + 1(t != r) beta(dt, s) L_u(z_t, r, t) ],   dt = t - r

- alpha(t): the v-term weight; Min-SNR-gamma on the velocity error, in one of three forms (`MinSNRWeight`).
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
    """alpha(t): a Min-SNR-gamma weight (Hang et al. 2023) on the velocity error, divided by its mean.

    Convention: z = (1 - t) x + t e (t = 0 data, t = 1 noise), v = e - x, SNR = ((1 - t) / t)^2; the model's
    velocity u_hat gives x_hat = z - t u_hat and e_hat = z + (1 - t) u_hat, so
        ||x - x_hat|| = t ||v - u_hat||,   ||e - e_hat|| = (1 - t) ||v - u_hat||.
    Min-SNR-gamma weighs the x0 error by min(SNR, gamma); the weight of each `form` on ||v - u_hat||^2:
    - velocity (default): min(SNR, gamma) t^2 = min((1 - t)^2, gamma t^2): Min-SNR-gamma exactly, carried from
      the x0 error to the velocity error (the same weight follows from the eps error, min(SNR, gamma) / SNR x
      (1 - t)^2). Zero at t = 1, where 1-NFE sampling starts, and at t = 0.
    - noise: min(SNR, gamma) / SNR = min(1, gamma t^2 / (1 - t)^2), Min-SNR's weight for an eps-prediction loss
      put on the velocity error as it stands (= velocity / (1 - t)^2): the plain velocity loss for
      t >= 1 / (1 + sqrt(gamma)), shrunk towards t = 0; 1 at t = 1.
    - vpred: min(SNR, gamma) / (SNR + 1) = min((1 - t)^2, gamma t^2) / ((1 - t)^2 + t^2), Min-SNR's weight for
      a v-prediction loss put on the velocity error as it stands (= velocity / ((1 - t)^2 + t^2); the diffusion
      v target of this path, rescaled to unit variance, errs by sqrt((1 - t)^2 + t^2) x the velocity error).
      Zero at both ends.
    Only `velocity` makes the v term Min-SNR-gamma's objective, hence the default; the other two are that
    objective times 1 / (1 - t)^2 or 1 / ((1 - t)^2 + t^2), switches for a code that put Min-SNR's eps- or
    v-prediction weight on the velocity error as it stands (docs/fidelity.md).
    Each is divided by its mean over the sampler's v-row t distribution (exact quadrature of the quantile
    function), so E_t[alpha] = 1 and the v term keeps its scale.
    """

    def __init__(self, sampler: TimeSampler, gamma: float = 5.0, form: str = "velocity"):
        if form not in MINSNR_FORMS:
            raise ValueError(f"minsnr form {form!r} is not one of {', '.join(MINSNR_FORMS)}")
        self.gamma = gamma
        self.form = form
        self.norm = sampler.v_expectation(self.unnormalised)

    def unnormalised(self, t: Tensor) -> Tensor:
        velocity = torch.minimum((1 - t) ** 2, self.gamma * t**2)
        if self.form == "noise":  # min(1, gamma / SNR); at t = 1, gamma / 0 = inf and the minimum is 1
            return torch.minimum(torch.ones_like(t), self.gamma * t**2 / (1 - t) ** 2)
        if self.form == "vpred":
            return velocity / ((1 - t) ** 2 + t**2)
        return velocity

    def __call__(self, t: Tensor) -> Tensor:
        return self.unnormalised(t) / self.norm


MINSNR_FORMS = ("velocity", "noise", "vpred")


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
    - `counter` (default, DTD's Algorithm 1): each step's v error either is a new best of the stage (the counter
      resets) or is not (the counter counts one); when the counter reaches tau the next cluster opens and the
      best and the counter reset. The signal is the raw per-step v error the trainer passes (mean D over the
      batch's v rows, all-reduced over ranks), not the adaptively weighted loss (~1 whatever the error); a step
      without v rows (nan) leaves the counter as it is. tau: DTDConfig.tau_for (200 iterations at paper scale);
    - `pace` (an ablation): cluster s opens at step s / N * pace_until * T (deterministic, reproducible).
    """

    def __init__(self, cfg: DTDConfig, total_steps: int):
        self.cfg = cfg
        self.total_steps = total_steps
        self.tau = cfg.tau_for(total_steps)
        self.stage = 0
        self.best = math.inf
        self.counter = 0

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
        if loss_v < self.best:
            self.best, self.counter = loss_v, 0
            return
        self.counter += 1
        if self.counter >= self.tau:  # tau iterations without a new best: open the next cluster
            self.stage += 1
            self.best, self.counter = math.inf, 0

    def state_dict(self) -> dict:
        return {"stage": self.stage, "best": self.best, "counter": self.counter}

    def load_state_dict(self, state: dict) -> None:
        """The stage, best and counter; a checkpoint of the windowed rule (before the counter) keeps its stage."""
        self.stage = int(state["stage"])
        self.best = float(state.get("best", math.inf))
        self.counter = int(state.get("counter", 0))


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
    return MinSNRWeight(ctx.base_sampler, ctx.objective.minsnr_gamma, ctx.objective.minsnr_form)


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
