"""The study registry: named grids of runs, each with a metric and the paper finding it tests.

A study is data (question, metric, finding, seeds, notes) plus one function `grid(scale) -> list[RunSpec]`
that lists the runs of ONE seed at one scale. `Study.runs(scale, seeds)` repeats that grid for every seed,
sets `train.seed`, suffixes each key with `/s<seed>`, and names every run by the hash of its resolved config.

Budgets are written in the paper's epochs (`phases=[v 5 ep, u 60 ep]`); each scale says how many optimiser
steps an epoch is (`SCALE_SETTINGS`), so a grid reads the same at every scale.

Shared prefixes. A fine-tune that continues another run of the grid (same study, same seed) from one of its
checkpoints is built with `continue_from(parent, key, epoch, then=[...])`: the child is the parent's config with
the parent's phases up to `epoch` (the prefix it inherits) followed by `then`; the parent keeps that epoch's
checkpoint; and the relation is a typed field, `RunSpec.parent = ParentRef(key, epoch)`. `Study.runs` resolves
it: the parent joins `depends_on`, and the child's `init.run_dir` / `init.epoch` name the parent's directory
*relative to the results root*, `<scale>/<study>/<parent hash>`. The child's hash (its directory name)
therefore changes when the parent's config changes, but not with where results live; the launcher makes the
path absolute when the run starts (`dynamics.launch.absolute_init`) and asks one function whether the
checkpoint a child needs exists (`dynamics.launch.readiness`).

Users register their own studies the same way the built-in modules do, from their own module:

    from experiments.registry import Metric, Finding, RunSpec, base_config, joint, register

    @register(name="my-study", question="...", metric=Metric("1-NFE distance"),
              finding=Finding("...", holds_if="...", comparison="better", tag="arm",
                              treatment="new", control="vanilla"))
    def my_study(scale: str) -> list[RunSpec]:
        ...

and load it with `register_from_module("my_package.my_studies")` or `dynamics run --register ...`.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dynamics.config import (
    SCALES,
    ConfigError,
    InitConfig,
    PhaseConfig,
    RunConfig,
    SamplerConfig,
    apply_overrides,
    preset,
)

# the library's task and dt-bin vocabulary, re-exported so studies read it from the registry
from dynamics.meanflow.tasks import TaskSpec as TaskSpec
from dynamics.meanflow.tasks import bin_label as bin_label
from dynamics.meanflow.tasks import dt_bin as dt_bin
from dynamics.results import config_hash


class RegistryError(ValueError):
    """A bad study name, scale, grid or registration; the message names the value and what is allowed."""


# ----------------------------------------------------------------------------------------------------
# scales


@dataclass(frozen=True)
class ScaleSettings:
    """How one scale runs the paper's epoch budgets, and why these numbers."""

    steps_per_epoch: int  # optimiser steps per paper epoch (train.steps_per_epoch)
    seeds: int  # default seeds per grid point
    warmup_steps: int | None = None  # None: the preset's
    eval_samples: int | None = None  # None: the preset's eval.num_samples
    ema_decay: float | None = None  # None: the preset's train.ema_decay
    eval_metrics: tuple[str, ...] | None = None  # None: the preset's eval.metrics
    class_conditional: bool = False
    note: str = ""


# The cpu numbers are sized so that every study's reference runs are in the learning regime (the binding one: the
# 40-epoch v-only parent of O2/O3/O1-fixed-budget, whose 32-NFE v must reach 10% of the noise-to-data distance)
# and the whole reproduction fits in 45 minutes on 2 cores with 2 runs at once (README, "where the time goes";
# `dynamics run all --scale cpu --dry-run` prints the estimate, rates in dynamics/launch/cost.py). EMA 0.99: a 100-step
# average, short next to the shortest run (40 epochs = 1,200 steps; the preset's 0.999 still holds 30% of the
# initial weights after 1,200 steps). Evaluation: 4,096 samples (floor 5.7% of the ceiling against 7.1% at 2,048,
# so the 10% bar is not at the floor) with sliced W2 only (the studies' metric; energy distance is O(n^2) and cost
# 3x the rest of an evaluation). Smoke makes one epoch one step: every study runs in seconds. Paper scales use
# ImageNet's real epoch.
CPU_STEPS_PER_EPOCH = 30
SCALE_SETTINGS: dict[str, ScaleSettings] = {
    "smoke": ScaleSettings(1, 1, warmup_steps=5, note="1 step per epoch: a 240-epoch run is 240 steps"),
    "cpu": ScaleSettings(CPU_STEPS_PER_EPOCH, 3, warmup_steps=60, eval_samples=4096, ema_decay=0.99,
                         eval_metrics=("sw2",),
                         note=f"{CPU_STEPS_PER_EPOCH} steps (batch 1024) per epoch; warm-up 60 steps; EMA 0.99; "
                              "4096 eval samples, sliced W2 only"),
    # digits: 20 steps per epoch so that the 40-epoch v-only parent (800 steps) is in the learning regime: a
    # constant-lr v-only run measured 32-NFE v FD 183 / 70 / 37 / 15 / 12 (71 / 27 / 14 / 5.9 / 4.8% of the noise
    # distance) at steps 320 / 480 / 640 / 800 / 960, and a joint run's 1-NFE 24.8 / 14.8 at 800 / 960 (README,
    # "the digits reproduction"); main runs 5 steps per epoch (LONG_RUN_STEPS_PER_EPOCH) and contaminated v 16.
    "digits": ScaleSettings(20, 3, warmup_steps=100, class_conditional=True,
                            note="20 steps (batch 256) per epoch; warm-up 100 steps; EMA 0.99 from the preset"),
    "b4": ScaleSettings(1281167 // 256, 1, class_conditional=True, note="ImageNet epochs at batch 256"),
    "m2": ScaleSettings(1281167 // 256, 1, class_conditional=True, note="ImageNet epochs at batch 256"),
    "l2": ScaleSettings(1281167 // 256, 1, class_conditional=True, note="ImageNet epochs at batch 256"),
    "xl2": ScaleSettings(1281167 // 256, 1, class_conditional=True, note="ImageNet epochs at batch 256"),
}

# The method each study compares with vanilla, as the paper ran it (issue 8.6), the same at every scale so a
# grid reads the same everywhere:
# - k-schedule: the paper's k = 1 value (10.20 at B/4) is its DTD + L_u row;
# - v-quality: the paper's only v-quality comparison is B/4's MeanFlow 7.61 against "ours w MinSNR" 7.09;
# - convergence (2.1x M/2, 2.3x L/2, 2.5x XL/2) and CFG robustness: DTD + L_u, its primary method at M/2 and up.
PAPER_METHOD: dict[str, str] = {
    "k-schedule": "dtd-lu", "v-quality": "minsnr-lu", "convergence": "dtd-lu", "cfg-robustness": "dtd-lu",
}


def paper_method(study: str) -> str:
    """The method `study` compares with vanilla (PAPER_METHOD)."""
    if study not in PAPER_METHOD:
        raise RegistryError(f"study {study!r} has no paper method; known: {', '.join(PAPER_METHOD)}")
    return PAPER_METHOD[study]

# Seeds per study at cpu and digits scale where fewer than the scale's 3 carry the power (README, "where the time
# goes"): the trend findings are a regression over the grid's points x seeds (O1: 5 E_v values, O2: 4 bins x 2
# inits, contamination: 5 k), with ample degrees of freedom at 2 seeds; the paired comparisons (main, k-schedule,
# v-quality, convergence) keep 3, since 2 pairs leave one degree of freedom (t = 12.7 for a 95% interval).
TREND_SEEDS = {"cpu": 2, "digits": 2}

# Steps per epoch for the 240-epoch joint studies (main, whose runs v-quality and convergence share, and k-schedule)
# where the scale's own would not fit its time budget: at cpu, 10 (a third of 30) makes them 2,400 steps, 0.6x the
# calibrated vanilla's 4,000, and the reproduction fits 45 minutes on 2 cores (README, "where the time goes"; at 15
# the measured reproduction took 67 minutes with vanilla 1-NFE at 10.9% of the noise distance). At digits, 5 (a
# quarter of 20) makes main's runs 1,200 steps: the first digits preset's length, whose three vanilla seeds were at
# 5-13% of the noise distance. Their epochs, and so every schedule inside them (DTD's stages, L_u's
# s = 1 - (i/T)^k, the convergence curve), read as the paper's; their reference (vanilla 1-NFE within 20% of the
# noise distance) checks that they still learn.
LONG_RUN_STEPS_PER_EPOCH = {"cpu": 10, "digits": 5}

CONSTANT_LR_NOTE = ("shared prefixes: every run of this study uses train.lr_schedule=constant (warm-up kept), so a "
                    "fine-tune inherits its parent's prefix exactly (a cosine decay would depend on each run's length)")


def data_dim(cfg: RunConfig) -> int:
    """Dimensions of one sample of the config's data: 2 (toy), 64 (8x8 digits), 4096 (4 x 32 x 32 latents)."""
    return {"digits": 64, "imagenet_latents": 4096}.get(cfg.data.name, 2)


SINGLE_MODEL_SIZE = ("compares model sizes (B/4 .. XL/2 stores read together); this scale trains one model size, "
                     "and a width sweep of the toy MLP / tiny DiT would not be an honest analogue of DiT scaling")
SMALL_SCALES_NA = {s: SINGLE_MODEL_SIZE for s in ("smoke", "cpu", "digits")}
# Issue 10: the digits reproduction runs O1 (v-first, contaminated v), O2, O3 and the main ablation, 3 seeds, within
# ~3 hours on 2 cores; the other studies run at cpu and cluster scales.
NOT_AT_DIGITS = {"digits": "not run at digits scale (its reproduction keeps to O1 v-first, contaminated v, O2, O3 and "
                           "main within ~3 h on 2 cores); run it at cpu or a cluster scale"}


def check_scale(scale: str) -> ScaleSettings:
    if scale not in SCALE_SETTINGS:
        raise RegistryError(f"scale={scale!r} is not known; choose one of {', '.join(SCALES)}")
    return SCALE_SETTINGS[scale]


# ----------------------------------------------------------------------------------------------------
# grid building blocks


def base_config(scale: str, method: str = "vanilla", *, shared_prefix: bool = False,
                steps_per_epoch: Mapping[str, int] | None = None) -> RunConfig:
    """The scale's preset for a study: the scale's epoch length and warm-up, evaluation at the end only.

    `shared_prefix=True` switches a decaying LR schedule to constant (see CONSTANT_LR_NOTE); `steps_per_epoch`
    maps a scale to the study's own epoch length where it differs from the scale's (LONG_RUN_STEPS_PER_EPOCH)."""
    settings = check_scale(scale)
    cfg = preset(f"{scale}-{method}")
    cfg.train.steps_per_epoch = (steps_per_epoch or {}).get(scale, settings.steps_per_epoch)
    if settings.warmup_steps is not None:
        cfg.train.warmup_steps = settings.warmup_steps
    if settings.eval_samples is not None:
        cfg.eval.num_samples = settings.eval_samples
    if settings.ema_decay is not None:
        cfg.train.ema_decay = settings.ema_decay
    if settings.eval_metrics is not None:
        cfg.eval.metrics = list(settings.eval_metrics)
    cfg.eval.every_epochs = 0.0
    cfg.train.keep_epochs = []
    if shared_prefix:
        cfg.train.lr_schedule = "constant"
    return cfg


def v_only(epochs: float) -> PhaseConfig:
    return PhaseConfig(epochs=float(epochs), terms="v")


def u_only(epochs: float, sampler: SamplerConfig | None = None) -> PhaseConfig:
    return PhaseConfig(epochs=float(epochs), terms="u", sampler=sampler)


def joint(epochs: float) -> PhaseConfig:
    return PhaseConfig(epochs=float(epochs), terms="both")


def prefix_phases(cfg: RunConfig, epoch: float) -> list[PhaseConfig]:
    """`cfg`'s phases over its first `epoch` epochs (the last one cut at `epoch`): what a child continuing
    its checkpoint at `epoch` has already trained."""
    out: list[PhaseConfig] = []
    start = 0.0
    for phase in cfg.phases:
        if start >= epoch:
            break
        part = copy.deepcopy(phase)
        part.epochs = float(min(phase.epochs, epoch - start))
        out.append(part)
        start += phase.epochs
    return out


def continue_from(parent: RunSpec, key: str, epoch: float, then: list[PhaseConfig],
                  tags: dict[str, Any] | None = None, config: RunConfig | None = None) -> RunSpec:
    """A run `key` that continues `parent` (a run of the same grid) from its checkpoint at `epoch`, then trains
    the phases `then`. Its config is `config` (default: the parent's) with the parent's phases up to `epoch`
    as its prefix; the parent's config keeps that epoch's checkpoint (`train.keep_epochs`)."""
    if parent.config is None or parent.shared_from:
        raise RegistryError(f"continue_from: run {key!r} continues {parent.key!r}, a shared run; continue a run "
                            "of this study (or share the whole chain from its owner)")
    length = sum(p.epochs for p in parent.config.phases)
    if not 0 < epoch <= length:
        raise RegistryError(f"continue_from: run {key!r} continues {parent.key!r} at epoch {epoch:g}; the parent "
                            f"trains {length:g} epochs, so choose 0 < epoch <= {length:g}")
    keep = parent.config.train.keep_epochs
    if float(epoch) not in keep:
        keep.append(float(epoch))
    cfg = copy.deepcopy(config if config is not None else parent.config)
    cfg.train.keep_epochs = [] if config is None else cfg.train.keep_epochs
    cfg.init = InitConfig()
    cfg.phases = prefix_phases(parent.config, epoch) + [copy.deepcopy(p) for p in then]
    return RunSpec(key, cfg, tags=dict(tags or {}), parent=ParentRef(parent.key, float(epoch)))


def v_pretrain_then_u(scale: str, e_v_values: tuple[int, ...], u_epochs: Callable[[int], float]) -> list[RunSpec]:
    """O1's grid shape: one shared v-only run of max(E_v) epochs (checkpoints kept at each E_v), and per E_v a
    fine-tune that continues its checkpoint with `u_epochs(E_v)` epochs of u-only training (E_v = 0: u alone)."""
    parent_cfg = base_config(scale, shared_prefix=True)
    parent_cfg.phases = [v_only(max(e_v_values))]
    parent = RunSpec("v-pretrain", parent_cfg, tags={"role": "v-pretrain", "v_epochs": max(e_v_values)})
    runs = [parent]
    for e_v in e_v_values:
        tags = {"role": "fine-tune", "E_v": e_v, "E_u": u_epochs(e_v)}
        if e_v:
            runs.append(continue_from(parent, f"E_v={e_v}", e_v, [u_only(u_epochs(e_v))], tags))
        else:
            cfg = base_config(scale, shared_prefix=True)
            cfg.phases = [u_only(u_epochs(e_v))]
            runs.append(RunSpec(f"E_v={e_v}", cfg, tags=tags))
    return runs


# ----------------------------------------------------------------------------------------------------
# study description


@dataclass(frozen=True)
class ParentRef:
    """The run a child continues: its key in the same grid (Study.runs adds the seed suffix) and the epoch of
    the checkpoint the child starts from."""

    key: str
    epoch: float


@dataclass
class RunSpec:
    """One run of a grid: a key unique within the study, its config, the runs it waits for, analysis tags.
    `parent`: the run whose checkpoint it continues (built by `continue_from`), which it also waits for.

    `shared_from="<study>:<key>"` makes this grid point another study's run (see `shared`): Study.runs fills
    `config`, `hash` and `owner` (the study whose directory holds it) from that run."""

    key: str
    config: RunConfig | None
    depends_on: list[str] = field(default_factory=list)
    tags: dict[str, Any] = field(default_factory=dict)
    hash: str = ""  # filled by Study.runs: config_hash of the resolved config
    shared_from: str = ""
    owner: str = ""  # filled by Study.runs for a shared run: the study that trains it
    owner_key: str = ""  # ... and its key there (with the seed suffix)
    owner_tags: dict[str, Any] = field(default_factory=dict)
    parent: ParentRef | None = None


def shared(study: str, key: str, as_key: str, tags: dict[str, Any]) -> RunSpec:
    """A grid point that is run `key` of `study` (same scale and seed), trained once and read by both studies.

    Used where two studies' grids hold the same config (v-quality, convergence and k-schedule's k = 1 are runs
    of the main ablation): the owner's run carries the union of their evaluations. The run lives in the owner's
    directory, `<scale>/<study>/<hash>`; the launcher writes `<scale>/<this study>/<hash>/run.json` with this
    study's key and tags, beside links to the owner's files, so each study's results read the same."""
    return RunSpec(as_key, None, tags=dict(tags), shared_from=f"{study}:{key}")


@dataclass(frozen=True)
class Metric:
    """What a study measures. `kind`: distance (sw2 on toy data, fd_digits on digits, FID at paper scale),
    tas (task affinity matrix), epochs_to_target (epochs until the control's final distance is reached)."""

    description: str
    sampler: str = "u"  # u: few-step with u; v: Euler with v = u(z, t, t)
    nfe: tuple[int, ...] = (1,)
    kind: str = "distance"
    lower_is_better: bool = True

    def name(self, scale: str) -> str:
        """The eval.jsonl metric name at a scale."""
        if self.kind != "distance":
            return self.kind
        return {"smoke": "sw2", "cpu": "sw2", "digits": "fd_digits"}.get(scale, "fid")


COMPARISONS = ("trend", "better", "best", "threshold")


@dataclass(frozen=True)
class Finding:
    """The paper's claim and which direction of the metric counts as "holds".

    comparison: trend  - the metric moves in `direction` (increasing | decreasing) as tag `tag` grows;
                better - runs with tag value(s) `treatment` beat those with `control` (paired by seed);
                best   - tag value `treatment` gives the best metric of all values of `tag`;
                threshold - the metric as a share of its ceiling (noise-to-data) is below `treatment`."""

    claim: str
    holds_if: str
    comparison: str
    tag: str
    treatment: Any = None
    control: Any = None
    direction: str = "decreasing"

    def __post_init__(self) -> None:
        if self.comparison not in COMPARISONS:
            raise RegistryError(f"Finding.comparison={self.comparison!r}; allowed: {', '.join(COMPARISONS)}")
        if self.direction not in ("increasing", "decreasing"):
            raise RegistryError(f"Finding.direction={self.direction!r}; allowed: increasing, decreasing")


EXTRA_KINDS = ("cross-scale-gap", "cross-scale-match", "non-inferior", "stability")


@dataclass(frozen=True)
class ExtraFinding:
    """A further claim of the paper read off a study's runs, with its own verdict
    (dynamics.analysis.verdicts.extra_verdict). kind:
    cross-scale-gap   - params: arms (a, b), scales (s0, s1, ...): the gap metric(a) - metric(b) shrinks from s0
                        to every later scale (reads the stores of those scales together);
    cross-scale-match - params: treatment (scale, arm), control (scale, arm), margin: |treatment - control| is
                        within margin x control;
    non-inferior      - params: treatment {tag: value}, control {tag: value}, margin: treatment's metric is at
                        most control's + margin x the noise-to-data ceiling;
    stability         - params: phase_tag: the spread (std) of the metric over evaluations after epoch
                        <phase_tag>, and blow-ups (state diverged or a value above the ceiling), fall as the tag
                        grows.
    `tag` names the study tag that holds the arms. `not_applicable`: scale -> why no verdict there."""

    name: str
    claim: str
    holds_if: str
    kind: str
    tag: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    not_applicable: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in EXTRA_KINDS:
            raise RegistryError(f"ExtraFinding.kind={self.kind!r}; allowed: {', '.join(EXTRA_KINDS)}")


@dataclass(frozen=True)
class Reference:
    """Runs a study's verdict stands on, and how close to the data they must get for it to count.

    `runs`: tag values that select the reference runs (e.g. {"role": "v-pretrain"}); `bar`: the largest allowed
    share of the noise-to-data distance, value / ceiling, of their final `sampler`/`nfe` evaluation (mean over
    seeds, per grid point; a blown-up or diverged run counts as the ceiling). A study whose reference misses
    its bar is reported as "not in the learning regime" (DESIGN section 4)."""

    runs: dict[str, Any]
    bar: float
    sampler: str = "u"  # u: few-step with u; v: Euler with v = u(z, t, t)
    nfe: int = 1
    label: str = ""  # how the report names the runs; default: their tags

    def __post_init__(self) -> None:
        if not self.runs:
            raise RegistryError("Reference.runs must name at least one tag, e.g. {'method': 'vanilla'}")
        if not 0.0 < self.bar <= 1.0:
            raise RegistryError(f"Reference.bar={self.bar!r} must be a share of the noise-to-data distance in (0, 1]")
        if self.sampler not in ("u", "v"):
            raise RegistryError(f"Reference.sampler={self.sampler!r}; allowed: u, v")

    @property
    def name(self) -> str:
        return self.label or ",".join(f"{k}={v}" for k, v in self.runs.items())

    def describe(self) -> str:
        what = f"{self.nfe}-NFE {'v' if self.sampler == 'v' else 'u'}"
        return f"{self.name}: {what} <= {self.bar:.0%} of noise-to-data"


# The bars, one place: what a reference run must reach for a study's verdict to count (share of noise-to-data).
V_BAR = 0.10  # 32-NFE v of a run trained on v (the v-only parents, vanilla's v): the calibrated vanilla is at 8%
U_BAR = 0.20  # 1-NFE u of a full-length MeanFlow run (vanilla, k = 1, k = 0): the calibrated vanilla is at 10%
FINE_TUNE_BAR = 0.30  # 1-NFE u of O1's u-only fine-tunes, which never see the joint objective
SMALL_DT_V_BAR = 0.20  # 32-NFE v of O3's small-dt u-only warm-up: O2 says small dt builds v, not that it matches v-only


@dataclass
class Study:
    name: str
    question: str
    metric: Metric
    finding: Finding
    grid: Callable[[str], list[RunSpec]]
    seeds: dict[str, int] = field(default_factory=dict)  # per-scale overrides of SCALE_SETTINGS' seeds
    unsupported: dict[str, str] = field(default_factory=dict)  # scale -> why this study has no runs there
    notes: tuple[str, ...] = ()
    tasks: tuple[TaskSpec, ...] = ()  # TAS tasks (o3)
    task_inits: dict[str, str | None] = field(default_factory=dict)  # init label -> run key (None: random)
    reference: tuple[Reference, ...] = ()  # the learning-regime check: runs and bars the verdict stands on
    module: str = ""
    extra_findings: tuple[ExtraFinding, ...] = ()  # further claims with their own verdicts (issue 8.6)

    @property
    def paper_effect(self):
        """The paper's numbers for this study's comparison (experiments/paper.py), or None."""
        from .paper import paper_effect

        return paper_effect(self.name)

    def default_seeds(self, scale: str) -> int:
        return self.seeds.get(scale, check_scale(scale).seeds)

    def runs(self, scale: str, seeds: int | None = None, overrides: list[str] | None = None) -> list[RunSpec]:
        """Every run at `scale` for seeds 0 .. seeds-1, parents first, each with its resolved config and hash."""
        check_scale(scale)
        if scale in self.unsupported:
            return []
        n = self.default_seeds(scale) if seeds is None else seeds
        if n < 1:
            raise RegistryError(f"seeds={n} must be >= 1")
        out: list[RunSpec] = []
        for seed in range(n):
            out.extend(self._one_seed(scale, seed, overrides or []))
        return out

    def _one_seed(self, scale: str, seed: int, overrides: list[str]) -> list[RunSpec]:
        specs = self.grid(scale)
        keys = [s.key for s in specs]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise RegistryError(f"study {self.name}: duplicate run key {dupes[0]!r} at scale {scale}")
        suffix = f"/s{seed}"
        by_key: dict[str, RunSpec] = {}
        owners: dict[str, dict[str, RunSpec]] = {}
        for s in specs:
            if s.shared_from:
                by_key[s.key + suffix] = self._shared(s, scale, seed, overrides, owners)
                continue
            cfg = copy.deepcopy(s.config)
            if overrides:  # e.g. data.path=/datasets/in256_latents, applied to every run (and its hash)
                try:
                    cfg = apply_overrides(cfg, overrides)
                except ConfigError as exc:
                    raise RegistryError(f"study {self.name}, run {s.key}: {exc}") from None
            cfg.train.seed = seed
            cfg.scale = scale
            cfg.name = f"{self.name}/{s.key}{suffix}"
            if cfg.init.run_dir.startswith("@"):
                raise RegistryError(f"study {self.name}, run {s.key}: init.run_dir={cfg.init.run_dir!r}; a run of "
                                    "the grid is continued with continue_from(parent, key, epoch, then)")
            deps = list(s.depends_on) + ([s.parent.key] if s.parent else [])
            for d in deps:
                if d not in keys:
                    raise RegistryError(f"study {self.name}: run {s.key!r} depends on {d!r}, which is not in "
                                        f"the grid; keys: {', '.join(keys)}")
                if any(x.key == d and x.shared_from for x in specs):
                    raise RegistryError(f"study {self.name}: run {s.key!r} depends on {d!r}, a shared run; start "
                                        "from a run of this study (or share the whole chain from its owner)")
            tags = {**s.tags, "seed": seed}
            parent = ParentRef(s.parent.key + suffix, s.parent.epoch) if s.parent else None
            by_key[s.key + suffix] = RunSpec(s.key + suffix, cfg, [d + suffix for d in dict.fromkeys(deps)], tags,
                                             parent=parent)
        ordered = _topological(by_key, self.name)
        hashes: dict[str, str] = {}
        for spec in ordered:
            if spec.owner:
                continue
            cfg = spec.config
            if spec.parent is not None:  # the parent's directory relative to the results root, and its epoch
                cfg.init.run_dir = f"{scale}/{self.name}/{hashes[spec.parent.key]}"
                cfg.init.epoch = spec.parent.epoch
            try:
                cfg.validate()
            except ConfigError as exc:
                raise RegistryError(f"study {self.name}, run {spec.key}: {exc}") from None
            spec.hash = config_hash(cfg.to_dict())
            hashes[spec.key] = spec.hash
        return ordered

    def _shared(self, s: RunSpec, scale: str, seed: int, overrides: list[str],
                owners: dict[str, dict[str, RunSpec]]) -> RunSpec:
        """Resolve a `shared(...)` grid point to the owner study's run of the same seed."""
        study, _, key = s.shared_from.partition(":")
        if study == self.name:
            raise RegistryError(f"study {self.name}: run {s.key!r} is shared from its own study; use one run")
        if study not in owners:
            owner = get_study(study)
            owners[study] = {r.key: r for r in owner._one_seed(scale, seed, overrides)} if scale not in \
                owner.unsupported else {}
        run = owners[study].get(f"{key}/s{seed}")
        if run is None or run.owner:
            raise RegistryError(f"study {self.name}: run {s.key!r} is shared from {s.shared_from!r}, which is not a "
                                f"run of its own in study {study} at scale {scale}")
        if run.depends_on:
            raise RegistryError(f"study {self.name}: run {s.key!r} is shared from {s.shared_from!r}, which depends "
                                "on other runs; only a run without parents can be shared")
        return RunSpec(f"{s.key}/s{seed}", copy.deepcopy(run.config), [], {**s.tags, "seed": seed}, run.hash,
                       s.shared_from, owner=study, owner_key=run.key, owner_tags=dict(run.tags))

    def count(self, scale: str, seeds: int | None = None) -> int:
        return len(self.runs(scale, seeds))


def _topological(by_key: dict[str, RunSpec], study: str) -> list[RunSpec]:
    """Parents before children, otherwise the grid's own order."""
    out: list[RunSpec] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(key: str) -> None:
        if state.get(key) == 2:
            return
        if state.get(key) == 1:
            raise RegistryError(f"study {study}: dependency cycle through run {key!r}")
        state[key] = 1
        for d in by_key[key].depends_on:
            visit(d)
        state[key] = 2
        out.append(by_key[key])

    for key in by_key:
        visit(key)
    return out


# ----------------------------------------------------------------------------------------------------
# the registry

BUILTIN_MODULES = (
    "experiments.o1_v_first", "experiments.o1_fixed_budget", "experiments.o1_contaminated_v",
    "experiments.o2_interval_bins", "experiments.o3_task_affinity", "experiments.main",
    "experiments.k_schedule", "experiments.v_quality", "experiments.convergence",
    "experiments.cfg_robustness", "experiments.calibration",
)

_REGISTRY: dict[str, Study] = {}
_builtins_loaded = False


def register(study: Study | None = None, **fields: Any) -> Any:
    """Register a study. Either `register(Study(...))`, or as a decorator over a grid function:
    `@register(name=..., question=..., metric=..., finding=...)`, which returns the Study."""
    if study is not None:
        if fields:
            raise RegistryError("register: pass either a Study or keyword fields with a grid function, not both")
        return _add(study)

    def decorator(grid: Callable[[str], list[RunSpec]]) -> Study:
        try:
            made = Study(grid=grid, module=grid.__module__, **fields)
        except TypeError as exc:
            raise RegistryError(f"register: {exc}") from None
        return _add(made)

    return decorator


def _add(study: Study) -> Study:
    if not isinstance(study, Study):
        raise RegistryError(f"register: expected a Study, got {type(study).__name__}")
    if not study.module:
        study.module = getattr(study.grid, "__module__", "")
    old = _REGISTRY.get(study.name)
    if old is not None and old.module != study.module:
        raise RegistryError(f"study {study.name!r} is already registered by module {old.module}")
    unknown = sorted(set(study.unsupported) - set(SCALES))
    if unknown:
        raise RegistryError(f"study {study.name}: unsupported scale {unknown[0]!r}; scales: {', '.join(SCALES)}")
    _REGISTRY[study.name] = study
    return study


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)


def register_from_module(module: str) -> list[Study]:
    """Import a user's module (e.g. "my_lab.studies") so that its @register decorators run; its studies."""
    _load_builtins()
    before = dict(_REGISTRY)
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise RegistryError(f"register_from_module: cannot import {module!r} ({exc})") from None
    found = [s for s in _REGISTRY.values() if s.module == mod.__name__ or s.name not in before]
    if not found:
        raise RegistryError(f"module {module!r} registered no study; decorate a grid function with "
                            "@register(name=..., question=..., metric=..., finding=...)")
    return found


def get_study(name: str) -> Study:
    _load_builtins()
    if name not in _REGISTRY:
        raise RegistryError(f"unknown study {name!r}; registered: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def all_studies() -> list[Study]:
    """Built-in studies in DESIGN.md's order, then users' in registration order."""
    _load_builtins()
    order = {m: i for i, m in enumerate(BUILTIN_MODULES)}
    return sorted(_REGISTRY.values(), key=lambda s: order.get(s.module, len(order)))
