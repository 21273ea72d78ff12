"""The run schema: one dataclass per section of a run's configuration, with its checks.

Each section validates its own ranges; `check_allowed_values` checks every `Literal[...]` field once, from the
types, so the allowed words are written in one place. The whole run (`RunConfig`) is in `run.py`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal


class ConfigError(ValueError):
    """A bad key or value in a run configuration; the message names the key and what is allowed."""


def check_choice(name: str, value: Any, allowed: tuple) -> None:
    """`name=value` is one of `allowed`, else a ConfigError that lists them."""
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed; choose one of {', '.join(map(str, allowed))}")


def _literal_values(tp: Any) -> tuple | None:
    """The allowed values of a `Literal[...]` field type (also inside `X | None`), else None."""
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if typing.get_origin(arg) is Literal:
                return typing.get_args(arg)
    return None


def check_allowed_values(obj: Any, prefix: str = "") -> None:
    """The one check of allowed values: every `Literal[...]` field of a config dataclass, recursively (lists of
    sections included), holds one of its values; the error names the key, e.g. `phases.0.sampler.kind`."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), prefix + f.name
        allowed = _literal_values(hints[f.name])
        if allowed is not None and value is not None:
            check_choice(key, value, allowed)
        elif dataclasses.is_dataclass(value):
            check_allowed_values(value, key + ".")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    check_allowed_values(item, f"{key}.{i}.")


def _in_range(name: str, value: float, lo: float, hi: float, lo_open: bool = False) -> None:
    bad = value <= lo if lo_open else value < lo
    if bad or value > hi:
        bracket = "(" if lo_open else "["
        raise ConfigError(f"{name}={value!r} is out of range; allowed {bracket}{lo}, {hi}]")


DatasetName = Literal["moons", "checkerboard", "gaussians8", "gaussian", "spirals", "rings", "digits",
                      "imagenet_latents"]
DATASETS: tuple[str, ...] = typing.get_args(DatasetName)
TOY_DATASETS = ("moons", "checkerboard", "gaussians8", "gaussian", "spirals", "rings")


@dataclass
class DataConfig:
    name: DatasetName = "moons"
    # Axis-aligned Gaussian ("gaussian"): mean and per-axis scale; the exact mean flow is known in closed form.
    mean: list[float] = field(default_factory=lambda: [1.0, -0.5])
    scale: list[float] = field(default_factory=lambda: [0.5, 0.25])
    path: str = ""  # ImageNet latent shards directory
    hflip: bool = True

    def validate(self) -> None:
        if self.name == "gaussian" and len(self.mean) != len(self.scale):
            raise ConfigError(f"data.mean has {len(self.mean)} dims but data.scale has {len(self.scale)}")
        if self.name == "gaussian" and min(self.scale) <= 0:
            raise ConfigError(f"data.scale={self.scale} must be positive in every dim")
        if self.name == "imagenet_latents" and not self.path:
            raise ConfigError("data.path is required for data.name=imagenet_latents (a directory of latent shards)")


# eval metric -> the data it can be computed on (fid: at paper scale, through `dynamics fid`)
EVAL_METRICS = {"sw2": TOY_DATASETS, "energy": TOY_DATASETS, "fd_digits": ("digits",), "class_acc": ("digits",),
                "fid": ("imagenet_latents",)}

ModelName = Literal["mlp", "dit"]
DitSize = Literal["tiny", "S/2", "S/4", "B/4", "B/2", "M/2", "L/2", "XL/2"]
MODELS: tuple[str, ...] = typing.get_args(ModelName)
DIT_SIZES: tuple[str, ...] = typing.get_args(DitSize)


@dataclass
class ModelConfig:
    name: ModelName = "mlp"
    # MLP
    width: int = 256
    depth: int = 3
    # raw (t, t - r as inputs) | sinusoidal (DiT-style features of time_scale * t)
    time_embedding: Literal["raw", "sinusoidal"] = "raw"
    # DiT
    size: DitSize = "tiny"
    patch_size: int = 0  # 0 = the size's own patch (tiny: 2)
    # Sinusoidal time features (DiT, and the MLP's sinusoidal option) see time_scale * t. 1.0: t in [0, 1]
    # unscaled, as the official MeanFlow code (JAX and PyTorch); 1000 (DiT's integer-timestep habit) multiplies
    # d/dt u through every time feature, and the target v - (t - r) du/dt then chases its own derivative.
    time_scale: float = 1.0

    def validate(self) -> None:
        if self.width < 1 or self.depth < 1:
            raise ConfigError(f"model.width={self.width} and model.depth={self.depth} must be >= 1")
        if self.time_scale <= 0:
            raise ConfigError(f"model.time_scale={self.time_scale} must be > 0 (1.0: t in [0, 1] unscaled)")


SamplerKind = Literal["logit_normal", "uniform", "dt_bin"]
SAMPLERS: tuple[str, ...] = typing.get_args(SamplerKind)


@dataclass
class SamplerConfig:
    """The (t, r) sampler. `dt_bin`: dt uniform in [dt_min, dt_max], t uniform in [dt, 1] (the O2 bins)."""

    kind: SamplerKind = "logit_normal"
    mu: float = -0.4
    sigma: float = 1.0
    ratio_r_eq_t: float = 0.75  # share of each batch with r = t (the v term)
    dt_min: float = 0.1
    dt_max: float = 0.3

    def validate(self, prefix: str = "objective.sampler") -> None:
        _in_range(f"{prefix}.ratio_r_eq_t", self.ratio_r_eq_t, 0.0, 1.0)
        _in_range(f"{prefix}.sigma", self.sigma, 0.0, 100.0, lo_open=True)
        if self.kind == "dt_bin":
            _in_range(f"{prefix}.dt_min", self.dt_min, 0.0, 1.0)
            _in_range(f"{prefix}.dt_max", self.dt_max, 0.0, 1.0)
            if self.dt_max <= self.dt_min:  # an empty bin would train nothing but v
                raise ConfigError(f"{prefix}.dt_max={self.dt_max} must be > {prefix}.dt_min={self.dt_min} "
                                  "(an empty dt bin)")


@dataclass
class GuidanceConfig:
    """Classifier-free guidance in training (MeanFlow): v_g = w v + kappa u(c) + (1 - w - kappa) u(null).

    `dropout_rows`: `leading` (default, the official code's layout): Binomial(n, class_dropout) rows are
    dropped, and they are the batch's first rows, which are r = t rows, so the null class is trained on v
    only; `random`: each row is dropped independently, u rows included.
    """

    class_dropout: float = 0.1
    dropout_rows: Literal["leading", "random"] = "leading"  # leading | random
    w: float = 1.0
    kappa: float = 0.0
    t_min: float = 0.0
    t_max: float = 1.0

    def validate(self) -> None:
        _in_range("objective.guidance.class_dropout", self.class_dropout, 0.0, 1.0)
        _in_range("objective.guidance.kappa", self.kappa, 0.0, 1.0)
        if self.kappa >= 1.0:
            raise ConfigError("objective.guidance.kappa must be < 1 (effective guidance w / (1 - kappa))")
        if not 0.0 <= self.t_min <= self.t_max <= 1.0:
            raise ConfigError(f"objective.guidance needs 0 <= t_min <= t_max <= 1, got {self.t_min}, {self.t_max}")


# DTD's tau at the paper scales, and its share of B/4's run (240 epochs of ImageNet at batch 256 = 1,200,960
# iterations): 1.67e-4, the tau of the small scales as a share of their runs (DTDConfig)
PAPER_TAU = 200
SMALL_SCALE_TAU_SHARE = PAPER_TAU / (240 * (1281167 // 256))


@dataclass
class DTDConfig:
    """Denoising-Task-Difficulty curriculum on the v-term timesteps (Kim, Go et al. 2024, arXiv 2403.10348).

    N = 20 clusters, easiest (t near 1) first. `counter` (default): DTD's Algorithm 1, a counter of iterations
    since the v error last reached a new best, reset on every new best; at tau the next cluster opens and the
    best and the counter reset. tau = 200 iterations at the paper scales (DTD's DiT setting: the same batch and
    backbone), so the pacing takes at least 19 x 200 iterations, 0.3% of B/4's 1.2M (DTD is a short curriculum at
    the start of a run). Small scales have no faithful analogue: their presets set `tau_share`, tau as a share of
    the run's steps, SMALL_SCALE_TAU_SHARE = 200 / 1,200,960, so that 20 x tau spans the share of the run it spans
    at B/4; tau is at least 1 (it is 1 in every cpu and digits run, whose runs are 1,200-4,000 steps).
    `pace` (a labelled ablation): cluster k opens at step k / clusters * pace_until * T.
    """

    clusters: int = 20
    # counter (DTD's adaptive pacing, Algorithm 1) | pace (fixed fractions of training; an ablation)
    mode: Literal["counter", "pace"] = "counter"
    tau: int = PAPER_TAU  # iterations without a new best v error before the next cluster opens
    tau_share: float = 0.0  # > 0: tau = max(1, round(tau_share x the run's steps)) instead of `tau`
    pace_until: float = 0.5

    def validate(self) -> None:
        if self.clusters < 1:
            raise ConfigError(f"objective.dtd.clusters={self.clusters} must be >= 1")
        if self.tau < 1:
            raise ConfigError(f"objective.dtd.tau={self.tau} must be >= 1 (iterations)")
        _in_range("objective.dtd.tau_share", self.tau_share, 0.0, 1.0)
        if self.tau_share > 0 and self.tau != PAPER_TAU:  # one of the two sets tau, not both
            raise ConfigError(f"objective.dtd.tau={self.tau} is ignored while objective.dtd.tau_share="
                              f"{self.tau_share:.3g} > 0; set objective.dtd.tau_share=0 to use tau")
        _in_range("objective.dtd.pace_until", self.pace_until, 0.0, 1.0, lo_open=True)

    def tau_for(self, total_steps: int) -> int:
        """The counter's tau in iterations for a run of `total_steps` steps."""
        return max(1, round(self.tau_share * total_steps)) if self.tau_share > 0 else self.tau


@dataclass
class ObjectiveConfig:
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    adaptive_p: float = 1.0
    adaptive_c: float = 1e-3
    alpha: str = "none"  # v-term weight: none | minsnr | a registered piece (dynamics.pieces)
    minsnr_gamma: float = 5.0
    # which Min-SNR-gamma weight sits on the velocity error (curriculum.MinSNRWeight): velocity (default: the
    # x0-space weight min(SNR, gamma) carried over exactly) | noise (min(SNR, gamma) / SNR) | vpred
    # (min(SNR, gamma) / (SNR + 1)), the latter two Min-SNR's weights for eps- and v-prediction losses
    minsnr_form: Literal["velocity", "noise", "vpred"] = "velocity"
    v_sampling: str = "base"  # v-term timestep sampling: base | dtd | a registered v_time piece
    dtd: DTDConfig = field(default_factory=DTDConfig)
    beta: str = "none"  # u-term weight: none | progressive | a registered piece (dynamics.pieces)
    beta_k: float = 1.0
    # a transform of the stop-gradient target: none | a registered target piece (dynamics.pieces)
    target_transform: str = "none"
    # a registered piece's typed parameters (its params dataclass); the paper's pieces use the fields above
    alpha_params: dict[str, Any] = field(default_factory=dict)
    beta_params: dict[str, Any] = field(default_factory=dict)
    v_sampling_params: dict[str, Any] = field(default_factory=dict)
    target_transform_params: dict[str, Any] = field(default_factory=dict)
    # O1 reverse: v-row target v + noise. literal (the paper's words): k ||v|| xi, xi ~ N(0, I) per element;
    # normalised: k ||v|| xi / ||xi||. ||v|| is the per-sample norm of the conditional velocity e - x.
    contamination_k: float = 0.0
    contamination_form: Literal["literal", "normalised"] = "literal"
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)  # classifier-free guidance (CFG)
    # rows | fused | compiled | full: how the JVP target is computed (meanflow/target.py)
    jvp: Literal["rows", "fused", "compiled", "full"] = "rows"

    def validate(self) -> None:
        self.sampler.validate()
        if self.adaptive_p < 0 or self.adaptive_c <= 0:
            raise ConfigError(f"objective.adaptive_p={self.adaptive_p} must be >= 0 and adaptive_c > 0")
        if self.minsnr_gamma <= 0 or self.beta_k <= 0 or self.contamination_k < 0:
            raise ConfigError("objective.minsnr_gamma, objective.beta_k must be > 0, contamination_k >= 0")
        self.dtd.validate()
        self.guidance.validate()


@dataclass
class PhaseConfig:
    """One phase of a run: which loss terms are on, for how long, with which (t, r) sampler."""

    epochs: float = 1.0
    terms: Literal["both", "v", "u"] = "both"  # both (joint MeanFlow) | v (t = r only) | u (t != r only)
    sampler: SamplerConfig | None = None  # None: the objective's sampler

    def validate(self, i: int) -> None:
        if self.epochs <= 0:
            raise ConfigError(f"phases.{i}.epochs={self.epochs} must be > 0")
        if self.sampler is not None:
            self.sampler.validate(prefix=f"phases.{i}.sampler")


@dataclass
class EvalConfig:
    every_epochs: float = 1.0  # 0: only at the end
    nfe: list[int] = field(default_factory=lambda: [1, 2])  # few-step sampling with u
    nfe_v: list[int] = field(default_factory=lambda: [32])  # Euler with v = u(z, t, t)
    # added at the last step's evaluation only: what a study reads at the end of a run whose intermediate
    # evaluations need less (the convergence curve is 1-NFE; v-quality's 64/128-NFE v are read at the end)
    final_nfe: list[int] = field(default_factory=list)
    final_nfe_v: list[int] = field(default_factory=list)
    num_samples: int = 4096
    metrics: list[str] = field(default_factory=lambda: ["sw2", "energy"])

    def validate(self) -> None:
        if min(self.nfe + self.nfe_v + self.final_nfe + self.final_nfe_v, default=1) < 1:
            raise ConfigError(f"eval.nfe={self.nfe}, eval.nfe_v={self.nfe_v}, eval.final_nfe={self.final_nfe} and "
                              f"eval.final_nfe_v={self.final_nfe_v} must hold integers >= 1")
        if self.num_samples < 2:
            raise ConfigError(f"eval.num_samples={self.num_samples} must be >= 2")


@dataclass
class TrainConfig:
    batch_size: int = 1024
    lr: float = 3e-3
    lr_schedule: Literal["constant", "cosine"] = "cosine"  # constant | cosine (after warm-up)
    warmup_steps: int = 200
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    steps_per_epoch: int = 1000
    epochs: float = 10.0  # used when `phases` is empty
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 1000
    keep_epochs: list[float] = field(default_factory=list)  # epochs whose checkpoints are kept for fine-tunes
    # auto (bf16 autocast on GPU, fp32 on CPU) | fp32 (the paper presets: the official JAX code trains in
    # float32) | bf16 (autocast of the graph-building forward and backward; the JVP target stays float32)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    grad_clip: float = 0.0  # 0: off
    threads: int = 0  # torch CPU threads; 0 = leave torch's default

    def validate(self) -> None:
        for name in ("batch_size", "steps_per_epoch", "log_every", "ckpt_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}={getattr(self, name)} must be >= 1")
        if self.lr <= 0:
            raise ConfigError(f"train.lr={self.lr} must be > 0")
        _in_range("train.ema_decay", self.ema_decay, 0.0, 1.0)
        _in_range("train.adam_beta1", self.adam_beta1, 0.0, 1.0)
        _in_range("train.adam_beta2", self.adam_beta2, 0.0, 1.0)
        if self.epochs <= 0:
            raise ConfigError(f"train.epochs={self.epochs} must be > 0")


@dataclass
class InitConfig:
    """Start from another run's checkpoint (shared pre-training across a grid)."""

    run_dir: str = ""
    epoch: float = -1.0  # -1: the run's final checkpoint
    # a run that starts from another continues its optimiser state and EMA (False: a fresh optimiser state)
    load_optimizer: bool = True

