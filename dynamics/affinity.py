"""Task affinity scores (TAS, DESIGN section 5): how much a step on one task helps or hurts another.

A task is a named MeanFlow loss on a named (t, r) sampler, built by the same `build_objective` that training
uses (a `PhaseConfig(terms, sampler)`), so TAS measures the loss training optimises, weights included.
Task strings: `v` (t = r rows only), `u` (t != r rows only, the run's own sampler), `both` (the run's joint
loss), `u[a,b]` (t != r with dt uniform in [a, b], t uniform in [dt, 1]: the O2/O3 bins).

Methods:
- `lookahead` (default; Fifty et al. 2021, TAG): on one batch, from the shared parameters theta, one optimiser
  step on task i's gradient alone gives theta_i', and Z(i -> j) = 1 - L_j(theta_i') / L_j(theta). Directional.
- `cosine` (Go et al. 2023): cos(grad L_i, grad L_j) over the shared parameters.
Both are averaged over `batches` batches (mean, std, n per pair).

Choices, stated:
- Shared parameters: all of the model's parameters (one network serves every task).
- Weights: the raw trained weights (`model` of the checkpoint, what the optimiser steps), not the EMA weights
  that `dynamics.api.load_run` gives for sampling.
- The step (`optimizer`), default `sgd`: the plain gradient step theta - lr g_i that TAG writes (DESIGN
  section 5). `sgd-length`: a gradient step of fixed parameter-space length, theta - L g_i / ||g_i||, with
  L = lr sqrt(P) (P parameters) unless `step_length` is given: the length of one Adam step at lr (each
  coordinate moves ~lr), the same at every init, so inits with very different gradient norms (a random init
  against a trained one) are compared on equal terms (O3's default). `adam`: a copy of the run's optimiser
  with its moments and step count from the checkpoint: at a trained init ~90% of every task's step is the
  run's shared momentum (beta1 = 0.9), and at a fresh init it is Adam's sign-like first step, so it measures
  the optimiser state as much as the task. The run's gradient clipping applies to every step.
  The learning rate is the run's `train.lr` (its rate after warm-up) unless `lr` is given: the schedule's
  value would make checkpoints incomparable (a step-0 warm-up rate is 1/warmup of it, a finished cosine run's
  is 0).
- The target: u_tgt = v - (t - r) du/dt depends on theta through the JVP (and CFG guidance). By default it is
  recomputed at theta_i' (L_j(theta_i') is the loss training would see there); `recompute_target=False`
  keeps the target computed at theta, so only the prediction u moves.
- The adaptive normaliser: the objective is w D / sg((D + c)^p). L_j(theta_i') keeps the normaliser of theta
  by default (`recompute_weight=False`): it is a stop-gradient weight, and this L_j is the surrogate whose
  gradient training follows. Recomputed, L_j = D / (D + c) is ~1 for p = 1 whatever D is (D >> c), and the
  lookahead would measure nothing. alpha(t) and beta(dt, s) do not depend on theta.
- Randomness: per batch, every task draws its (t, r, noise, class dropout) from one generator seeded by
  (seed, batch), and L_j is evaluated with the same draws before and after every lookahead. Identical tasks
  therefore get identical draws, and the whole computation is deterministic given the seed (on CPU; on GPU up
  to the kernels' own nondeterminism). Precision: float32 (no autocast, TF32 off).
- Window: by default a snapshot, `batches` batches at fixed weights, no training (the batches are the run's
  next training batches). `train_window=K` interleaves K steps of the run's own training (its objective, lr
  schedule, EMA and DTD, through the Trainer) between measurements, as TAG averages over a window of training.
- DTD: the v task is the whole base t distribution, not the run's current DTD stage (a task is fixed).
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from .config import TAS_METHODS, TAS_OPTIMIZERS, PhaseConfig, RunConfig
from .curriculum import build_objective
from .meanflow.loss import Draw, LossOutput, MeanFlowLoss
from .meanflow.tasks import TaskSpec, bin_label, dt_bin
from .results import CONFIG_FILE, checkpoint_path
from .rng import stream_seed
from .train import Diverged, Trainer

METHODS, OPTIMIZERS = TAS_METHODS, TAS_OPTIMIZERS


class AffinityError(ValueError):
    """A bad task string or TAS setting; the message names the value and what is allowed."""


@dataclass
class Task:
    """A named loss: `loss_fn` is a MeanFlowLoss on the task's (t, r) sampler."""

    name: str
    loss_fn: MeanFlowLoss


# ----------------------------------------------------------------------------------------------------
# tasks

_TASK_RE = re.compile(r"^(v|u|both)(?:\[([^\[\],]*),([^\[\],]*)\])?$")
_TASK_HELP = "write v, u, both or u[a,b] with 0 <= a <= b <= 1 (e.g. u[0.1,0.3])"


def parse_task(text: str) -> TaskSpec:
    """`v`, `u`, `both` (the run's own sampler) or `u[a,b]` (dt uniform in [a, b]) -> a TaskSpec."""
    s = text.strip().replace(" ", "")
    m = _TASK_RE.match(s)
    if m is None:
        raise AffinityError(f"task {text!r} is not allowed; {_TASK_HELP}")
    terms, lo_text, hi_text = m.groups()
    if lo_text is None:
        return TaskSpec(terms, terms)
    if terms != "u":
        raise AffinityError(f"task {text!r}: only u takes a dt bin; {_TASK_HELP}")
    try:
        lo, hi = float(lo_text), float(hi_text)
    except ValueError:
        raise AffinityError(f"task {text!r}: the bin bounds must be numbers; {_TASK_HELP}") from None
    if not 0.0 <= lo <= hi <= 1.0:
        raise AffinityError(f"task {text!r}: the bin needs 0 <= a <= b <= 1; {_TASK_HELP}")
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
        raise AffinityError(f"tasks {text!r}: no task given; {_TASK_HELP}")
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


# ----------------------------------------------------------------------------------------------------
# one batch


@dataclass
class _Replay:
    """One task's draw on one batch, replayable: the loss's Draw and its generator's state after the draw
    (the contamination noise is drawn from it inside the loss)."""

    draw: Draw
    gen_state: Tensor
    device: torch.device

    def generator(self) -> torch.Generator:
        gen = torch.Generator(device=self.device)
        gen.set_state(self.gen_state)
        return gen


def _draw(task: Task, x: Tensor, y: Tensor | None, draw_seed: int) -> _Replay:
    gen = torch.Generator(device=x.device).manual_seed(draw_seed)
    d = task.loss_fn.draw(x, y, gen)
    return _Replay(d, gen.get_state(), x.device)


def _task_output(task: Task, model: nn.Module, x: Tensor, d: _Replay, step: int,
                 target_model: nn.Module | None = None) -> LossOutput:
    """The task's loss at the model's current weights, with the fixed draws `d` (contamination noise included);
    the stop-gradient target from `target_model` where given (held at theta), else from `model`."""
    return task.loss_fn.loss_at(model, x, d.draw, step, d.generator(), target_model=target_model)


def _loss_with_weight_of(task: Task, out: LossOutput, ref: LossOutput) -> float:
    """mean(w D / (D_ref + c)^p): the objective with its adaptive normaliser (a stop-gradient weight) taken
    from `ref` (theta) instead of `out`; equal to ref.loss when out is ref."""
    fn = task.loss_fn
    return float((ref.weight * out.D / (ref.D + fn.c).pow(fn.p)).mean())


def _parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _task_gradient(task: Task, model: nn.Module, x: Tensor, d: _Replay, step: int, grad_clip: float) -> None:
    """Leave grad L_task (clipped as training clips) in the parameters' .grad."""
    model.zero_grad(set_to_none=True)
    _task_output(task, model, x, d, step).loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)


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
    draws = [_draw(task, x, y, draw_seed) for task in tasks]
    model.zero_grad(set_to_none=True)
    params = _parameters(model)
    theta = [p.detach().clone() for p in params]
    with torch.no_grad():
        before = [_task_output(task, model, x, d, step) for task, d in zip(tasks, draws)]
        base = [_loss_with_weight_of(task, out, out) for task, out in zip(tasks, before)]
    held = None if recompute_target else copy.deepcopy(model).requires_grad_(False)  # u_tgt's network: theta
    z = torch.empty(len(tasks), len(tasks), dtype=torch.float64)
    for i, (task, d) in enumerate(zip(tasks, draws)):
        try:
            _task_gradient(task, model, x, d, step, grad_clip)
            _lookahead_optimizer(params, optimizer, lr, step_length).step()
            model.zero_grad(set_to_none=True)
            with torch.no_grad():
                for j, (task_j, d_j) in enumerate(zip(tasks, draws)):
                    out = _task_output(task_j, model, x, d_j, step, target_model=held)
                    ref = out if recompute_weight else before[j]
                    z[i, j] = 1.0 - _loss_with_weight_of(task_j, out, ref) / base[j]
        finally:
            model.zero_grad(set_to_none=True)
            with torch.no_grad():
                for p, p0 in zip(params, theta):
                    p.copy_(p0)
    return z


def cosine_matrix(model: nn.Module, tasks: Sequence[Task], x: Tensor, y: Tensor | None, draw_seed: int, *,
                  step: int = 0) -> Tensor:
    """C[i, j] = cos(grad L_i, grad L_j) over all of the model's parameters, on one batch (unclipped)."""
    params = _parameters(model)
    grads = []
    for task in tasks:
        _task_gradient(task, model, x, _draw(task, x, y, draw_seed), step, grad_clip=0.0)
        grads.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params]))
    model.zero_grad(set_to_none=True)
    g = torch.stack(grads).double()
    norms = g.norm(dim=1)
    return ((g @ g.T) / (norms[:, None] * norms[None, :])).cpu()


# ----------------------------------------------------------------------------------------------------
# sources: a run directory, a config (fresh init) or a model


@contextmanager
def _strict_float32() -> Iterator[None]:
    """float32 matmuls and convolutions without TF32, restored afterwards."""
    matmul, cudnn = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.allow_tf32 = cudnn


def _trainer(cfg: RunConfig, run_dir: Path, device: str | torch.device | None) -> Trainer:
    """The run's trainer (model, optimiser, data, objective); it never evaluates or writes here, so its
    evaluation noise is kept tiny. The caller's global CPU RNG state is left as it was."""
    cfg = copy.deepcopy(cfg)
    cfg.eval.num_samples, cfg.eval.metrics = 2, []
    with torch.random.fork_rng(devices=[]):
        return Trainer(cfg, run_dir, device)


def trainer_from_run(run_dir: str | Path, epoch: float | None = None,
                     device: str | torch.device | None = None) -> Trainer:
    """A run's trainer at its last (or an epoch) checkpoint: raw weights, optimiser state, step, DTD stage."""
    path = Path(run_dir)
    if not (path / CONFIG_FILE).exists():
        raise FileNotFoundError(f"{path} is not a run directory (no {CONFIG_FILE})")
    ckpt = checkpoint_path(path, epoch)
    if not ckpt.exists():
        kept = sorted(p.name for p in ckpt.parent.glob("*.pt")) if ckpt.parent.exists() else []
        raise FileNotFoundError(f"{ckpt} does not exist; checkpoints there: {', '.join(kept) or 'none'}")
    trainer = _trainer(RunConfig.from_dict(json.loads((path / CONFIG_FILE).read_text())), path, device)
    with torch.random.fork_rng(devices=[]):
        trainer.load_state_dict(torch.load(ckpt, map_location=trainer.device, weights_only=False))
    return trainer


def trainer_from_config(cfg: RunConfig, device: str | torch.device | None = None) -> Trainer:
    """A fresh trainer of `cfg` (the random init a run with cfg.train.seed starts from, empty optimiser)."""
    return _trainer(cfg, Path(f"<fresh init of {cfg.name}, seed {cfg.train.seed}>"), device)


def _resolve_source(source: str | Path | RunConfig | nn.Module, cfg: RunConfig | None, epoch: float | None,
                    device: str | torch.device | None) -> tuple[Trainer, str]:
    if isinstance(source, (str, Path)):
        at = f" epoch {epoch:g}" if epoch is not None else ""
        return trainer_from_run(source, epoch, device), f"run {source}{at}"
    if isinstance(source, RunConfig):
        return trainer_from_config(source, device), f"fresh init of {source.name}, seed {source.train.seed}"
    if isinstance(source, nn.Module):
        if cfg is None:
            raise AffinityError("task_affinity(model, ...) needs cfg=RunConfig (its data, objective and optimiser)")
        trainer = trainer_from_config(cfg, device)
        trainer.model.load_state_dict(source.state_dict())
        return trainer, f"given model under {cfg.name}"
    raise AffinityError(f"task_affinity: source must be a run directory, a RunConfig or an nn.Module, "
                        f"not {type(source).__name__}")


# ----------------------------------------------------------------------------------------------------
# the public entry points


def _check(method: str, optimizer: str, batches: int, train_window: int, lr: float | None) -> None:
    if method not in METHODS:
        raise AffinityError(f"method={method!r} is not allowed; choose one of {', '.join(METHODS)}")
    if optimizer not in OPTIMIZERS:
        raise AffinityError(f"optimizer={optimizer!r} is not allowed; choose one of {', '.join(OPTIMIZERS)}")
    if batches < 1:
        raise AffinityError(f"batches={batches} must be >= 1")
    if train_window < 0:
        raise AffinityError(f"train_window={train_window} must be >= 0")
    if lr is not None and not lr > 0:
        raise AffinityError(f"lr={lr} must be > 0")


DEFAULT_BATCHES = 16  # batches a TAS value averages over


def task_affinity(source: str | Path | RunConfig | nn.Module, tasks: Sequence[Task | TaskSpec | str] | str,
                  method: str = "lookahead", batches: int = DEFAULT_BATCHES, *, cfg: RunConfig | None = None,
                  epoch: float | None = None, optimizer: str = "sgd", lr: float | None = None,
                  recompute_target: bool = True, recompute_weight: bool = False, train_window: int = 0,
                  batch_size: int | None = None, seed: int = 0, device: str | torch.device | None = None,
                  progress: bool = False) -> pd.DataFrame:
    """TAS between `tasks`, long format: source, target, method, mean, std, n (settings in `.attrs`).

    source: a run directory (raw weights and optimiser of checkpoints/last.pt, or of `epoch`), a RunConfig
    (a fresh init with cfg.train.seed, empty optimiser state) or an nn.Module (its weights under `cfg`, empty
    optimiser state). tasks: Task objects, TaskSpecs or task strings (`v,u[0.1,0.3]`). See the module
    docstring for what is measured and the choices made."""
    _check(method, optimizer, batches, train_window, lr)
    trainer, described = _resolve_source(source, cfg, epoch, device)
    run_cfg = trainer.cfg
    if isinstance(tasks, str):
        tasks = parse_tasks(tasks)
    if not tasks:
        raise AffinityError(f"tasks: no task given; {_TASK_HELP}")
    if all(isinstance(t, Task) for t in tasks):
        resolved = list(tasks)
    elif any(isinstance(t, Task) for t in tasks):
        raise AffinityError("tasks: pass either Task objects or TaskSpecs / task strings, not a mix")
    else:
        resolved = tasks_from_specs(run_cfg, tasks, trainer.num_classes)
    needed = train_window * (batches - 1)
    if needed and trainer.step + needed > trainer.total_steps:
        raise AffinityError(f"train_window={train_window}: {needed} training steps from step {trainer.step} run "
                            f"past the run's {trainer.total_steps} steps; measure an earlier --epoch or use 0")
    step_lr = lr if lr is not None else run_cfg.train.lr
    n_params = sum(p.numel() for p in _parameters(trainer.model))
    step_length = step_lr * math.sqrt(n_params) if optimizer == "sgd-length" else None
    bs = batch_size or run_cfg.train.batch_size
    start_step = trainer.step
    values: list[Tensor] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=batches, desc=f"TAS {method}", dynamic_ncols=True)
    with _strict_float32():
        for k in range(batches):
            if k > 0:
                for _ in range(train_window):
                    try:
                        trainer.train_step()
                    except Diverged:
                        raise AffinityError(f"train_window: the loss went non-finite at step {trainer.step}") from None
            data_step = trainer.step if train_window else start_step + k
            x, y = trainer.dataset.batch(data_step, bs, run_cfg.train.seed)
            x = x.to(trainer.device).float()
            y = y.to(trainer.device) if y is not None else None
            draw_seed = stream_seed(seed, "tas", k)
            if method == "cosine":
                values.append(cosine_matrix(trainer.model, resolved, x, y, draw_seed, step=trainer.step))
            else:
                values.append(lookahead_matrix(
                    trainer.model, resolved, x, y, draw_seed, lr=step_lr,
                    optimizer=trainer.opt if optimizer == "adam" else None, recompute_target=recompute_target,
                    recompute_weight=recompute_weight, step=trainer.step, grad_clip=run_cfg.train.grad_clip,
                    step_length=step_length))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    frame = _long_frame([t.name for t in resolved], torch.stack(values).numpy(), method)
    frame.attrs = {"weights": described, "step": start_step, "method": method, "batches": batches,
                   "batch_size": bs, "seed": seed, "train_window": train_window}
    if method == "lookahead":
        frame.attrs.update(optimizer=optimizer, lr=step_lr, recompute_target=recompute_target,
                           recompute_weight=recompute_weight)
        if step_length is not None:
            frame.attrs.update(step_length=step_length)
    return frame


def _long_frame(names: list[str], values: np.ndarray, method: str) -> pd.DataFrame:
    """values: (batches, n, n) -> one row per (source, target) with mean, std (ddof 1), n."""
    rows = []
    for i, src in enumerate(names):
        for j, tgt in enumerate(names):
            v = values[:, i, j]
            rows.append({"source": src, "target": tgt, "method": method, "mean": float(v.mean()),
                         "std": float(v.std(ddof=1)) if len(v) > 1 else math.nan, "n": len(v)})
    return pd.DataFrame(rows)


def affinity_matrix(frame: pd.DataFrame, value: str = "mean") -> pd.DataFrame:
    """The long TAS frame as a matrix: rows = source task (the one stepped on), columns = target task."""
    order = list(dict.fromkeys(frame["source"]))
    matrix = frame.pivot_table(index="source", columns="target", values=value, aggfunc="mean")
    return matrix.reindex(index=order, columns=[c for c in order if c in matrix.columns])


def describe(frame: pd.DataFrame) -> str:
    """One line of the settings a TAS frame was measured with."""
    return ", ".join(f"{k}={v}" for k, v in frame.attrs.items())
