"""Task affinity scores (TAS, docs/design.md): how much a step on one task helps or hurts another.

A task (`tasks`) is a named MeanFlow loss on a named (t, r) sampler, built by the same `build_objective` that
training uses (a `PhaseConfig(terms, sampler)`), so TAS measures the loss training optimises, weights included.
Task strings: `v` (t = r rows only), `u` (t != r rows only, the run's own sampler), `both` (the run's joint
loss), `u[a,b]` (t != r with dt uniform in [a, b], t uniform in [dt, 1]: the O2/O3 bins).

A method (`methods/`, one module each) gives the affinity of every pair of tasks on a set of rows:
- `accumulated` (default; the authors' Task Affinity Score, Go et al. 2023, the paper's measure): each task's
  gradient accumulated over a fixed set of N samples (1,000 at paper scale, `SAMPLES_BY_SCALE` below it), and
  C[i, j] = cos(G_i, G_j). Symmetric; one matrix per checkpoint. Its choices are stated in its module.
- `lookahead` (Fifty et al. 2021, TAG): Z(i -> j) = 1 - L_j(theta_i') / L_j(theta), theta_i' one step
  on task i's gradient alone, on one batch. Directional; its choices (the step, the target) are stated in its
  module. A robustness check of the default.
- `cosine`: cos(grad L_i, grad L_j) on one batch, averaged over batches (shrunk towards 0 by each batch's
  gradient noise, which differs between a random and a trained init). A robustness check.
`task_affinity` (`api`) averages a per-batch method over `batches` batches, or measures a sample-set method on
`batches` disjoint sets (default 1) (mean, std, n per pair: `frames`).

Choices common to every method:
- Shared parameters: all of the model's parameters (one network serves every task).
- Weights (`sources`): the raw trained weights (`model` of the checkpoint, what the optimiser steps), not the
  EMA weights that `dynamics.api.load_run` gives for sampling.
- Randomness: per batch, every task draws its (t, r, noise, class dropout) from one generator seeded by
  (seed, batch), and L_j is evaluated with the same draws wherever it is evaluated (`batch`); `accumulated`
  shares the noise and class dropout between tasks and draws (t, r) from one shared generator state through
  each task's sampler (`batch.shared_draw`). Identical tasks therefore get identical draws, and the whole
  computation is deterministic given the seed (on CPU; on GPU up to the kernels' own nondeterminism).
  Precision: float32 (no autocast, TF32 off).
- Window: by default a snapshot, `batches` batches at fixed weights, no training (a per-batch method's batches
  are the run's next training batches; a sample set is rows of a data stream fixed by `seed`, the same at every
  checkpoint, and sets are disjoint positions of it, a finite data set repeating once they pass its size).
  `train_window=K` interleaves K steps of the run's own training (its objective, lr schedule, EMA and DTD,
  through the Trainer) between measurements, as TAG averages over a window of training.
- DTD: the v task is the whole base t distribution, not the run's current DTD stage (a task is fixed).
"""

from .api import DEFAULT_BATCHES, DEFAULT_METHOD, DEFAULT_SETS, affinity_values, task_affinity
from .frames import affinity_matrix, describe
from .methods import METHODS, Method, Settings
from .methods.accumulated import (
    PAPER_SAMPLES,
    SAMPLES_BY_SCALE,
    accumulated_gradients,
    accumulated_matrix,
    samples_for,
)
from .methods.cosine import cosine_matrix
from .methods.lookahead import OPTIMIZERS, lookahead_matrix
from .sources import trainer_from_config, trainer_from_run
from .tasks import AffinityError, Task, parse_task, parse_tasks, split_tasks, tasks_from_specs

__all__ = [
    "DEFAULT_BATCHES", "DEFAULT_METHOD", "DEFAULT_SETS", "METHODS", "OPTIMIZERS", "PAPER_SAMPLES", "SAMPLES_BY_SCALE",
    "AffinityError", "Method", "Settings", "Task", "accumulated_gradients", "accumulated_matrix", "affinity_matrix",
    "affinity_values", "cosine_matrix", "describe", "lookahead_matrix", "parse_task", "parse_tasks", "samples_for",
    "split_tasks", "task_affinity", "tasks_from_specs", "trainer_from_config", "trainer_from_run",
]
