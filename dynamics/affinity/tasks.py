"""The task vocabulary: task strings (`v`, `u`, `both`, `u[a,b]`) and the losses they name."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..config import PhaseConfig, RunConfig
from ..curriculum import build_objective
from ..meanflow.loss import MeanFlowLoss
from ..meanflow.tasks import TaskSpec, bin_label, dt_bin


class AffinityError(ValueError):
    """A bad task string or TAS setting; the message names the value and what is allowed."""


@dataclass
class Task:
    """A named loss: `loss_fn` is a MeanFlowLoss on the task's (t, r) sampler."""

    name: str
    loss_fn: MeanFlowLoss


_TASK_RE = re.compile(r"^(v|u|both)(?:\[([^\[\],]*),([^\[\],]*)\])?$")
TASK_HELP = "write v, u, both or u[a,b] with 0 <= a <= b <= 1 (e.g. u[0.1,0.3])"


def parse_task(text: str) -> TaskSpec:
    """`v`, `u`, `both` (the run's own sampler) or `u[a,b]` (dt uniform in [a, b]) -> a TaskSpec."""
    s = text.strip().replace(" ", "")
    m = _TASK_RE.match(s)
    if m is None:
        raise AffinityError(f"task {text!r} is not allowed; {TASK_HELP}")
    terms, lo_text, hi_text = m.groups()
    if lo_text is None:
        return TaskSpec(terms, terms)
    if terms != "u":
        raise AffinityError(f"task {text!r}: only u takes a dt bin; {TASK_HELP}")
    try:
        lo, hi = float(lo_text), float(hi_text)
    except ValueError:
        raise AffinityError(f"task {text!r}: the bin bounds must be numbers; {TASK_HELP}") from None
    if not 0.0 <= lo <= hi <= 1.0:
        raise AffinityError(f"task {text!r}: the bin needs 0 <= a <= b <= 1; {TASK_HELP}")
    return TaskSpec(f"u{bin_label(lo, hi)}", "u", dt_bin(lo, hi))


def split_tasks(text: str) -> list[str]:
    """Split `v,u[0.1,0.3],u` on the commas outside brackets."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def parse_tasks(text: str) -> list[TaskSpec]:
    """A comma-separated task list (`v,u[0.1,0.3],u[0.7,0.9]`) -> TaskSpecs with unique names."""
    specs = [parse_task(p) for p in split_tasks(text)]
    if not specs:
        raise AffinityError(f"tasks {text!r}: no task given; {TASK_HELP}")
    return specs


def tasks_from_specs(cfg: RunConfig, specs: Sequence[TaskSpec | str], num_classes: int = 0) -> list[Task]:
    """The tasks' losses under `cfg`'s objective (weightings, adaptive loss, CFG), one phase each."""
    resolved = [parse_task(s) if isinstance(s, str) else s for s in specs]
    names = [s.name for s in resolved]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise AffinityError(f"task {dupes[0]!r} is given twice; task names must be unique")
    return [Task(s.name, build_objective(cfg, PhaseConfig(terms=s.terms, sampler=s.sampler), num_classes))
            for s in resolved]


def resolve_tasks(cfg: RunConfig, tasks: Sequence[Task | TaskSpec | str] | str, num_classes: int) -> list[Task]:
    """Task objects as given, or the losses of TaskSpecs / task strings (a comma-separated string included)."""
    if isinstance(tasks, str):
        tasks = parse_tasks(tasks)
    if not tasks:
        raise AffinityError(f"tasks: no task given; {TASK_HELP}")
    if all(isinstance(t, Task) for t in tasks):
        return list(tasks)
    if any(isinstance(t, Task) for t in tasks):
        raise AffinityError("tasks: pass either Task objects or TaskSpecs / task strings, not a mix")
    return tasks_from_specs(cfg, tasks, num_classes)
