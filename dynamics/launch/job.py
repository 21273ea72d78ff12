"""One run as a submitit job (RunJob): USR2 and time-outs become a checkpoint and a requeue; a job with several
tasks sets up torch.distributed; a failure before the trainer starts is recorded."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import submitit

from ..config import RunConfig
from ..results import (
    RunLockedError,
    read_status,
    run_lock,
    write_status,
)

# ----------------------------------------------------------------------------------------------------
# the job


def absolute_init(config: dict, root: str | Path) -> RunConfig:
    """The config a job trains: a relative `init.run_dir` (the registry's `<scale>/<study>/<hash>`) is made
    absolute under the results root."""
    cfg = RunConfig.from_dict(config)
    if cfg.init.run_dir and not os.path.isabs(cfg.init.run_dir):
        cfg.init.run_dir = str(Path(root) / cfg.init.run_dir)
    return cfg


class RunJob(submitit.helpers.Checkpointable):
    """One run as a submitit job. Checkpointable: on timeout or preemption (USR2) the trainer writes a checkpoint
    at the step it is on, then submitit calls `checkpoint()`, which requeues the same run; the requeued job
    resumes from checkpoints/last.pt without losing a step."""

    def __init__(self, threads: int = 0, signal_delay_s: float = 90.0):
        self.threads = threads  # torch CPU threads (local runs: 1 each); 0 leaves torch's default
        self.signal_delay_s = signal_delay_s  # how long before the time limit SLURM sends USR2 (the profile's)

    def __call__(self, config: dict, run_dir: str, root: str) -> dict:
        import torch

        from ..train import train

        if self.threads > 0:
            torch.set_num_threads(self.threads)
        try:
            cfg = absolute_init(config, root)
            world, device = _setup_distributed()
        except Exception as exc:
            _record_failure(Path(run_dir), exc)  # e.g. torch.distributed cannot start on this node
            raise
        stop, requeue = self._take_over_usr2()
        try:
            status = train(cfg, run_dir, device=device, stop=stop)
        finally:
            if world > 1:
                torch.distributed.destroy_process_group()
        if stop.is_set() and status.get("state") == "interrupted" and requeue is not None:
            requeue(signal.SIGUSR2, None)  # submitit: checkpoint() -> scontrol requeue -> exit
        return status

    def _take_over_usr2(self) -> tuple[threading.Event, Any]:
        """Replace submitit's USR2 handler (which requeues at once, losing the steps since the last checkpoint)
        by one that asks the trainer to stop at a step boundary; submitit's handler runs after the checkpoint.
        Its time-out test is replaced too: submitit counts any signal in a job shorter than 10 minutes as a
        time-out (using up max_num_timeout); here it is one only when the time limit is near."""
        stop = threading.Event()
        submitit_handler = signal.getsignal(signal.SIGUSR2)
        if not callable(submitit_handler) or threading.current_thread() is not threading.main_thread():
            return stop, None
        owner = getattr(submitit_handler, "__self__", None)
        if owner is not None and hasattr(owner, "has_timed_out"):
            owner.has_timed_out = lambda: _near_time_limit(owner, self.signal_delay_s)
        signal.signal(signal.SIGUSR2, lambda signum, frame: stop.set())
        return stop, submitit_handler

    def checkpoint(self, config: dict, run_dir: str, root: str) -> submitit.helpers.DelayedSubmission:
        """Requeue the same run; it resumes from its last checkpoint."""
        return submitit.helpers.DelayedSubmission(RunJob(self.threads, self.signal_delay_s), config, run_dir, root)


def _record_failure(run_dir: Path, exc: BaseException) -> None:
    """status.json "failed" with the reason, for a job that failed before its trainer started (unless another
    process holds the run directory, which is then its writer)."""
    with contextlib.suppress(RunLockedError):  # the lock's holder writes this run's status, not us
        with run_lock(run_dir, wait_s=0):
            status = read_status(run_dir)
            write_status(run_dir, "failed", step=int(status.get("step", 0)), error=f"{type(exc).__name__}: {exc}")


def _near_time_limit(handler: Any, signal_delay_s: float) -> bool:
    """A USR2 is a time-out when the job's time limit is at most the signal delay away, plus SLURM's ~30 s
    signal tick and a margin; otherwise it is a preemption (scancel -s USR2), which does not count. The time
    left comes from SLURM (a limit may be changed while the job runs), else from the submitted limit."""
    left = slurm_time_left_s(os.environ.get("SLURM_JOB_ID", ""))
    if left is None:
        left = handler._delayed._timeout_min * 60 - (time.time() - handler._start_time)
    return left <= signal_delay_s + 60


def slurm_time_left_s(job_id: str) -> float | None:
    """Seconds left before a SLURM job's time limit, negative once past it; None if unknown (no such job,
    UNLIMITED). Computed as limit minus time used (squeue %l and %M): squeue's own time left (%L) prints
    INVALID for a job past its limit, which is exactly the job a limit lowered under it (scontrol) gets."""
    if not job_id:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%l|%M"], capture_output=True, text=True, timeout=10)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    limit, _, used = out.stdout.strip().partition("|")
    limit_s, used_s = slurm_duration_s(limit), slurm_duration_s(used)
    return None if limit_s is None or used_s is None else limit_s - used_s


def slurm_duration_s(text: str) -> int | None:
    """A SLURM duration, [days-][hours:]minutes:seconds, in seconds; None for anything else (UNLIMITED, INVALID)."""
    days, _, clock = text.strip().rpartition("-")
    parts = clock.split(":")
    if not clock or not all(p.isdigit() for p in parts) or len(parts) > 3 or (days and not days.isdigit()):
        return None
    seconds = 0
    for p in parts:
        seconds = seconds * 60 + int(p)
    return seconds + int(days or 0) * 86400


def _setup_distributed() -> tuple[int, str | None]:
    """(world size, device). Several tasks in one job: torch.distributed from submitit's environment, with
    CUDA_VISIBLE_DEVICES narrowed to the task's own GPU. The trainer all-reduces gradients itself."""
    import torch

    try:
        world = submitit.JobEnvironment().num_tasks
    except RuntimeError:  # an in-process (debug) job has no submitit task environment
        return 1, None
    if world <= 1:
        return 1, None
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=True)
    cuda = torch.cuda.is_available()
    torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")
    return world, "cuda:0" if cuda else "cpu"
