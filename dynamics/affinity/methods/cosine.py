"""Gradient cosine (Go et al. 2023): C[i, j] = cos(grad L_i, grad L_j) over the shared parameters, on one batch.
Symmetric, and independent of any step size."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..batch import draw, task_gradient, trainable
from ..tasks import Task
from .base import Method, Settings


def cosine_matrix(model: nn.Module, tasks: Sequence[Task], x: Tensor, y: Tensor | None, draw_seed: int, *,
                  step: int = 0) -> Tensor:
    """C[i, j] = cos(grad L_i, grad L_j) over all of the model's parameters, on one batch (unclipped)."""
    params = trainable(model)
    grads = []
    for task in tasks:
        task_gradient(task, model, x, draw(task, x, y, draw_seed), step, grad_clip=0.0)
        grads.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params]))
    model.zero_grad(set_to_none=True)
    g = torch.stack(grads).double()
    norms = g.norm(dim=1)
    return ((g @ g.T) / (norms[:, None] * norms[None, :])).cpu()


def _matrix(model: nn.Module, tasks: Sequence[Task], x: Tensor, y: Tensor | None, draw_seed: int, step: int,
            settings: Settings) -> Tensor:
    return cosine_matrix(model, tasks, x, y, draw_seed, step=step)


METHOD = Method("cosine", _matrix)
