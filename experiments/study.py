"""A study: a named grid of runs with its metric and the paper finding it tests, and how its runs resolve.

A study is data (question, metric, finding, seeds, notes) plus one function `grid(scale) -> list[RunSpec]`
that lists the grid points of ONE seed at one scale. Two types keep what a study writes apart from what it
becomes:

- `RunSpec`, a grid point as the study writes it: a key unique in the grid, a config, tags, the runs it waits
  for, and where it comes from (`parent`, the checkpoint it continues; `shared_from`, another study's run);
- `ResolvedRun`, what `Study.runs(scale, seeds)` makes of it for one seed: the config with the seed, scale,
  name, overrides and the parent's directory filled in, its hash (the run's directory name), the key with
  its seed suffix (`E_v=5/s0`), and for a shared run the study that owns it.

A child's `init.run_dir` names its parent's directory relative to the results root, `<scale>/<study>/<parent
hash>`, so its hash changes with the parent's config but not with where results live; the launcher makes
the path absolute when the run starts (`dynamics.launch.absolute_init`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dynamics.config import SCALES, ConfigError, RunConfig, apply_overrides
from dynamics.meanflow.tasks import TaskSpec
from dynamics.results import config_hash

from .errors import RegistryError, refuse
from .findings import ExtraFinding, Finding, Metric, Reference
from .scales import check_scale

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a study name is a directory name and the prefix of run ids


@dataclass(frozen=True)
class ParentRef:
    """The run a child continues: its key in the same grid and the epoch of the checkpoint it starts from."""

    key: str
    epoch: float


@dataclass
class RunSpec:
    """A grid point, as a study's grid writes it: a key unique within the grid, its config, the runs it waits
    for, its analysis tags. `parent`: the run whose checkpoint it continues (built by `grids.continue_from`),
    which it also waits for. `shared_from="<study>:<key>"` (built by `grids.shared`) makes it another study's
    run; its config is then None."""

    key: str
    config: RunConfig | None
    depends_on: list[str] = field(default_factory=list)
    tags: dict[str, Any] = field(default_factory=dict)
    shared_from: str = ""
    parent: ParentRef | None = None


@dataclass(frozen=True)
class ResolvedRun:
    """A grid point resolved for one seed at one scale (`Study.runs`): what the launcher trains and the results
    store names. Keys (its own, `depends_on`, `parent.key`) carry the seed suffix, `/s<seed>`; `tags` are the
    grid point's plus `seed`. A shared run's `owner` is the study whose directory holds it, `owner_key` and
    `owner_tags` its key and tags there; `hash` is the owner's."""

    key: str
    config: RunConfig
    hash: str  # config_hash of `config`: the run's directory name
    seed: int
    depends_on: list[str] = field(default_factory=list)
    tags: dict[str, Any] = field(default_factory=dict)
    parent: ParentRef | None = None
    shared_from: str = ""
    owner: str = ""
    owner_key: str = ""
    owner_tags: dict[str, Any] = field(default_factory=dict)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _tuple(value: Any, kind: type) -> Any:
    """One value or a list, as a tuple; anything else as it is (the check refuses it)."""
    return (value,) if isinstance(value, kind) else tuple(value) if isinstance(value, list) else value


@dataclass
class Study:
    """A registered study. `seeds` may be an int (every scale) or {scale: n} (those scales; the others use
    SCALE_SETTINGS' seeds); every field is checked on construction, refused in one line (RegistryError)."""

    name: str
    question: str
    metric: Metric
    finding: Finding
    grid: Callable[[str], list[RunSpec]]
    seeds: dict[str, int] = field(default_factory=dict)
    unsupported: dict[str, str] = field(default_factory=dict)  # scale -> why this study has no runs there
    notes: tuple[str, ...] = ()
    tasks: tuple[TaskSpec, ...] = ()  # TAS tasks (o3)
    task_inits: dict[str, str | None] = field(default_factory=dict)  # init label -> run key (None: random)
    reference: tuple[Reference, ...] = ()  # the learning-regime check: runs and bars the verdict stands on
    module: str = ""
    extra_findings: tuple[ExtraFinding, ...] = ()  # further claims with their own verdicts

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME.fullmatch(self.name):
            raise refuse(str(self.name), "name", self.name, "give letters, digits, '.', '_' or '-' (a directory name)")
        if _count(self.seeds):
            self.seeds = {scale: self.seeds for scale in SCALES}
        self.notes = _tuple(self.notes, str)
        self.tasks = _tuple(self.tasks, TaskSpec)
        self.reference = _tuple(self.reference, Reference)
        self.extra_findings = _tuple(self.extra_findings, ExtraFinding)
        self._check()

    def _check(self) -> None:
        name = self.name
        if not isinstance(self.question, str) or not self.question:
            raise refuse(name, "question", self.question, "give a non-empty string")
        for what, value, kind in (("metric", self.metric, Metric), ("finding", self.finding, Finding)):
            if not isinstance(value, kind):
                raise refuse(name, what, value, f"give a {kind.__name__}(...)")
            value.check(name)
        if not callable(self.grid):
            raise refuse(name, "grid", self.grid, "give a function grid(scale) -> list[RunSpec]")
        if not isinstance(self.seeds, Mapping) or any(s not in SCALES or not _count(n) for s, n in self.seeds.items()):
            raise refuse(name, "seeds", self.seeds, "give an int >= 1 (every scale) or a dict {scale: int >= 1} "
                         f"with scales from {', '.join(SCALES)}")
        if not isinstance(self.unsupported, Mapping) or any(
                s not in SCALES or not isinstance(why, str) or not why for s, why in self.unsupported.items()):
            raise refuse(name, "unsupported", self.unsupported,
                         f"give a dict {{scale: why}} with scales from {', '.join(SCALES)}")
        if not isinstance(self.notes, tuple) or not all(isinstance(n, str) for n in self.notes):
            raise refuse(name, "notes", self.notes, "give a string or a tuple of strings")
        if not isinstance(self.tasks, tuple) or not all(isinstance(t, TaskSpec) for t in self.tasks):
            raise refuse(name, "tasks", self.tasks, "give a tuple of TaskSpec")
        if not isinstance(self.task_inits, Mapping) or not all(
                isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in self.task_inits.items()):
            raise refuse(name, "task_inits", self.task_inits, "give a dict {init label: run key or None (random)}")
        if bool(self.tasks) != bool(self.task_inits) or (self.metric.kind == "tas" and not self.tasks):
            which, value = ("task_inits", self.task_inits) if self.tasks else ("tasks", self.tasks)
            raise refuse(name, which, value,
                         "a TAS study (metric kind tas) declares both tasks and task_inits; other studies neither")
        for kind, values in (("reference", self.reference), ("extra_findings", self.extra_findings)):
            cls = Reference if kind == "reference" else ExtraFinding
            if not isinstance(values, tuple) or not all(isinstance(v, cls) for v in values):
                raise refuse(name, kind, values, f"give a {cls.__name__}(...) or a tuple of them")
            for value in values:
                value.check(name)
        names = [x.name for x in self.extra_findings]
        if len(set(names)) < len(names):
            raise refuse(name, "extra_findings", names, "give each further finding its own name")
        if not isinstance(self.module, str):
            raise refuse(name, "module", self.module, "give the module's name")

    @property
    def paper_effect(self):
        """The paper's numbers for this study's comparison (experiments/paper.py), or None."""
        from .paper import paper_effect

        return paper_effect(self.name)

    def default_seeds(self, scale: str) -> int:
        return self.seeds.get(scale, check_scale(scale).seeds)

    def count(self, scale: str, seeds: int | None = None) -> int:
        return len(self.runs(scale, seeds))

    def runs(self, scale: str, seeds: int | None = None, overrides: list[str] | None = None) -> list[ResolvedRun]:
        """Every run at `scale` for seeds 0 .. seeds-1, parents first, each with its resolved config and hash.
        `overrides` (key=value, e.g. data.path=...) apply to every run's config, and so to its hash."""
        check_scale(scale)
        if scale in self.unsupported:
            return []
        n = self.default_seeds(scale) if seeds is None else seeds
        if n < 1:
            raise RegistryError(f"seeds={n} must be >= 1")
        out: list[ResolvedRun] = []
        for seed in range(n):
            out.extend(self._one_seed(scale, seed, overrides or []))
        for ref in self.reference if out else ():
            if not any(ref.selects(r.tags) for r in out):
                tags = sorted({k for r in out for k in r.tags})
                raise RegistryError(f"study {self.name}: reference {ref.runs!r} selects no run at scale {scale}; "
                                    f"the runs' tags: {', '.join(tags)}")
        return out

    def _one_seed(self, scale: str, seed: int, overrides: list[str]) -> list[ResolvedRun]:
        points = _ordered(self.name, scale, self.grid(scale))
        suffix = f"/s{seed}"
        owners: dict[str, dict[str, ResolvedRun]] = {}
        hashes: dict[str, str] = {}
        out = []
        for point in points:
            if point.shared_from:
                out.append(self._shared(point, scale, seed, overrides, owners))
                continue
            cfg = copy.deepcopy(point.config)
            if overrides:
                try:
                    cfg = apply_overrides(cfg, overrides)
                except ConfigError as exc:
                    raise RegistryError(f"study {self.name}, run {point.key}: {exc}") from None
            cfg.train.seed = seed
            cfg.scale = scale
            cfg.name = f"{self.name}/{point.key}{suffix}"
            parent = None
            if point.parent is not None:  # the parent's directory relative to the results root, and its epoch
                parent = ParentRef(point.parent.key + suffix, point.parent.epoch)
                cfg.init.run_dir = f"{scale}/{self.name}/{hashes[point.parent.key]}"
                cfg.init.epoch = point.parent.epoch
            try:
                cfg.validate()
            except ConfigError as exc:
                raise RegistryError(f"study {self.name}, run {point.key}: {exc}") from None
            hashes[point.key] = config_hash(cfg.to_dict())
            deps = [d + suffix for d in _deps(point)]
            out.append(ResolvedRun(point.key + suffix, cfg, hashes[point.key], seed, deps,
                                   {**point.tags, "seed": seed}, parent))
        return out

    def _shared(self, point: RunSpec, scale: str, seed: int, overrides: list[str],
                owners: dict[str, dict[str, ResolvedRun]]) -> ResolvedRun:
        """Resolve a `shared(...)` grid point to the owner study's run of the same seed."""
        from .registry import get_study  # the registry imports this module

        study, _, key = point.shared_from.partition(":")
        if study == self.name:
            raise RegistryError(f"study {self.name}: run {point.key!r} is shared from its own study; use one run")
        if study not in owners:
            owner = get_study(study)
            owners[study] = ({} if scale in owner.unsupported else
                             {r.key: r for r in owner._one_seed(scale, seed, overrides)})
        run = owners[study].get(f"{key}/s{seed}")
        if run is None or run.owner:
            raise RegistryError(f"study {self.name}: run {point.key!r} is shared from {point.shared_from!r}, which "
                                f"is not a run of its own in study {study} at scale {scale}")
        if run.depends_on:
            raise RegistryError(f"study {self.name}: run {point.key!r} is shared from {point.shared_from!r}, which "
                                "depends on other runs; only a run without parents can be shared")
        return ResolvedRun(f"{point.key}/s{seed}", copy.deepcopy(run.config), run.hash, seed, [],
                           {**point.tags, "seed": seed}, shared_from=point.shared_from, owner=study,
                           owner_key=run.key, owner_tags=dict(run.tags))


def _deps(point: RunSpec) -> list[str]:
    """The keys a grid point waits for: its `depends_on`, then its parent, each once."""
    return list(dict.fromkeys(list(point.depends_on) + ([point.parent.key] if point.parent else [])))


def _ordered(study: str, scale: str, points: list[RunSpec]) -> list[RunSpec]:
    """The grid's points checked (unique keys, dependencies in the grid, no chain through a shared run) and
    ordered parents first, otherwise in the grid's own order."""
    if not isinstance(points, list) or not all(isinstance(p, RunSpec) for p in points):
        raise RegistryError(f"study {study}: grid({scale!r}) must return a list of RunSpec, got {points!r:.80}")
    by_key = {p.key: p for p in points}
    if len(by_key) < len(points):
        keys = [p.key for p in points]
        raise RegistryError(f"study {study}: duplicate run key {next(k for k in keys if keys.count(k) > 1)!r} at "
                            f"scale {scale}")
    for p in points:
        if p.config is not None and p.config.init.run_dir.startswith("@"):
            raise RegistryError(f"study {study}, run {p.key}: init.run_dir={p.config.init.run_dir!r}; a run of the "
                                "grid is continued with continue_from(parent, key, epoch, then)")
        for d in _deps(p):
            if d not in by_key:
                raise RegistryError(f"study {study}: run {p.key!r} depends on {d!r}, which is not in the grid; "
                                    f"keys: {', '.join(by_key)}")
            if by_key[d].shared_from:
                raise RegistryError(f"study {study}: run {p.key!r} depends on {d!r}, a shared run; start from a run "
                                    "of this study (or share the whole chain from its owner)")
    out: list[RunSpec] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(key: str) -> None:
        if state.get(key) == 2:
            return
        if state.get(key) == 1:
            raise RegistryError(f"study {study}: dependency cycle through run {key!r}")
        state[key] = 1
        for d in _deps(by_key[key]):
            visit(d)
        state[key] = 2
        out.append(by_key[key])

    for key in by_key:
        visit(key)
    return out
