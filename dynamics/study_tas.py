"""A study's TAS: every init of the study (its `task_inits`), per seed and step variant, into one table.

This is study-level orchestration, so it sits beside the launcher (it finds the inits' runs through the
launch plan) and above the library: `dynamics.affinity` measures TAS between tasks on one set of weights
and knows nothing of studies.

Each (seed, init) unit is saved when it finishes (`tas_units/` beside tas.csv, keyed by everything that
decides its numbers), so a killed or repeated `dynamics reproduce` measures only the units it lacks, as
finished runs skip.
"""

from __future__ import annotations

import copy
import multiprocessing
import pickle
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

from experiments.registry import Study

from .affinity import DEFAULT_BATCHES, DEFAULT_SETS, AffinityError, samples_for, task_affinity
from .config import InitConfig, RunConfig
from .launch import plan
from .results import atomic_write_bytes, config_hash

TAS_FILE = "tas.csv"
UNITS_DIR = "tas_units"  # one pickled list of frames per finished (seed, init) unit

# O3's measures: the verdict is computed under each; the authors' TAS (Go et al. 2023) is the headline, the
# lookahead steps and the per-batch cosine are its robustness checks.
STUDY_VARIANTS: dict[str, dict] = {
    "tas: accumulated-gradient cosine": dict(method="accumulated"),
    "a: grad step at run lr": dict(method="lookahead", optimizer="sgd"),
    "b: grad step of equal length": dict(method="lookahead", optimizer="sgd-length"),
    "c: run's Adam state": dict(method="lookahead", optimizer="adam"),
    "d: gradient cosine": dict(method="cosine"),
}
DEFAULT_VARIANT = "tas: accumulated-gradient cosine"
# Batches per value of the per-batch variants (lookahead, cosine) where the library's 16 would not fit a scale's
# reproduction: at digits one measurement (5 tasks, batch 256, tiny DiT) took ~100 CPU-seconds at 16 batches and
# O3 makes 63 of them (~50 minutes on 2 cores). The accumulated TAS measures one set of the scale's N samples
# (dynamics.affinity.SAMPLES_BY_SCALE).
STUDY_BATCHES = {"digits": 8}


def variant_settings(scale: str, variants: Sequence[str], batches: int | None = None, samples: int | None = None,
                     **kwargs) -> dict[str, dict]:
    """Each variant's task_affinity settings at a scale: its method (and step), its batches (given, else one
    sample set for the accumulated TAS and the scale's STUDY_BATCHES or 16 for a per-batch method), its N."""
    out = {}
    for variant in variants:
        settings = {**kwargs, **STUDY_VARIANTS[variant]}
        per_batch = settings["method"] != "accumulated"
        settings["batches"] = batches or (STUDY_BATCHES.get(scale, DEFAULT_BATCHES) if per_batch else DEFAULT_SETS)
        if not per_batch:
            settings["samples"] = samples or samples_for(scale)
        out[variant] = settings
    return out


def _unit_key(init: str, seed: int, source: str | Path | RunConfig, tasks: list, variants: dict[str, dict]) -> str:
    """What decides a unit's numbers: the weights (a run directory's name is its config hash; a fresh init's
    config), the tasks and every variant's settings (method, step, batches, N; not `progress`)."""
    weights = source.to_dict() if isinstance(source, RunConfig) else Path(source).name
    settings = {v: {k: x for k, x in kw.items() if k != "progress"} for v, kw in variants.items()}
    return config_hash(dict(init=init, seed=seed, weights=weights, tasks=[str(t) for t in tasks],
                            variants=settings), length=16)


def _load_unit(path: Path) -> list[pd.DataFrame] | None:
    """A saved unit, or None where it is absent or unreadable (then it is measured again)."""
    try:
        return pickle.loads(path.read_bytes())
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError):
        return None


def _unit(init: str, seed: int, source: str | Path | RunConfig, tasks: list, variants: dict[str, dict],
          save_to: Path | None = None) -> list[pd.DataFrame]:
    """Every variant's TAS on one init's weights for one seed (each lookahead variant with the target
    recomputed and held), saved to `save_to` (atomically) as soon as it is measured."""
    parts = []
    for variant, settings in variants.items():
        modes = (("recomputed", True), ("held", False)) if settings["method"] == "lookahead" else (("-", True),)
        for mode, recompute in modes:
            part = task_affinity(source, tasks, seed=seed, recompute_target=recompute, **settings)
            part.insert(0, "init", init)
            part.insert(1, "seed", seed)
            part.insert(2, "variant", variant)
            part.insert(3, "target_mode", mode)
            parts.append(part.assign(**{k: v for k, v in part.attrs.items() if k not in part.columns}))
    if save_to is not None:
        atomic_write_bytes(save_to, pickle.dumps(parts))
    return parts


def _unit_threaded(unit: tuple) -> list[pd.DataFrame]:
    import torch

    torch.set_num_threads(1)
    return _unit(*unit)


def study_sources(study: Study, scale: str, root: str | Path = "results", seeds: int | None = None,
                  overrides: list[str] | None = None) -> list[tuple[str, int, str | Path | RunConfig]]:
    """(init, seed, weights) of every init of a study (its `task_inits`) and seed. The random init (None) is a
    fresh init of the study's config with that seed (its phases replaced by one joint phase, no parent run); the
    other inits are their runs' final checkpoints, found through the launch plan (with the same key=value
    `overrides` as `dynamics run`); an AffinityError names a run that is missing or unfinished."""
    if not study.tasks or not study.task_inits:
        raise AffinityError(f"study {study.name} declares no TAS tasks and inits (Study.tasks, Study.task_inits)")
    runs = plan([study], scale, root, seeds, overrides=overrides)
    if not runs:
        raise AffinityError(f"study {study.name} has no runs at scale {scale}")
    by_key = {r.spec.key: r for r in runs}
    n_seeds = study.default_seeds(scale) if seeds is None else seeds
    sources: list[tuple[str, int, str | Path | RunConfig]] = []
    for seed in range(n_seeds):
        for init, key in study.task_inits.items():
            if key is None:
                cfg = copy.deepcopy(next(r for r in runs if r.spec.tags.get("seed") == seed).config)
                cfg.phases, cfg.init = [], InitConfig()
                cfg.train.seed = seed
                cfg.name = f"{study.name}/init={init}/s{seed}"
                sources.append((init, seed, cfg))
                continue
            run = by_key.get(f"{key}/s{seed}")
            if run is None:
                raise AffinityError(f"study {study.name}: init {init!r} names run {key!r}, not in the grid")
            if run.state != "done":
                raise AffinityError(f"study {study.name}: init {init!r} (run {run.spec.key}) is {run.state} in "
                                    f"{run.run_dir}; run `dynamics run {study.name} --scale {scale}` first")
            sources.append((init, seed, run.run_dir))
    return sources


def study_affinity(study: Study, scale: str, root: str | Path = "results", seeds: int | None = None,
                   overrides: list[str] | None = None, variants: Sequence[str] | None = None, jobs: int = 1,
                   **kwargs) -> pd.DataFrame:
    """TAS of every init of a study (`study_sources`) for each seed, written to <root>/<scale>/<study>/tas.csv.

    Every variant of STUDY_VARIANTS (or those named) is measured; each lookahead variant twice, with the target
    recomputed at theta' and held at theta (column `target_mode`; `-` for the others). Long format: init, seed,
    variant, target_mode, source, target, method, value (the mean over batches or sample sets), std, n, then
    the settings (weights, step, lr, samples, ...). `kwargs` (batches, samples, device, ...) apply to every
    variant (`variant_settings`: batches None or absent, one sample set for the accumulated TAS and the scale's
    STUDY_BATCHES, else 16, for the per-batch ones; samples None, the scale's N); method / optimizer /
    recompute_target are the variants' own. `jobs` > 1 measures the (seed, init) units in that many processes at
    once (the result is the same: each unit's draws are seeded)."""
    names = list(STUDY_VARIANTS) if variants is None else list(variants)
    unknown = [v for v in names if v not in STUDY_VARIANTS]
    if unknown:
        raise AffinityError(f"variant {unknown[0]!r} is not known; choose from {', '.join(STUDY_VARIANTS)}")
    for key in ("method", "optimizer", "recompute_target"):
        kwargs.pop(key, None)
    settings = variant_settings(scale, names, **kwargs)
    # one (seed, init) each: its weights, then every variant on them
    units = [(init, seed, source, list(study.tasks), settings)
             for init, seed, source in study_sources(study, scale, root, seeds, overrides)]
    units_dir = Path(root) / scale / study.name / UNITS_DIR
    saved: dict[int, list[pd.DataFrame]] = {}
    todo = []
    for i, unit in enumerate(units):
        path = units_dir / f"{unit[0]}-s{unit[1]}-{_unit_key(*unit)}.pkl"
        found = _load_unit(path)
        if found is None:
            todo.append((i, (*unit, path)))
        else:
            saved[i] = found
    print(f"TAS {study.name} ({scale}): {len(units)} (init, seed) units, {len(saved)} saved, {len(todo)} to measure",
          file=sys.stderr)
    if jobs > 1 and len(todo) > 1:  # one process per unit, one torch thread each (spawned: own torch state)
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            saved.update(zip([i for i, _ in todo], pool.map(_unit_threaded, [u for _, u in todo])))
    else:
        saved.update((i, _unit(*unit)) for i, unit in todo)
    parts = [part for i in range(len(units)) for part in saved[i]]
    frame = pd.concat(parts, ignore_index=True).rename(columns={"mean": "value"})
    frame.attrs = {k: v for k, v in parts[0].attrs.items() if k not in ("weights", "step", "seed")}
    atomic_write_bytes(Path(root) / scale / study.name / TAS_FILE, frame.to_csv(index=False).encode())
    return frame
