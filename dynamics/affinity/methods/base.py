"""What a TAS method is: a function from (weights, tasks, one batch) to an (n, n) affinity matrix."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..tasks import Task


@dataclass(frozen=True)
class Settings:
    """What `task_affinity` hands every method; each reads the fields it needs.

    lr: the run's `train.lr` (its rate after warm-up) unless one is given; params: the number of shared
    parameters; grad_clip: the run's clipping; optimizer / run_optimizer: the lookahead step's kind and the run's
    optimiser (with its state); recompute_target / recompute_weight: the lookahead's L_j at theta_i';
    samples / chunk: a sample-set method's N and the rows back-propagated at once."""

    lr: float
    params: int
    grad_clip: float = 0.0
    optimizer: str = "sgd"
    run_optimizer: torch.optim.Optimizer | None = None
    recompute_target: bool = True
    recompute_weight: bool = False
    samples: int | None = None
    chunk: int | None = None


def _no_settings(settings: Settings) -> dict:
    return {}


@dataclass(frozen=True)
class Method:
    """A TAS method. `matrix(model, tasks, x, y, draw_seed, step, settings)` gives M[i, j], the affinity of task
    i to task j on the batch (x, y) at `step`, leaving the model's weights as they were; `attrs(settings)` names
    the settings it read (recorded with the measurement). `per_batch`: True, the rows are one training batch
    and a measurement averages `batches` of them; False, the rows are a fixed set of `samples` rows (the same at
    every checkpoint) and a measurement is one set (more sets: disjoint ones, for the spread)."""

    name: str
    matrix: Callable[[nn.Module, Sequence[Task], Tensor, Tensor | None, int, int, Settings], Tensor]
    attrs: Callable[[Settings], dict] = _no_settings
    per_batch: bool = True
