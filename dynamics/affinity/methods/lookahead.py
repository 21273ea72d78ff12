"""Lookahead affinity (Fifty et al. 2021, TAG): Z(i -> j) = 1 - L_j(theta_i') / L_j(theta) on one batch, where
theta_i' is one optimiser step from the shared parameters theta on task i's gradient alone. Directional.

Choices, stated:
- The step (`optimizer`), default `sgd`: the plain gradient step theta - lr g_i that TAG writes (docs/design.md).
  `sgd-length`: a gradient step of fixed parameter-space length, theta - L g_i / ||g_i||, with L = lr sqrt(P)
  (P parameters) unless `step_length` is given: the length of one Adam step at lr (each coordinate moves ~lr),
  the same at every init, so inits with very different gradient norms (a random init against a trained one)
  are compared on equal terms (O3's default). `adam`: a copy of the run's optimiser with its moments and step
  count from the checkpoint: at a trained init ~90% of every task's step is the run's shared momentum
  (beta1 = 0.9), and at a fresh init it is Adam's sign-like first step, so it measures the optimiser state as
  much as the task. The run's gradient clipping applies to every step.
- The learning rate is the run's `train.lr` (its rate after warm-up) unless `lr` is given: the schedule's
  value would make checkpoints incomparable (a step-0 warm-up rate is 1/warmup of it, a finished cosine run's
  is 0).
- The target: u_tgt = v - (t - r) du/dt depends on theta through the JVP (and CFG guidance). By default it is
  recomputed at theta_i' (L_j(theta_i') is the loss training would see there); `recompute_target=False`
  keeps the target computed at theta, so only the prediction u moves.
- The adaptive normaliser: the objective is w D / sg((D + c)^p). L_j(theta_i') keeps the normaliser of theta
  by default (`recompute_weight=False`): it is a stop-gradient weight, and this L_j is the surrogate whose
  gradient training follows. Recomputed, L_j = D / (D + c) is ~1 for p = 1 whatever D is (D >> c), and the
  lookahead would measure nothing. alpha(t) and beta(dt, s) do not depend on theta.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ...config import TAS_OPTIMIZERS
from ..batch import draw, loss_with_weight_of, task_gradient, task_output, trainable
from ..tasks import Task
from .base import Method, Settings

OPTIMIZERS = TAS_OPTIMIZERS  # sgd, sgd-length, adam


def _lookahead_optimizer(params: list[nn.Parameter], optimizer: torch.optim.Optimizer | None,
                         lr: float, step_length: float | None = None) -> torch.optim.Optimizer:
    """A throw-away copy of the run's optimiser (its state deep-copied: loading a state aliases it), SGD, or
    (step_length given) SGD whose rate makes the step's length step_length."""
    if step_length is not None:
        norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params if p.grad is not None))
        return torch.optim.SGD(params, lr=step_length / max(float(norm), 1e-30))
    if optimizer is None:
        return torch.optim.SGD(params, lr=lr)
    twin = type(optimizer)(params, **optimizer.defaults)
    twin.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for group in twin.param_groups:
        group["lr"] = lr
    return twin


def lookahead_matrix(model: nn.Module, tasks: Sequence[Task], x: Tensor, y: Tensor | None, draw_seed: int, *,
                     lr: float, optimizer: torch.optim.Optimizer | None = None, recompute_target: bool = True,
                     recompute_weight: bool = False, step: int = 0, grad_clip: float = 0.0,
                     step_length: float | None = None) -> Tensor:
    """Z[i, j] = 1 - L_j(theta_i') / L_j(theta) on one batch; theta_i' = one step of `optimizer` (a copy;
    None: SGD) at `lr` on task i's gradient, or with `step_length` a gradient step of that length.
    The model's weights and `optimizer` are left unchanged.
    recompute_target / recompute_weight: whether the stop-gradient target u_tgt / adaptive normaliser
    (D + c)^p of L_j(theta_i') are recomputed at theta_i' or kept from theta."""
    draws = [draw(task, x, y, draw_seed) for task in tasks]
    model.zero_grad(set_to_none=True)
    params = trainable(model)
    theta = [p.detach().clone() for p in params]
    with torch.no_grad():
        before = [task_output(task, model, x, d, step) for task, d in zip(tasks, draws)]
        base = [loss_with_weight_of(task, out, out) for task, out in zip(tasks, before)]
    held = None if recompute_target else copy.deepcopy(model).requires_grad_(False)  # u_tgt's network: theta
    z = torch.empty(len(tasks), len(tasks), dtype=torch.float64)
    for i, (task, d) in enumerate(zip(tasks, draws)):
        try:
            task_gradient(task, model, x, d, step, grad_clip)
            _lookahead_optimizer(params, optimizer, lr, step_length).step()
            model.zero_grad(set_to_none=True)
            with torch.no_grad():
                for j, (task_j, d_j) in enumerate(zip(tasks, draws)):
                    out = task_output(task_j, model, x, d_j, step, target_model=held)
                    ref = out if recompute_weight else before[j]
                    z[i, j] = 1.0 - loss_with_weight_of(task_j, out, ref) / base[j]
        finally:
            model.zero_grad(set_to_none=True)
            with torch.no_grad():
                for p, p0 in zip(params, theta):
                    p.copy_(p0)
    return z


def step_length(settings: Settings) -> float | None:
    """The `sgd-length` step's length: one Adam step at lr, lr sqrt(P); None for the other steps."""
    return settings.lr * math.sqrt(settings.params) if settings.optimizer == "sgd-length" else None


def _matrix(model: nn.Module, tasks: Sequence[Task], x: Tensor, y: Tensor | None, draw_seed: int, step: int,
            settings: Settings) -> Tensor:
    return lookahead_matrix(
        model, tasks, x, y, draw_seed, lr=settings.lr,
        optimizer=settings.run_optimizer if settings.optimizer == "adam" else None,
        recompute_target=settings.recompute_target, recompute_weight=settings.recompute_weight, step=step,
        grad_clip=settings.grad_clip, step_length=step_length(settings))


def _attrs(settings: Settings) -> dict:
    attrs = dict(optimizer=settings.optimizer, lr=settings.lr, recompute_target=settings.recompute_target,
                 recompute_weight=settings.recompute_weight)
    length = step_length(settings)
    return attrs if length is None else {**attrs, "step_length": length}


METHOD = Method("lookahead", _matrix, _attrs)
