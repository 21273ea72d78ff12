"""The task and dt-bin vocabulary that studies and TAS share: a dt bin's sampler and label, and a task.

These are library words (a task is a loss term on a (t, r) sampler), so they live here beside the samplers;
the study registry (experiments/) re-exports them, and TAS (dynamics.affinity) reads them without knowing
any study.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import SamplerConfig


def dt_bin(lo: float, hi: float) -> SamplerConfig:
    """O2's sampler: dt uniform in [lo, hi], t uniform in [dt, 1]."""
    return SamplerConfig(kind="dt_bin", dt_min=lo, dt_max=hi)


def bin_label(lo: float, hi: float) -> str:
    """How a dt bin is named in task names, tags and tables: `[0.1,0.3]`."""
    return f"[{lo:g},{hi:g}]"


@dataclass(frozen=True)
class TaskSpec:
    """A task for task affinity (TAS): a loss term (v: t = r, u: t != r, both) on a (t, r) sampler
    (None: the run's own)."""

    name: str
    terms: str
    sampler: SamplerConfig | None = None
