"""The shared MeanFlow trainer: one loop for every study and every scale.

Adam with a constant or warm-up + cosine learning rate, EMA, bf16 autocast on GPU, data parallel over
torch.distributed (distributed.py), atomic checkpoints and exact resume (checkpoint.py), the run's status
and logs (runlog.py), periodic evaluation of the EMA model, and a non-finite loss ending the run as
"diverged". The objective is the phase's MeanFlowLoss (curriculum.build_objective); the run's v_time piece
is one object, the base piece's no-ops when the config names none.

Randomness is stateless: the batch and the objective's draws at a step are pure functions of
(seed, step, rank), so a resumed run repeats an uninterrupted one exactly without saving RNG streams.
"""

from __future__ import annotations

import copy
import math
import os
import threading
from pathlib import Path

import torch
from torch import nn

from .checkpoint import PREV_CKPT, Checkpointer
from .config import ConfigError, RunConfig, phase_boundaries
from .curriculum import build_objective, build_v_time
from .data import Dataset, build_dataset
from .distributed import FORCE_DIST_ENV, DistInfo, all_reduce_gradients, any_rank, dist_info, setup
from .metrics.evaluate import Evaluator
from .models import build_model
from .pieces import VTimePiece
from .progress import progress as progress_bar
from .results import RunLockedError, read_status, run_lock, write_status
from .rng import stream_seed
from .runlog import RunLog

__all__ = ["Diverged", "DistInfo", "FORCE_DIST_ENV", "PREV_CKPT", "Trainer", "all_reduce_gradients", "dist_info",
           "learning_rate", "objective_generator", "train", "update_ema"]


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
        self.cfg, tc = cfg.validate(), cfg.train
        self.run_dir, self.device = Path(run_dir), resolve_device(device)
        self.dist = setup(self.device)
        if tc.threads > 0:
            torch.set_num_threads(tc.threads)
        torch.manual_seed(tc.seed)
        self.dataset: Dataset = build_dataset(cfg.data)
        self.num_classes = getattr(self.dataset, "num_classes", 0)
        self.model = build_model(cfg.model, tuple(self.dataset.shape), self.num_classes).to(self.device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=tc.lr, betas=(tc.adam_beta1, tc.adam_beta2),
                                    weight_decay=tc.weight_decay)
        self.bounds = phase_boundaries(cfg)
        self.total_steps = self.bounds[-1]
        piece = build_v_time(cfg)  # DTD or a user's piece; the base piece draws as the sampler alone does
        self.v_time: VTimePiece = piece if piece is not None else VTimePiece()
        self.step = 0
        keep = {round(e * tc.steps_per_epoch): e for e in tc.keep_epochs}
        self.checkpoints = Checkpointer(self.run_dir, self.device, self.dist.is_main, keep)
        self.log = RunLog(self.run_dir, self.dist.is_main, self.total_steps)
        self.evaluator = Evaluator(cfg, self.dataset, self.device)
        self.autocast = self.device.type == "cuda" and tc.precision in ("auto", "bf16")
        self._objectives: dict[int, object] = {}

    # -- state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"step": self.step, "model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.opt.state_dict(), "v_time": self.v_time.state_dict(),
                "torch_rng": torch.get_rng_state(), "config": self.cfg.to_dict()}

    def load_state_dict(self, state: dict, optimizer: bool = True) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        if optimizer:
            self.opt.load_state_dict(state["optimizer"])
        v_time_state = state.get("v_time", state.get("dtd"))  # "dtd": the key in older checkpoints
        if v_time_state:
            self.v_time.load_state_dict(v_time_state)
        self.step = int(state["step"])
        torch.set_rng_state(state["torch_rng"])

    def restore(self) -> None:
        """Resume this run from its last checkpoint, or start from the configured parent run's."""
        state = self.checkpoints.load_latest()
        if state is not None:
            self.load_state_dict(state)
            self.log.resume_at(self.step)
        elif self.cfg.init.run_dir:
            init = self.cfg.init
            self.load_state_dict(self.checkpoints.load_parent(init.run_dir, init.epoch),
                                 optimizer=init.load_optimizer)
            if self.step >= self.total_steps:
                raise ConfigError(f"init: the parent checkpoint is at step {self.step}, past this run's "
                                  f"{self.total_steps} steps")

    # -- one step ---------------------------------------------------------------------------------------
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
        """One optimiser step on this step's batch and draws; returns the row's loss columns."""
        tc, step, rank = self.cfg.train, self.step, self.dist.rank
        x, y = self.dataset.batch(step, tc.batch_size, tc.seed, rank, self.dist.world_size)
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True) if y is not None else None
        lr = learning_rate(self.cfg, step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        gen = objective_generator(tc.seed, step, rank, self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            out = self.objective(self.phase_index(step))(self.model, x, y, gen, step)
        if not torch.isfinite(out.loss):
            raise Diverged(float(out.loss.detach()))
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        if self.dist.initialized:
            all_reduce_gradients(self.model, self.dist.world_size)
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.opt.step()
        update_ema(self.ema, self.model, tc.ema_decay)
        self.step += 1
        loss_v = float(out.loss_v)
        self.v_time.update(self.step, loss_v)
        stats = {"loss": float(out.loss.detach()), "loss_v": loss_v, "loss_u": float(out.loss_u), "lr": lr}
        if out.noise_ratio is not None:  # O1 contamination: the measured ||noise|| / ||v||
            stats["noise_ratio"] = float(out.noise_ratio)
        return stats

    def evaluate(self) -> None:
        if self.dist.is_main:
            self.log.evals(self.evaluator(self.ema, self.step, final=self.step == self.total_steps),
                           self.epoch(self.step))
            self.evaluator.grid_png(self.ema, self.run_dir / f"samples_step{self.step:06d}.png")

    # -- the loop ---------------------------------------------------------------------------------------
    def run(self, progress: bool = False, stop: threading.Event | None = None) -> dict:
        """Train to the end; returns the final status. When `stop` is set (a USR2 handler: preemption or
        time-out), write a checkpoint at the current step and return "interrupted", so the requeued job
        resumes without losing a step."""
        tc = self.cfg.train
        self.log.write_config(self.cfg.to_dict())
        self.restore()
        if self.log.read_status().get("state") == "done" and self.step >= self.total_steps:
            return self.log.read_status()
        self.log.start(self.step)
        self.log.status("running", self.step)
        if self.step == 0 and self.cfg.eval.every_epochs > 0:
            self.evaluate()
        with progress_bar(self.total_steps, initial=self.step, desc=self.cfg.name,
                          enabled=progress and self.dist.is_main) as bar:
            while self.step < self.total_steps:
                try:
                    stats = self.train_step()
                except Diverged as exc:
                    return self._end("diverged", diverged_step=self.step, loss=exc.loss)
                bar.update(1)
                if self.step % tc.log_every == 0 or self.step == self.total_steps:
                    self.log.metrics({"step": self.step, "epoch": self.epoch(self.step),
                                      "phase": self.phase_index(self.step - 1), **stats, **self.v_time.stats()})
                if self.eval_due(self.step):
                    self.evaluate()
                if self.checkpoints.due(self.step, tc.ckpt_every, self.total_steps):
                    self.checkpoints.save(self.state_dict())
                    self.log.status("running", self.step)
                if stop is not None and any_rank(stop.is_set(), self.dist, self.device):
                    self.checkpoints.save(self.state_dict())
                    return self._end("interrupted", reason="stop signal (preemption or time-out): checkpointed")
        return self._end("done")

    def _end(self, state: str, **fields) -> dict:
        self.log.status(state, self.step, **fields)
        return self.log.read_status()


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
