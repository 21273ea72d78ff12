"""A study's TAS: every init of the study (its `task_inits`), per seed and step variant, into one table.

This is study-level orchestration, so it sits beside the launcher (it finds the inits' runs through the
launch plan) and above the library: `dynamics.affinity` measures TAS between tasks on one set of weights
and knows nothing of studies.
"""

from __future__ import annotations

import copy
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

from experiments.registry import Study

from .affinity import DEFAULT_BATCHES, AffinityError, task_affinity
from .config import InitConfig, RunConfig
from .launch import plan
from .results import atomic_write_bytes

TAS_FILE = "tas.csv"

# O3's step variants (issue 8.5): the verdict is computed under each; `b` is the headline.
STUDY_VARIANTS: dict[str, dict] = {
    "a: grad step at run lr": dict(method="lookahead", optimizer="sgd"),
    "b: grad step of equal length": dict(method="lookahead", optimizer="sgd-length"),
    "c: run's Adam state": dict(method="lookahead", optimizer="adam"),
    "d: gradient cosine": dict(method="cosine"),
}
DEFAULT_VARIANT = "b: grad step of equal length"
# Batches per TAS value where the library's 16 would not fit a scale's reproduction: at digits one measurement (5
# tasks, batch 256, tiny DiT) took ~100 CPU-seconds at 16 batches and O3 makes 63 of them (~50 minutes on 2 cores).
STUDY_BATCHES = {"digits": 8}


def _unit(init: str, seed: int, source: str | Path | RunConfig, tasks: list, variants: list[str],
          kwargs: dict) -> list[pd.DataFrame]:
    """Every variant's TAS on one init's weights for one seed (each lookahead variant with the target
    recomputed and held)."""
    parts = []
    for variant in variants:
        settings = STUDY_VARIANTS[variant]
        modes = (("recomputed", True), ("held", False)) if settings["method"] == "lookahead" else (("-", True),)
        for mode, recompute in modes:
            part = task_affinity(source, tasks, seed=seed, recompute_target=recompute, **settings, **kwargs)
            part.insert(0, "init", init)
            part.insert(1, "seed", seed)
            part.insert(2, "variant", variant)
            part.insert(3, "target_mode", mode)
            parts.append(part.assign(**{k: v for k, v in part.attrs.items() if k not in part.columns}))
    return parts


def _unit_threaded(unit: tuple) -> list[pd.DataFrame]:
    import torch

    torch.set_num_threads(1)
    return _unit(*unit)


def study_affinity(study: Study, scale: str, root: str | Path = "results", seeds: int | None = None,
                   overrides: list[str] | None = None, variants: Sequence[str] | None = None, jobs: int = 1,
                   **kwargs) -> pd.DataFrame:
    """TAS of every init of a study (its `task_inits`) for each seed, written to <root>/<scale>/<study>/tas.csv.

    The random init (None) is a fresh init of the study's config with that seed (its phases replaced by one
    joint phase, no parent run); the other inits are their runs' final checkpoints, found through the launch
    plan (with the same key=value `overrides` as `dynamics run`). Every variant of STUDY_VARIANTS (or those
    named) is measured; each lookahead variant twice, with the target recomputed at theta' and held at theta
    (column `target_mode`). Long format: init, seed, variant, target_mode, source, target, method, value (the
    mean over batches), std, n, then the settings (weights, step, lr, ...). `kwargs` (batches, device, ...)
    apply to every variant (batches None or absent: the scale's STUDY_BATCHES, else 16); method / optimizer /
    recompute_target are the variants' own. `jobs` > 1 measures the (seed, init) units in that many processes at
    once (the result is the same: each unit's draws are seeded)."""
    if not study.tasks or not study.task_inits:
        raise AffinityError(f"study {study.name} declares no TAS tasks and inits (Study.tasks, Study.task_inits)")
    names = list(STUDY_VARIANTS) if variants is None else list(variants)
    unknown = [v for v in names if v not in STUDY_VARIANTS]
    if unknown:
        raise AffinityError(f"variant {unknown[0]!r} is not known; choose from {', '.join(STUDY_VARIANTS)}")
    for key in ("method", "optimizer", "recompute_target"):
        kwargs.pop(key, None)
    if kwargs.get("batches") is None:
        kwargs["batches"] = STUDY_BATCHES.get(scale, DEFAULT_BATCHES)
    runs = plan([study], scale, root, seeds, overrides=overrides)
    if not runs:
        raise AffinityError(f"study {study.name} has no runs at scale {scale}")
    by_key = {r.spec.key: r for r in runs}
    n_seeds = study.default_seeds(scale) if seeds is None else seeds
    units = []  # one (seed, init) each: its weights, then every variant on them
    for seed in range(n_seeds):
        for init, key in study.task_inits.items():
            if key is None:
                cfg = copy.deepcopy(next(r for r in runs if r.spec.tags.get("seed") == seed).config)
                cfg.phases, cfg.init = [], InitConfig()
                cfg.train.seed = seed
                cfg.name = f"{study.name}/init={init}/s{seed}"
                source: str | Path | RunConfig = cfg
            else:
                run = by_key.get(f"{key}/s{seed}")
                if run is None:
                    raise AffinityError(f"study {study.name}: init {init!r} names run {key!r}, not in the grid")
                if run.state != "done":
                    raise AffinityError(f"study {study.name}: init {init!r} (run {run.spec.key}) is {run.state} in "
                                        f"{run.run_dir}; run `dynamics run {study.name} --scale {scale}` first")
                source = run.run_dir
            units.append((init, seed, source, list(study.tasks), names, kwargs))
    if jobs > 1:  # one process per unit, one torch thread each (spawned: the parent's torch state stays its own)
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            parts = [part for unit in pool.map(_unit_threaded, units) for part in unit]
    else:
        parts = [part for unit in units for part in _unit(*unit)]
    frame = pd.concat(parts, ignore_index=True).rename(columns={"mean": "value"})
    frame.attrs = {k: v for k, v in parts[0].attrs.items() if k not in ("weights", "step", "seed")}
    atomic_write_bytes(Path(root) / scale / study.name / TAS_FILE, frame.to_csv(index=False).encode())
    return frame
