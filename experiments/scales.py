"""Scales: how many optimiser steps a paper epoch is at each scale, and the preset a study's runs start from.

Budgets are written in the paper's epochs (`phases=[v 5 ep, u 60 ep]`); each scale says how many optimiser
steps an epoch is (`SCALE_SETTINGS`), so a grid reads the same at every scale. How the cpu and digits numbers
were sized: docs/reproduction-cpu.md and docs/reproduction-digits.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dynamics.config import SCALES, RunConfig, preset

from .errors import RegistryError


@dataclass(frozen=True)
class ScaleSettings:
    """How one scale runs the paper's epoch budgets."""

    steps_per_epoch: int  # optimiser steps per paper epoch (train.steps_per_epoch)
    seeds: int  # default seeds per grid point
    warmup_steps: int | None = None  # None: the preset's
    eval_samples: int | None = None  # None: the preset's eval.num_samples
    ema_decay: float | None = None  # None: the preset's train.ema_decay
    eval_metrics: tuple[str, ...] | None = None  # None: the preset's eval.metrics
    class_conditional: bool = False
    note: str = ""


# cpu: 30 steps (batch 1024) per epoch, so that the binding reference (the 40-epoch v-only parent of O2, O3 and
# O1-fixed-budget: 1,200 steps) reaches its 10% bar and the reproduction fits 45 minutes on 2 cores.
CPU_STEPS_PER_EPOCH = 30
IMAGENET_EPOCH = 1281167 // 256  # ImageNet's real epoch at batch 256
SCALE_SETTINGS: dict[str, ScaleSettings] = {
    # smoke: one epoch is one step, so every study runs in seconds
    "smoke": ScaleSettings(1, 1, warmup_steps=5, note="1 step per epoch: a 240-epoch run is 240 steps"),
    # cpu: EMA 0.99 is a 100-step average, short next to the shortest run (1,200 steps); 4,096 eval samples put
    # the metric's floor at 5.7% of the ceiling, under the 10% bar; sliced W2 only (energy distance is O(n^2))
    "cpu": ScaleSettings(CPU_STEPS_PER_EPOCH, 3, warmup_steps=60, eval_samples=4096, ema_decay=0.99,
                         eval_metrics=("sw2",),
                         note=f"{CPU_STEPS_PER_EPOCH} steps (batch 1024) per epoch; warm-up 60 steps; EMA 0.99; "
                              "4096 eval samples, sliced W2 only"),
    # digits: 20 steps per epoch puts the 40-epoch v-only parent (800 steps) at 32-NFE v FD 5.9% of the noise
    # distance, under its 10% bar; the preset clips gradients at 1 (u-only training from scratch: presets._digits)
    "digits": ScaleSettings(20, 3, warmup_steps=100, class_conditional=True,
                            note="20 steps (batch 256) per epoch; warm-up 100 steps; EMA 0.99 and gradient "
                                 "clipping at 1 from the preset"),
    "b4": ScaleSettings(IMAGENET_EPOCH, 1, class_conditional=True, note="ImageNet epochs at batch 256"),
    "m2": ScaleSettings(IMAGENET_EPOCH, 1, class_conditional=True, note="ImageNet epochs at batch 256"),
    "l2": ScaleSettings(IMAGENET_EPOCH, 1, class_conditional=True, note="ImageNet epochs at batch 256"),
    "xl2": ScaleSettings(IMAGENET_EPOCH, 1, class_conditional=True, note="ImageNet epochs at batch 256"),
}

# Seeds of the trend studies (O1, O2, contamination) at cpu and digits: their verdict is a regression over
# grid points x seeds, with ample degrees of freedom at 2 seeds; the paired comparisons keep the scale's 3
# (2 pairs leave one degree of freedom: t = 12.7 for a 95% interval).
TREND_SEEDS = {"cpu": 2, "digits": 2}

# Steps per epoch of the 240-epoch joint studies (main, and k-schedule) where the scale's own would not fit its
# time budget: cpu 10 (2,400 steps; vanilla's 1-NFE at 11.8% of the noise distance, bar 20%), digits 5
# (1,200 steps; vanilla at 5-13%). Their epochs, and every schedule inside them, still read as the paper's.
LONG_RUN_STEPS_PER_EPOCH = {"cpu": 10, "digits": 5}

CONSTANT_LR_NOTE = ("shared prefixes: every run of this study uses train.lr_schedule=constant (warm-up kept), so a "
                    "fine-tune inherits its parent's prefix exactly (a cosine decay would depend on each run's length)")

SINGLE_MODEL_SIZE = ("compares model sizes (B/4 .. XL/2 stores read together); this scale trains one model size, "
                     "and a width sweep of the toy MLP / tiny DiT would not be an honest analogue of DiT scaling")
SMALL_SCALES_NA = {s: SINGLE_MODEL_SIZE for s in ("smoke", "cpu", "digits")}
# The digits reproduction keeps to O1 (v-first, contaminated v), O2, O3 and main: 3 seeds in ~3 hours on 2 cores.
NOT_AT_DIGITS = {"digits": "not run at digits scale (its reproduction keeps to O1 v-first, contaminated v, O2, O3 and "
                           "main within ~3 h on 2 cores); run it at cpu or a cluster scale"}


def check_scale(scale: str) -> ScaleSettings:
    """The settings of a known scale; a RegistryError naming the scales otherwise."""
    if scale not in SCALE_SETTINGS:
        raise RegistryError(f"scale={scale!r} is not known; choose one of {', '.join(SCALES)}")
    return SCALE_SETTINGS[scale]


def data_dim(cfg: RunConfig) -> int:
    """Dimensions of one sample of the config's data: 2 (toy), 64 (8x8 digits), 4096 (4 x 32 x 32 latents)."""
    return {"digits": 64, "imagenet_latents": 4096}.get(cfg.data.name, 2)


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
