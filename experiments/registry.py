"""The study registry: the built-in studies and users' own, by name; and the one import for writing a study.

Users register their own studies the same way the built-in modules do, from their own module:

    from experiments.registry import Finding, Metric, RunSpec, base_config, joint, register

    @register(name="my-study", question="...", metric=Metric("1-NFE distance"), seeds=2,
              finding=Finding("...", holds_if="...", comparison="better", tag="arm",
                              treatment="new", control="vanilla"))
    def my_study(scale: str) -> list[RunSpec]:
        ...

and load it with `register_from_module("my_package.my_studies")` or `dynamics run --register ...`. Every field
is checked when the study registers; a bad one is refused in one line (RegistryError).

Where the parts live: scales.py (steps per epoch, seeds, `base_config`), grids.py (phases, `continue_from`,
`shared`), findings.py (Metric, Finding, ExtraFinding, Reference, the bars), study.py (Study, the grid point
`RunSpec` and the `ResolvedRun` it becomes), paper.py (the paper's method and numbers per study). This module
re-exports them, with the library's task vocabulary (TaskSpec, dt_bin, bin_label).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from dynamics.config import SCALES
from dynamics.meanflow.tasks import TaskSpec, bin_label, dt_bin

from .errors import RegistryError
from .findings import (
    COMPARISONS,
    EXTRA_KINDS,
    FINE_TUNE_BAR,
    SMALL_DT_V_BAR,
    U_BAR,
    V_BAR,
    ExtraFinding,
    Finding,
    Metric,
    Reference,
)
from .grids import continue_from, joint, prefix_phases, shared, u_only, v_only, v_pretrain_then_u
from .paper import PAPER_METHOD, paper_method
from .scales import (
    CONSTANT_LR_NOTE,
    CPU_STEPS_PER_EPOCH,
    LONG_RUN_STEPS_PER_EPOCH,
    NOT_AT_DIGITS,
    SCALE_SETTINGS,
    SINGLE_MODEL_SIZE,
    SMALL_SCALES_NA,
    TREND_SEEDS,
    ScaleSettings,
    base_config,
    check_scale,
    data_dim,
)
from .study import ParentRef, ResolvedRun, RunSpec, Study

__all__ = [
    "BUILTIN_MODULES", "COMPARISONS", "CONSTANT_LR_NOTE", "CPU_STEPS_PER_EPOCH", "EXTRA_KINDS", "FINE_TUNE_BAR",
    "LONG_RUN_STEPS_PER_EPOCH", "NOT_AT_DIGITS", "PAPER_METHOD", "SCALES", "SCALE_SETTINGS",
    "SINGLE_MODEL_SIZE", "SMALL_DT_V_BAR", "SMALL_SCALES_NA", "TREND_SEEDS", "U_BAR", "V_BAR", "ExtraFinding",
    "Finding", "Metric", "ParentRef", "Reference", "RegistryError", "ResolvedRun", "RunSpec", "ScaleSettings",
    "Study", "TaskSpec", "all_studies", "base_config", "bin_label", "check_scale", "continue_from", "data_dim",
    "dt_bin", "get_study", "joint", "paper_method", "prefix_phases", "register", "register_from_module",
    "shared", "u_only", "v_only", "v_pretrain_then_u",
]

BUILTIN_MODULES = (
    "experiments.o1_v_first", "experiments.o1_fixed_budget", "experiments.o1_contaminated_v",
    "experiments.o2_interval_bins", "experiments.o3_task_affinity", "experiments.main",
    "experiments.k_schedule", "experiments.v_quality", "experiments.convergence",
    "experiments.cfg_robustness", "experiments.calibration",
)
REQUIRED = ("name", "question", "metric", "finding")
FIELDS = tuple(f.name for f in fields(Study) if f.name not in ("grid", "module"))

_REGISTRY: dict[str, Study] = {}
_builtins_loaded = False


def register(study: Study | None = None, **given: Any) -> Any:
    """Register a study. Either `register(Study(...))`, or as a decorator over a grid function:
    `@register(name=..., question=..., metric=..., finding=...)`, which returns the Study."""
    if study is not None:
        if given:
            raise RegistryError("register: pass either a Study or keyword fields with a grid function, not both")
        if callable(study) and not isinstance(study, Study):
            raise RegistryError(f"register: {getattr(study, '__name__', study)!r} is decorated with a bare "
                                "@register; write @register(name=..., question=..., metric=..., finding=...)")
        return _add(study)
    name = given.get("name", "?")
    unknown = sorted(set(given) - set(FIELDS))
    if unknown:
        raise RegistryError(f"study {name!r}: register has no field {unknown[0]!r}; fields: {', '.join(FIELDS)}")
    missing = [f for f in REQUIRED if f not in given]
    if missing:
        raise RegistryError(f"study {name!r}: register needs {', '.join(missing)} (required: {', '.join(REQUIRED)})")

    def decorator(grid: Callable[[str], list[RunSpec]]) -> Study:
        return _add(Study(grid=grid, module=getattr(grid, "__module__", ""), **given))

    return decorator


def _add(study: Study) -> Study:
    if not isinstance(study, Study):
        raise RegistryError(f"register: expected a Study, got {type(study).__name__}")
    if not study.module:
        study.module = getattr(study.grid, "__module__", "")
    old = _REGISTRY.get(study.name)
    if old is not None and old.module != study.module:
        raise RegistryError(f"study {study.name!r} is already registered by module {old.module}")
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
    """The registered study `name` (the built-ins are loaded on first use)."""
    _load_builtins()
    if name not in _REGISTRY:
        raise RegistryError(f"unknown study {name!r}; registered: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def all_studies() -> list[Study]:
    """Built-in studies in BUILTIN_MODULES' order (the paper's), then users' in registration order."""
    _load_builtins()
    order = {m: i for i, m in enumerate(BUILTIN_MODULES)}
    return sorted(_REGISTRY.values(), key=lambda s: order.get(s.module, len(order)))
