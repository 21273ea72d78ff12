"""One batch at fixed weights: every task's draws, fixed so that a loss can be evaluated again with them, and
the task losses and gradients every method is built from."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..meanflow.loss import Draw, LossOutput
from ..rng import stream_seed
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


def _generator(seed: int, part: int, device: torch.device, *keys: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(stream_seed(seed, "tas", part, *keys))


def shared_draw(task: Task, x: Tensor, y: Tensor | None, draw_seed: int) -> Draw:
    """The task's draw on the rows x from streams shared by every task: the noise and the class dropout are
    the same for every task, and (t, r) come through the task's own sampler from the same generator state, so
    tasks with one sampler get the same times. Each of the three has its own generator, so a sampler's
    consumption never shifts the noise (in `draw` the noise follows the times on one generator)."""
    fn, device, n = task.loss_fn, x.device, len(x)
    n_v = round(n * fn.ratio_r_eq_t)
    quantiles = fn.v_time.quantiles if fn.v_time is not None else None
    t, r = fn.sampler.sample(n, n_v, _generator(draw_seed, 0, device), device, quantiles)
    e = torch.randn(x.shape, generator=_generator(draw_seed, 1, device), device=device, dtype=x.dtype)
    if fn.guidance is not None and y is not None:
        dropped = fn.dropped_rows(n, _generator(draw_seed, 2, device), device)
        y = torch.where(dropped, torch.full_like(y, fn.num_classes), y)
    return Draw(t.to(x.dtype), r.to(x.dtype), e, y, n_v)


def draw_rows(d: Draw, start: int, stop: int) -> Draw:
    """Rows [start, stop) of a draw; its v rows (the first n_v) stay first."""
    return Draw(d.t[start:stop], d.r[start:stop], d.e[start:stop], None if d.y is None else d.y[start:stop],
                min(max(d.n_v - start, 0), stop - start))


def loss_generator(draw_seed: int, start: int, device: torch.device) -> torch.Generator:
    """The generator the loss draws from inside (contamination noise, a target transform's draws) on the rows
    from `start`: the same for every task."""
    return _generator(draw_seed, 3, device, start)
