"""The shared MeanFlow trainer: one loop for every study and every scale.

Adam with a constant or warm-up + cosine learning rate, EMA, bf16 autocast on GPU, data parallel over
torch.distributed (distributed.py), atomic checkpoints and exact resume (checkpoint.py), the run's status
and logs (runlog.py), periodic evaluation of the EMA model, and a non-finite loss ending the run as
"diverged". N ranks train the same run as one process with the same global batch (docs/distributed.md).
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
from .config import ConfigError, RunConfig, phase_boundaries
from .curriculum import build_objective, build_v_time
from .data import Dataset, build_dataset
from .distributed import (
    FORCE_DIST_ENV,
    DistInfo,
    agree_on_start,
    all_reduce_gradients,
    dist_info,
    init_from_env,
    setup,
    sigterm_raises,
    state_digest,
    step_sync,
    wrap_model,
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
        if self.dist.world_size > 1 and cfg.objective.jvp == "compiled":
            raise ConfigError("objective.jvp=compiled is refused with several ranks (torch.func.jvp under "
                              "torch.compile does not trace through DDP); use rows, fused or full")
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
        self._ddp: nn.Module | None = None
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
        """Resume this run from its last checkpoint (returns True), or start from the configured parent run's.
        A checkpoint written at another world size is refused: each rank's draws (t, r, noise) come from
        streams at (seed, step, rank), so the same global batch at another world size is another run."""
        state = self.checkpoints.load_latest()
        if state is not None:
            written = int(state.get("world_size", self.dist.world_size))
            if written != self.dist.world_size:
                raise ConfigError(f"resume: {self.checkpoints.last} (step {state['step']}) was written by {written} "
                                  f"rank(s) and this job has {self.dist.world_size}; the per-rank draws depend on "
                                  f"the world size, so resume with {written} rank(s)")
            self.load_state_dict(state)
            return True
        if self.cfg.init.run_dir:
            init = self.cfg.init
            self.load_state_dict(self.checkpoints.load_parent(init.run_dir, init.epoch),
                                 optimizer=init.load_optimizer)
            if self.step >= self.total_steps:
                raise ConfigError(f"init: the parent checkpoint is at step {self.step}, past this run's "
                                  f"{self.total_steps} steps")
        return False

    def start(self) -> bool:
        """restore(), then the ranks agree on the step and the model they start from (a rank that could not
        read the checkpoint fails them all, in one line, before anything is written); returns restore()'s."""
        error = None
        try:
            resumed = self.restore()
        except Exception as exc:
            if self.dist.world_size == 1:
                raise
            resumed, error = False, f"{type(exc).__name__}: {exc}"
        digest = state_digest(self.step, self.model, self.v_time.state_dict())
        agree_on_start(self.dist, self.step, digest, error, str(self.checkpoints.last))
        return resumed

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

    @property
    def ddp(self) -> nn.Module | None:
        """The DDP wrapper of the model when a process group is up (built at the first step), else None."""
        if self._ddp is None and self.dist.initialized:
            self._ddp = wrap_model(self.model, self.device)
        return self._ddp

    def loss_on(self, objective, x: torch.Tensor, d: Draw, gen: torch.Generator | None = None) -> LossOutput:
        """This rank's loss at the current step for the draw `d`. Under DDP the graph-building forward goes
        through the wrapper and the `rows` strategy's JVP and guidance run on the model itself (the target is
        computed apart, under no_grad); the other strategies' JVP builds the graph, so it runs through it."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            if self.ddp is None:
                return objective.loss_at(self.model, x, d, self.step, gen)
            target = self.model if objective.jvp_strategy == "rows" else None
            return objective.loss_at(self.ddp, x, d, self.step, gen, target_model=target)

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
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
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
            self.log.evals(self.evaluator(self.ema, self.step, final=self.step == self.total_steps),
                           self.epoch(self.step))
            self.evaluator.grid_png(self.ema, self.run_dir / f"samples_step{self.step:06d}.png")

    # -- the loop ---------------------------------------------------------------------------------------
    def run(self, progress: bool = False, stop: threading.Event | None = None) -> dict:
        """Train to the end; returns the final status. When `stop` is set on any rank (a USR2 handler:
        preemption or time-out), every rank stops at the same step, a checkpoint is written there and the run
        is "interrupted", so the requeued job resumes without losing a step."""
        tc = self.cfg.train
        self._stop, self.stop_requested = stop, False
        resumed = self.start()
        self.log.write_config(self.cfg.to_dict())
        if resumed:
            self.log.resume_at(self.step)
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
                if self.stop_requested:
                    self.checkpoints.save(self.state_dict())
                    return self._end("interrupted", reason="stop signal (preemption or time-out): checkpointed")
                bar.update(1)
                if self.step % tc.log_every == 0 or self.step == self.total_steps:
                    self.log.metrics({"step": self.step, "epoch": self.epoch(self.step),
                                      "phase": self.phase_index(self.step - 1), **stats, **self.v_time.stats()})
                if self.eval_due(self.step):
                    self.evaluate()
                if self.checkpoints.due(self.step, tc.ckpt_every, self.total_steps):
                    self.checkpoints.save(self.state_dict())
                    self.log.status("running", self.step)
        return self._end("done")

    def _end(self, state: str, **fields) -> dict:
        """The final status: status.json's (main rank), or this rank's own view of it (the others)."""
        self.log.status(state, self.step, **fields)
        if self.dist.is_main:
            return self.log.read_status()
        return {"state": state, "step": self.step, "total_steps": self.total_steps, "rank": self.dist.rank,
                **fields}


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
