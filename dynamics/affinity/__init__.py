"""Task affinity scores (TAS, docs/design.md): how much a step on one task helps or hurts another.

A task (`tasks`) is a named MeanFlow loss on a named (t, r) sampler, built by the same `build_objective` that
training uses (a `PhaseConfig(terms, sampler)`), so TAS measures the loss training optimises, weights included.
Task strings: `v` (t = r rows only), `u` (t != r rows only, the run's own sampler), `both` (the run's joint
loss), `u[a,b]` (t != r with dt uniform in [a, b], t uniform in [dt, 1]: the O2/O3 bins).

A method (`methods/`, one module each) gives the affinity of every pair of tasks on one batch:
- `lookahead` (default; Fifty et al. 2021, TAG): Z(i -> j) = 1 - L_j(theta_i') / L_j(theta), theta_i' one step
  on task i's gradient alone. Directional; its choices (the step, the target) are stated in its module.
- `cosine` (Go et al. 2023): cos(grad L_i, grad L_j) over the shared parameters.
`task_affinity` (`api`) averages a method over `batches` batches (mean, std, n per pair: `frames`).

Choices common to every method:
- Shared parameters: all of the model's parameters (one network serves every task).
- Weights (`sources`): the raw trained weights (`model` of the checkpoint, what the optimiser steps), not the
  EMA weights that `dynamics.api.load_run` gives for sampling.
- Randomness: per batch, every task draws its (t, r, noise, class dropout) from one generator seeded by
  (seed, batch), and L_j is evaluated with the same draws wherever it is evaluated (`batch`). Identical tasks
  therefore get identical draws, and the whole computation is deterministic given the seed (on CPU; on GPU up
  to the kernels' own nondeterminism). Precision: float32 (no autocast, TF32 off).
- Window: by default a snapshot, `batches` batches at fixed weights, no training (the batches are the run's
  next training batches). `train_window=K` interleaves K steps of the run's own training (its objective, lr
  schedule, EMA and DTD, through the Trainer) between measurements, as TAG averages over a window of training.
- DTD: the v task is the whole base t distribution, not the run's current DTD stage (a task is fixed).
"""

from .api import DEFAULT_BATCHES, task_affinity
from .frames import affinity_matrix, describe
from .methods import METHODS, Method, Settings
from .methods.cosine import cosine_matrix
from .methods.lookahead import OPTIMIZERS, lookahead_matrix
from .sources import trainer_from_config, trainer_from_run
from .tasks import AffinityError, Task, parse_task, parse_tasks, split_tasks, tasks_from_specs

__all__ = [
    "DEFAULT_BATCHES", "METHODS", "OPTIMIZERS", "AffinityError", "Method", "Settings", "Task", "affinity_matrix",
    "cosine_matrix", "describe", "lookahead_matrix", "parse_task", "parse_tasks", "split_tasks", "task_affinity",
    "tasks_from_specs", "trainer_from_config", "trainer_from_run",
]
