"""The cost model: steps per second per scale (built-in or measured on a GPU), device seconds of a run, and
the one-line summary of a plan's cost."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError, RunConfig, phase_boundaries
from .plan import TO_EXECUTE, PlannedRun

CLUSTER_SCALES = ("b4", "m2", "l2", "xl2")


# ----------------------------------------------------------------------------------------------------
# cost estimates


@dataclass(frozen=True)
class StepRate:
    steps_per_s: float  # joint-MeanFlow optimiser steps per second of one run
    device: str
    eval_s: float  # seconds per evaluation in eval.jsonl (0 where FID is computed separately)
    source: str
    origin: str = "built-in figure in dynamics/launch/cost.py STEP_RATES"  # where the figure comes from


# Small scales: measured with `python benchmarks/registry_scale.py --step-rates` (one torch thread per run) on
# this project's 2-core AMD EPYC machine. cpu: two copies at once, as `make reproduce` runs them on 2 cores, on an
# otherwise idle machine gave 53 joint steps/s for vanilla, 46 for DTD + L_u, 48 for MinSNR + L_u, 65 v-only and
# 35 u-only, and 0.84 s per 4,096-sample evaluation (sliced W2 with the reference's projections sorted once; a
# run's first evaluation also computes floor and ceiling, ~0.5 s, counted in RUN_OVERHEAD_S). A whole reproduction
# sustains less: its runs averaged 28-46 joint-equivalent steps/s (the short measurement runs at a higher clock than
# 45 minutes of both cores busy), so the table keeps 40, with PHASE_COST below.
# Cluster scales: GPU time of one run on ONE H100 (bf16, batch 256); the B/4 figure is an estimate from peers'
# MeanFlow reports (3-4 it/s), the others scale it by DiT forward GFLOPs (B/4 5.56, L/2 80.7, XL/2 118.6 from
# the DiT paper; M/2 ~53.8 = 16/24 of L/2). GFLOP scaling is likely pessimistic for the larger models, which
# use the GPU better than B/4's 64 tokens do. Evaluation (FID-50K) is not included at cluster scales.
STEP_RATES: dict[str, StepRate] = {
    "smoke": StepRate(350.0, "1 CPU thread", 0.12, "measured 390 alone, batch 128 MLP 64x2"),
    "cpu": StepRate(40.0, "1 CPU thread", 0.9, "sustained in a full reproduction, 2 runs at once on 2 cores, "
                                                "batch 1024 MLP 256x3; 4096 eval samples, sw2"),
    "digits": StepRate(3.6, "1 CPU thread", 5.0, "measured on a 2-core Intel Xeon at 2.1 GHz, 2 runs at once (3.9 "
                                                  "alone), batch 256 tiny DiT; ~4 s per 2,000-sample evaluation"),
    "b4": StepRate(3.5, "1 H100", 0.0, "estimate: peers' reports, DiT-B/4 MeanFlow 3-4 it/s at batch 256 bf16"),
    "m2": StepRate(3.5 * 5.56 / 53.8, "1 H100", 0.0, "estimate: B/4's 3.5 it/s x GFLOPs 5.56/53.8"),
    "l2": StepRate(3.5 * 5.56 / 80.7, "1 H100", 0.0, "estimate: B/4's 3.5 it/s x GFLOPs 5.56/80.7"),
    "xl2": StepRate(3.5 * 5.56 / 118.6, "1 H100", 0.0, "estimate: B/4's 3.5 it/s x GFLOPs 5.56/118.6"),
}
# Rates measured on a GPU by `python benchmarks/gpu_check.py --calibrate` replace the built-in figures above:
# {"<scale>": {"steps_per_s", "device", "img_per_s", "batch", "measured", "torch", "cuda"}}. A cluster scale
# without its own measurement scales a measured b4 rate by the DiT forward GFLOPs, as the estimates do.
MEASURED_RATES_FILE = Path(__file__).resolve().parents[1] / "measured_rates.json"
DIT_GFLOPS = {"b4": 5.56, "m2": 53.8, "l2": 80.7, "xl2": 118.6}


_MEASURED_CACHE: dict[tuple[str, int], dict] = {}


def _measured_rates(path: Path) -> dict:
    """The file's {scale: rate entry}, read once per modification (a dry run estimates every run of a grid)."""
    try:
        key = (str(path), path.stat().st_mtime_ns)
    except FileNotFoundError:
        return {}
    if key in _MEASURED_CACHE:
        return _MEASURED_CACHE[key]
    try:
        data = json.loads(path.read_text())
        _MEASURED_CACHE[key] = {k: dict(v) for k, v in data.items()}
        return _MEASURED_CACHE[key]
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: not a measured-rates file ({exc}); rewrite it with "
                          f"`python benchmarks/gpu_check.py --calibrate` or delete it") from None


def step_rate(scale: str, path: Path | None = None) -> StepRate:
    """The rate the cost model uses for `scale`: measured (MEASURED_RATES_FILE) where it holds the scale or, for
    a cluster scale, a measured b4 scaled by GFLOPs; else the built-in STEP_RATES figure."""
    path = MEASURED_RATES_FILE if path is None else Path(path)
    measured = _measured_rates(path)
    base = STEP_RATES[scale]
    origin = f"measured by benchmarks/gpu_check.py --calibrate ({path.name})"
    if scale in measured:
        m = measured[scale]
        return StepRate(float(m["steps_per_s"]), str(m.get("device", "1 GPU")), base.eval_s,
                        f"{m.get('device', '?')}, batch {m.get('batch', '?')}, {m.get('measured', '?')}", origin)
    if scale in DIT_GFLOPS and "b4" in measured:
        b4 = step_rate("b4", path)
        return StepRate(b4.steps_per_s * DIT_GFLOPS["b4"] / DIT_GFLOPS[scale], b4.device, base.eval_s,
                        f"B/4's measured {b4.steps_per_s:.2f} it/s x GFLOPs {DIT_GFLOPS['b4']}/{DIT_GFLOPS[scale]}",
                        origin)
    return base


# Relative cost of one step by the phase's loss terms, measured at cpu scale with two runs at once (53 joint / 65
# v-only / 35 u-only steps/s): u-only puts every row through the JVP, v-only none.
PHASE_COST = {"both": 1.0, "v": 0.8, "u": 1.5}
# Per small-scale run: python and torch import (1.2 s), the trainer's set-up (1 s, mostly torch.optim.Adam
# importing torch._dynamo), submitit's controller process, and at cpu the first evaluation's floor and ceiling;
# measured 2.6 s alone, 4 s under load.
RUN_OVERHEAD_S = 3.5


def estimate_seconds(cfg: RunConfig, start_step: int) -> float:
    """Device seconds to train `cfg` from `start_step` to its end, with its evaluations."""
    rate = step_rate(cfg.scale)
    bounds = phase_boundaries(cfg)
    seconds = 0.0
    for i, phase in enumerate(cfg.resolved_phases()):
        steps = bounds[i + 1] - max(bounds[i], start_step)
        if steps > 0:
            seconds += steps * PHASE_COST[phase.terms] / rate.steps_per_s
    if cfg.scale in CLUSTER_SCALES:
        return seconds
    every = round(cfg.eval.every_epochs * cfg.train.steps_per_epoch)
    total = bounds[-1]
    evals = 1
    if every > 0:
        evals += (total - 1) // every - start_step // every + (1 if start_step == 0 else 0)
    return seconds + evals * rate.eval_s + RUN_OVERHEAD_S



def _fmt_minutes(seconds: float) -> str:
    return f"{seconds / 60:,.1f}"


def cost_summary(runs: list[PlannedRun], jobs: int) -> str:
    todo = [r for r in runs if r.action in TO_EXECUTE]
    if not runs:
        return "nothing to estimate"
    scale = runs[0].config.scale
    rate = step_rate(scale)
    seconds = sum(estimate_seconds(r.config, r.start_step) for r in todo)
    steps = sum(r.total_steps - r.start_step for r in todo)
    if scale in CLUSTER_SCALES:
        return (f"{len(todo)} of {len(runs)} runs to train, {steps:,} steps: about {seconds / 3600:,.0f} GPU-hours "
                f"({rate.device}: {rate.steps_per_s:.2f} joint steps/s per GPU at batch 256, ideal data-parallel "
                f"scaling; {rate.origin}: {rate.source})")
    return (f"{len(todo)} of {len(runs)} runs to train, {steps:,} steps: about {_fmt_minutes(seconds)} CPU-minutes, "
            f"{_fmt_minutes(seconds / max(1, jobs))} min wall with {jobs} runs at once "
            f"({rate.steps_per_s:g} steps/s per run on {rate.device}, {rate.origin}: {rate.source})")
