"""One batch at fixed weights: every task's draws, fixed so that a loss can be evaluated again with them, and
the task losses and gradients every method is built from."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..meanflow.loss import Draw, LossOutput
from .tasks import Task


@dataclass
class Replay:
    """One task's draw on one batch, replayable: the loss's Draw and its generator's state after the draw
    (the contamination noise is drawn from it inside the loss)."""

    draw: Draw
    gen_state: Tensor
    device: torch.device

    def generator(self) -> torch.Generator:
        gen = torch.Generator(device=self.device)
        gen.set_state(self.gen_state)
        return gen


def draw(task: Task, x: Tensor, y: Tensor | None, draw_seed: int) -> Replay:
    """The task's (t, r, noise, class dropout) on this batch from a generator seeded by `draw_seed`: tasks
    drawn with the same seed and sampler get the same draws."""
    gen = torch.Generator(device=x.device).manual_seed(draw_seed)
    d = task.loss_fn.draw(x, y, gen)
    return Replay(d, gen.get_state(), x.device)


def task_output(task: Task, model: nn.Module, x: Tensor, d: Replay, step: int,
                target_model: nn.Module | None = None) -> LossOutput:
    """The task's loss at the model's current weights, with the fixed draws `d` (contamination noise included);
    the stop-gradient target from `target_model` where given, else from `model`."""
    return task.loss_fn.loss_at(model, x, d.draw, step, d.generator(), target_model=target_model)


def loss_with_weight_of(task: Task, out: LossOutput, ref: LossOutput) -> float:
    """mean(w D / (D_ref + c)^p): the objective with its adaptive normaliser (a stop-gradient weight) taken
    from `ref` instead of `out`; equal to ref.loss when out is ref."""
    fn = task.loss_fn
    return float((ref.weight * out.D / (ref.D + fn.c).pow(fn.p)).mean())


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """The shared parameters: every parameter that trains."""
    return [p for p in model.parameters() if p.requires_grad]


def task_gradient(task: Task, model: nn.Module, x: Tensor, d: Replay, step: int, grad_clip: float) -> None:
    """Leave grad L_task (clipped as training clips, where grad_clip > 0) in the parameters' .grad."""
    model.zero_grad(set_to_none=True)
    task_output(task, model, x, d, step).loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
