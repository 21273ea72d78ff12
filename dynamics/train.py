"""The shared MeanFlow trainer: one loop for every study and every scale.

Adam with a constant or warm-up + cosine learning rate, EMA, bf16 autocast on GPU, data parallel over
torch.distributed (the JVP cannot run through a DDP wrapper, so the model stays unwrapped and the
gradients are all-reduced here), atomic checkpoints and exact resume, periodic evaluation of the EMA
model, and a non-finite loss ending the run as "diverged".

Randomness is stateless: the batch and the objective's draws at a step are pure functions of
(seed, step, rank), so a resumed run repeats an uninterrupted one exactly without saving RNG streams.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .config import ConfigError, RunConfig, phase_boundaries
from .curriculum import build_objective, build_v_time
from .data import Dataset, build_dataset
from .metrics.evaluate import Evaluator
from .models import build_model
from .pieces import VTimePiece
from .results import (
    CONFIG_FILE,
    EVAL_FILE,
    METRICS_FILE,
    RunLockedError,
    append_jsonl,
    atomic_torch_save,
    atomic_write_json,
    checkpoint_path,
    read_status,
    run_lock,
    truncate_jsonl,
    write_status,
)
from .rng import stream_seed

PREV_CKPT = "prev.pt"  # the checkpoint before last.pt, kept (as a hard link) for when last.pt is unreadable
# Set to 1 to start torch.distributed on a single process (world size 1) when nothing else has: the
# trainer then goes through the gradient all-reduce as a multi-GPU job does (benchmarks/gpu_check.py).
FORCE_DIST_ENV = "DYNAMICS_FORCE_DIST"


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    initialized: bool = False  # a process group is up: gradients are all-reduced, even at world size 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), True)
    return DistInfo()


def init_single_process_group(device: torch.device) -> str:
    """torch.distributed on this process alone (rank 0 of 1): nccl on CUDA, gloo on CPU; returns the backend."""
    import socket

    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":  # nccl binds this process to one device
        torch.cuda.set_device(device.index if device.index is not None else torch.cuda.current_device())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    return backend


def learning_rate(cfg: RunConfig, step: int) -> float:
    """Linear warm-up, then constant or cosine decay to zero over the run."""
    tc = cfg.train
    if tc.warmup_steps and step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    if tc.lr_schedule == "constant":
        return tc.lr
    total = cfg.total_steps()
    progress = (step - tc.warmup_steps) / max(1, total - tc.warmup_steps)
    return tc.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p.detach(), 1 - decay)


def all_reduce_gradients(model: nn.Module, world_size: int) -> None:
    """Average gradients over ranks in one flat buffer (what DDP would do, without its wrapper)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def objective_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The objective's randomness at a step: t, r, noise, class dropout, contamination."""
    return torch.Generator(device=device).manual_seed(stream_seed(seed, "objective", step, rank))


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Diverged(RuntimeError):
    """A step's loss was not finite: the run ends as "diverged" (no update was applied)."""

    def __init__(self, loss: float):
        super().__init__(f"non-finite loss {loss}")
        self.loss = loss


class Trainer:
    """Holds the state of one run; `run()` trains it to the end (or resumes it)."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path, device: str | torch.device | None = None):
        self.cfg = cfg.validate()
        self.run_dir = Path(run_dir)
        self.device = resolve_device(device)
        if os.environ.get(FORCE_DIST_ENV) == "1" and not (dist.is_available() and dist.is_initialized()):
            init_single_process_group(self.device)
        self.dist = dist_info()
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        torch.manual_seed(cfg.train.seed)
        self.dataset: Dataset = build_dataset(cfg.data)
        self.num_classes = getattr(self.dataset, "num_classes", 0)
        self.model = build_model(cfg.model, tuple(self.dataset.shape), self.num_classes).to(self.device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        tc = cfg.train
        self.opt = torch.optim.Adam(self.model.parameters(), lr=tc.lr, betas=(tc.adam_beta1, tc.adam_beta2),
                                    weight_decay=tc.weight_decay)
        self.bounds = phase_boundaries(cfg)
        self.total_steps = self.bounds[-1]
        self.v_time = build_v_time(cfg)  # DTD or a user's v_time piece; None: the sampler's own v rows
        self.v_time_hooks = self.v_time if self.v_time is not None else VTimePiece()  # no-ops without a piece
        self.step = 0
        self.kept_epoch_at_step = {round(e * tc.steps_per_epoch): e for e in tc.keep_epochs}
        self._stop_after: int | None = None  # tests: stop right after this step's checkpoint, as a kill would
        self.evaluator = Evaluator(cfg, self.dataset, self.device)
        self.autocast = self.device.type == "cuda" and tc.precision in ("auto", "bf16")
        self._objectives: dict[int, object] = {}

    # -- state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.opt.state_dict(),
            "v_time": self.v_time_hooks.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "config": self.cfg.to_dict(),
        }

    def load_state_dict(self, state: dict, optimizer: bool = True) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        if optimizer:
            self.opt.load_state_dict(state["optimizer"])
        v_time_state = state.get("v_time", state.get("dtd"))  # "dtd": checkpoints written before v_time pieces
        if v_time_state:
            self.v_time_hooks.load_state_dict(v_time_state)
        self.step = int(state["step"])
        torch.set_rng_state(state["torch_rng"])

    def save_checkpoint(self) -> None:
        if not self.dist.is_main:
            return
        state = self.state_dict()
        last = checkpoint_path(self.run_dir)
        if last.exists():  # keep the previous good checkpoint: a hard link, then last.pt is replaced atomically
            prev_tmp = last.with_name(f".{PREV_CKPT}.{os.getpid()}.tmp")
            prev_tmp.unlink(missing_ok=True)
            os.link(last, prev_tmp)
            os.replace(prev_tmp, last.with_name(PREV_CKPT))
        atomic_torch_save(last, state)
        if self.step in self.kept_epoch_at_step:
            atomic_torch_save(checkpoint_path(self.run_dir, self.kept_epoch_at_step[self.step]), state)

    def restore(self) -> None:
        """Resume this run from its last checkpoint, or start from the configured parent run's."""
        last = checkpoint_path(self.run_dir)
        state = self._load_first_valid([last, last.with_name(PREV_CKPT)])
        if state is not None:
            self.load_state_dict(state)
            if self.dist.is_main:
                truncate_jsonl(self.run_dir / METRICS_FILE, self.step)
                truncate_jsonl(self.run_dir / EVAL_FILE, self.step)
            return
        init = self.cfg.init
        if init.run_dir:
            parent = checkpoint_path(Path(init.run_dir), init.epoch)
            if not parent.exists():
                raise FileNotFoundError(f"init.run_dir: no checkpoint {parent} (has the parent run finished "
                                        f"epoch {init.epoch:g}? keep it with train.keep_epochs)")
            self.load_state_dict(torch.load(parent, map_location=self.device, weights_only=False),
                                 optimizer=init.load_optimizer)
            if self.step >= self.total_steps:
                raise ConfigError(f"init: the parent checkpoint is at step {self.step}, past this run's "
                                  f"{self.total_steps} steps")

    def _load_first_valid(self, paths: list[Path]) -> dict | None:
        """The first of `paths` that loads as a complete checkpoint; an unreadable one (a crash mid-write on a
        file system without atomic rename, a torn copy) is reported and skipped, never used."""
        for path in paths:
            if not path.exists():
                continue
            try:
                state = torch.load(path, map_location=self.device, weights_only=False)
                if not isinstance(state, dict) or not {"step", "model", "ema", "optimizer"} <= set(state):
                    raise ValueError("not a complete checkpoint")
                return state
            except Exception as exc:  # noqa: BLE001 - any unreadable file is skipped the same way
                print(f"dynamics: skipping unreadable checkpoint {path}: {type(exc).__name__}: {exc}",
                      file=sys.stderr)
        return None

    # -- the loop ---------------------------------------------------------------------------------------
    def phase_index(self, step: int) -> int:
        return next(i for i in range(len(self.bounds) - 1) if step < self.bounds[i + 1])

    def objective(self, phase: int):
        if phase not in self._objectives:
            self._objectives[phase] = build_objective(self.cfg, self.cfg.resolved_phases()[phase],
                                                      self.num_classes, self.v_time)
        return self._objectives[phase]

    def epoch(self, step: int) -> float:
        return step / self.cfg.train.steps_per_epoch

    def eval_due(self, step: int) -> bool:
        every = round(self.cfg.eval.every_epochs * self.cfg.train.steps_per_epoch)
        return step == self.total_steps or (every > 0 and step % every == 0)

    def train_step(self) -> dict:
        cfg, step = self.cfg, self.step
        x, y = self.dataset.batch(step, cfg.train.batch_size, cfg.train.seed, self.dist.rank,
                                  self.dist.world_size)
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True) if y is not None else None
        lr = learning_rate(cfg, step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        gen = objective_generator(cfg.train.seed, step, self.dist.rank, self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            out = self.objective(self.phase_index(step))(self.model, x, y, gen, step)
        if not torch.isfinite(out.loss):
            raise Diverged(float(out.loss.detach()))
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        if self.dist.initialized:
            all_reduce_gradients(self.model, self.dist.world_size)
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip)
        self.opt.step()
        update_ema(self.ema, self.model, cfg.train.ema_decay)
        self.step += 1
        loss_v = float(out.loss_v)
        self.v_time_hooks.update(self.step, loss_v)
        stats = {"loss": float(out.loss.detach()), "loss_v": loss_v, "loss_u": float(out.loss_u), "lr": lr}
        if out.noise_ratio is not None:  # O1 contamination: the measured ||noise|| / ||v|| (issue 8.4)
            stats["noise_ratio"] = float(out.noise_ratio)
        return stats

    def evaluate(self) -> None:
        if not self.dist.is_main:
            return
        for row in self.evaluator(self.ema, self.step, final=self.step == self.total_steps):
            append_jsonl(self.run_dir / EVAL_FILE, {"epoch": self.epoch(self.step), **row})
        self.evaluator.grid_png(self.ema, self.run_dir / f"samples_step{self.step:06d}.png")

    def stop_now(self, stop: threading.Event | None) -> bool:
        """Whether a stop was requested (preemption or time-out signal); with several ranks, by any rank."""
        flag = stop is not None and stop.is_set()
        if self.dist.world_size > 1 and stop is not None:
            t = torch.tensor([float(flag)], device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item())
        return flag

    def run(self, progress: bool = False, stop: threading.Event | None = None) -> dict:
        """Train to the end. When `stop` is set (a USR2 handler: preemption or time-out), write a checkpoint at
        the current step and return "interrupted", so the requeued job resumes without losing a step."""
        from tqdm import tqdm

        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.dist.is_main:
            atomic_write_json(self.run_dir / CONFIG_FILE, self.cfg.to_dict())
        self.restore()
        if read_status(self.run_dir).get("state") == "done" and self.step >= self.total_steps:
            return read_status(self.run_dir)
        start_time, start_step = time.time(), self.step
        self._status("running")
        if self.step == 0 and self.cfg.eval.every_epochs > 0:
            self.evaluate()
        with tqdm(total=self.total_steps, initial=self.step, desc=self.cfg.name, dynamic_ncols=True,
                  disable=not (progress and self.dist.is_main)) as bar:
            while self.step < self.total_steps:
                try:
                    stats = self.train_step()
                except Diverged as exc:
                    self._status("diverged", diverged_step=self.step, loss=exc.loss)
                    return read_status(self.run_dir)
                bar.update(1)
                if self.dist.is_main and (self.step % self.cfg.train.log_every == 0 or self.step == self.total_steps):
                    elapsed = max(1e-9, time.time() - start_time)
                    append_jsonl(self.run_dir / METRICS_FILE, {
                        "step": self.step, "epoch": self.epoch(self.step), "phase": self.phase_index(self.step - 1),
                        **stats, "dtd_stage": None,  # a v_time piece's stats (DTD: its stage) fill it
                        **self.v_time_hooks.stats(),
                        "start_step": start_step, "time": elapsed, "steps_per_s": (self.step - start_step) / elapsed})
                if self.eval_due(self.step):
                    self.evaluate()
                if (self.step % self.cfg.train.ckpt_every == 0 or self.step == self.total_steps
                        or self.step in self.kept_epoch_at_step):
                    self.save_checkpoint()
                    self._status("running")
                if self._stop_after is not None and self.step >= self._stop_after:
                    return read_status(self.run_dir)
                if self.stop_now(stop):
                    self.save_checkpoint()
                    self._status("interrupted", reason="stop signal (preemption or time-out): checkpointed")
                    return read_status(self.run_dir)
        self._status("done")
        return read_status(self.run_dir)

    def _status(self, state: str, **fields) -> None:
        if self.dist.is_main:
            write_status(self.run_dir, state, step=self.step, total_steps=self.total_steps,
                         pid=os.getpid(), **fields)


def train(cfg: RunConfig, run_dir: str | Path, device: str | torch.device | None = None,
          progress: bool = False, stop: threading.Event | None = None) -> dict:
    """Train (or resume) one run into `run_dir`; returns its final status.

    The run directory is locked for the run's life (one writer only; see results.run_lock). A failure
    anywhere after the lock is taken, building the dataset or the model included, is recorded in status.json
    as "failed" with its reason, then re-raised; a run that finds the lock held changes nothing."""
    run_dir = Path(run_dir)
    cfg.validate()  # bad input: one clear error, nothing written
    if not dist_info().is_main:
        return Trainer(cfg, run_dir, device).run(progress=False, stop=stop)
    with run_lock(run_dir):
        try:
            return Trainer(cfg, run_dir, device).run(progress=progress, stop=stop)
        except RunLockedError:
            raise
        except Exception as exc:
            step = int(read_status(run_dir).get("step", 0))
            write_status(run_dir, "failed", step=step, total_steps=cfg.total_steps(), pid=os.getpid(),
                         error=f"{type(exc).__name__}: {exc}")
            raise
