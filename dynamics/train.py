"""The shared MeanFlow trainer: one loop for every study and every scale.

Adam with a constant or warm-up + cosine learning rate, EMA, periodic evaluation of the EMA model, and a
non-finite loss ending the run as "diverged". The Trainer is a loop over parts, each in its own module:
data parallel and bf16 autocast (distributed.DataParallel), what a run starts from and its atomic
checkpoints (checkpoint.Checkpointer), the run's status and logs (runlog.RunLog). N ranks train the same
run as one process with the same global batch (docs/distributed.md).
The objective is the phase's MeanFlowLoss (curriculum.build_objective); the run's v_time piece
is one object, the base piece's no-ops when the config names none.

Randomness is stateless: the batch and the objective's draws at a step are pure functions of
(seed, step, rank), so a resumed run repeats an uninterrupted one exactly without saving RNG streams.
"""

from __future__ import annotations

import copy
import math
import threading
from pathlib import Path

import torch
from torch import nn

from .checkpoint import PREV_CKPT, Checkpointer
from .config import RunConfig, phase_boundaries
from .curriculum import build_objective, build_v_time
from .data import Dataset, build_dataset
from .distributed import (
    FORCE_DIST_ENV,
    DataParallel,
    DistInfo,
    all_reduce_gradients,
    dist_info,
    init_from_env,
    setup,
    sigterm_raises,
    start_together,
    step_sync,
)
from .meanflow.loss import Draw, LossOutput
from .metrics.evaluate import Evaluator
from .models import build_model
from .pieces import VTimePiece
from .progress import progress as progress_bar
from .results import RunLockedError, run_lock
from .rng import stream_seed
from .runlog import RunLog, record_failure

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


def eval_due(cfg: RunConfig, step: int, total_steps: int) -> bool:
    """Every eval.every_epochs, and at the end."""
    every = round(cfg.eval.every_epochs * cfg.train.steps_per_epoch)
    return step == total_steps or (every > 0 and step % every == 0)


class Diverged(RuntimeError):
    """A step's loss was not finite: the run ends as "diverged" (no update was applied)."""

    def __init__(self, loss: float):
        super().__init__(f"non-finite loss {loss}")
        self.loss = loss


class Trainer:
    """One run's state and the loop over its parts: the checkpointer, the run log, the objective of each
    phase, the v_time piece and the data-parallel wrapper. `run()` trains it to the end (or resumes it)."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path, device: str | torch.device | None = None):
        self.cfg, tc = cfg.validate(), cfg.train
        self.run_dir, self.device = Path(run_dir), resolve_device(device)
        self.dist = setup(self.device, cfg.objective.jvp)
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
        self.parallel = DataParallel(self.model, self.device, self.dist, tc.precision)
        self._objectives: dict[int, object] = {}
        self._stop: threading.Event | None = None
        self.stop_requested = False

    # -- state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"step": self.step, "model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.opt.state_dict(), "v_time": self.v_time.state_dict(),
                "torch_rng": torch.get_rng_state(), "config": self.cfg.to_dict(), "world_size": self.dist.world_size}

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

    def restore(self) -> bool:
        """Load what this run starts from (Checkpointer.load_start); True when it resumes its own checkpoint."""
        state, resumed = self.checkpoints.load_start(self.dist.world_size, self.cfg.init, self.total_steps)
        if state is not None:
            self.load_state_dict(state, optimizer=resumed or self.cfg.init.load_optimizer)
        return resumed

    def start(self) -> bool:
        """restore() on every rank, then the ranks' agreement on the start (distributed.start_together)."""
        return start_together(self.dist, self.restore, lambda: (self.step, self.model, self.v_time.state_dict()),
                              str(self.checkpoints.last))

    # -- one step ---------------------------------------------------------------------------------------
    def phase_index(self, step: int) -> int:
        return next(i for i in range(len(self.bounds) - 1) if step < self.bounds[i + 1])

    def objective(self, phase: int):
        if phase not in self._objectives:
            self._objectives[phase] = build_objective(self.cfg, self.cfg.resolved_phases()[phase],
                                                      self.num_classes, self.v_time)
        return self._objectives[phase]

    def loss_on(self, objective, x: torch.Tensor, d: Draw, gen: torch.Generator | None = None) -> LossOutput:
        """This rank's loss at the current step for the draw `d` (through DDP when a process group is up)."""
        return self.parallel.loss_at(objective, x, d, self.step, gen)

    def train_step(self) -> dict | None:
        """One optimiser step on this step's batch and draws; returns the row's loss columns (the global
        batch's). When a rank asked to stop, no update is applied and None is returned (stop_requested)."""
        tc, step, rank = self.cfg.train, self.step, self.dist.rank
        x, y = self.dataset.batch(step, tc.batch_size, tc.seed, rank, self.dist.world_size)
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True) if y is not None else None
        lr = learning_rate(self.cfg, step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        gen = objective_generator(tc.seed, step, rank, self.device)
        objective = self.objective(self.phase_index(step))
        with self.parallel.autocast():
            d = objective.draw(x, y, gen)
        out = self.loss_on(objective, x, d, gen)
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        # one all-reduce: every rank gets the same losses, non-finite verdict and stop flag
        g = step_sync(out, self._stop is not None and self._stop.is_set(), self.dist, self.device)
        if g.nonfinite:
            raise Diverged(g.loss)
        if g.stop:
            self.stop_requested = True
            return None
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.opt.step()
        update_ema(self.ema, self.model, tc.ema_decay)
        self.step += 1
        self.v_time.update(self.step, g.loss_v)
        stats = {"loss": g.loss, "loss_v": g.loss_v, "loss_u": g.loss_u, "lr": lr}
        if g.noise_ratio is not None:  # O1 contamination: the measured ||noise|| / ||v||
            stats["noise_ratio"] = g.noise_ratio
        return stats

    def evaluate(self) -> None:
        if self.dist.is_main:
            final = self.step == self.total_steps
            self.log.evals(self.evaluator(self.ema, self.step, final=final), self.step / self.cfg.train.steps_per_epoch)
            self.evaluator.grid_png(self.ema, self.run_dir / f"samples_step{self.step:06d}.png")

    # -- the loop ---------------------------------------------------------------------------------------
    def run(self, progress: bool = False, stop: threading.Event | None = None) -> dict:
        """Train to the end; returns the final status. When `stop` is set on any rank (a USR2 handler:
        preemption or time-out), every rank stops at the same step, a checkpoint is written there and the run
        is "interrupted", so the requeued job resumes without losing a step."""
        tc = self.cfg.train
        self._stop, self.stop_requested = stop, False
        done = self.log.begin(self.cfg.to_dict(), resumed=self.start(), step=self.step)  # step: after start()
        if done is not None:
            return done
        if self.step == 0 and self.cfg.eval.every_epochs > 0:
            self.evaluate()
        with progress_bar(self.total_steps, initial=self.step, desc=self.cfg.name,
                          enabled=progress and self.dist.is_main) as bar:
            while self.step < self.total_steps:
                try:
                    stats = self.train_step()
                except Diverged as exc:
                    return self.log.end("diverged", self.step, self.dist.rank, diverged_step=self.step, loss=exc.loss)
                if self.stop_requested:
                    self.checkpoints.save(self.state_dict())
                    return self.log.end("interrupted", self.step, self.dist.rank,
                                        reason="stop signal (preemption or time-out): checkpointed")
                bar.update(1)
                if self.log.metrics_due(self.step, tc.log_every):
                    self.log.metrics({"step": self.step, "epoch": self.step / tc.steps_per_epoch,
                                      "phase": self.phase_index(self.step - 1), **stats, **self.v_time.stats()})
                if eval_due(self.cfg, self.step, self.total_steps):
                    self.evaluate()
                if self.checkpoints.due(self.step, tc.ckpt_every, self.total_steps):
                    self.checkpoints.save(self.state_dict())
                    self.log.status("running", self.step)
        return self.log.end("done", self.step, self.dist.rank)


def train(cfg: RunConfig, run_dir: str | Path, device: str | torch.device | None = None,
          progress: bool = False, stop: threading.Event | None = None) -> dict:
    """Train (or resume) one run into `run_dir`; returns its final status.

    Under a launcher (torchrun: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) this process joins the
    job's process group first (distributed.init_from_env) and leaves it at the end. The run directory is
    locked by the main rank for the run's life (one writer only; see results.run_lock). A failure anywhere
    after the lock is taken, building the dataset or the model included, is recorded in status.json as
    "failed" with its reason, then re-raised; a run that finds the lock held changes nothing. When the main
    rank is gone (killed), another rank whose run fails records "failed" in its place."""
    run_dir = Path(run_dir)
    cfg.validate()  # bad input: one clear error, nothing written
    device, started = init_from_env(device)
    try:
        with sigterm_raises(dist_info().world_size > 1):
            if not dist_info().is_main:
                try:
                    return Trainer(cfg, run_dir, device).run(progress=False, stop=stop)
                except Exception as exc:
                    record_failure(run_dir, cfg.total_steps(), exc, wait_s=0)  # only when the main rank's lock is free
                    raise
            with run_lock(run_dir):
                try:
                    return Trainer(cfg, run_dir, device).run(progress=progress, stop=stop)
                except RunLockedError:
                    raise
                except Exception as exc:
                    record_failure(run_dir, cfg.total_steps(), exc)
                    raise
    finally:
        if started:
            torch.distributed.destroy_process_group()
