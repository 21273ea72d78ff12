"""One run as a submitit job (RunJob): USR2 and time-outs become a checkpoint and a requeue; a job with several
tasks (one rank each) starts torch.distributed before the trainer, which then joins it (docs/distributed.md); a
failure before the trainer starts is recorded."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import submitit

from ..config import RunConfig
from ..distributed import LAUNCH_VARS, TIMEOUT_ENV, no_gpu_error, timeout
from ..results import (
    RunLockedError,
    read_status,
    run_lock,
    write_status,
)

if TYPE_CHECKING:
    import torch

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

    def __init__(self, threads: int = 0, signal_delay_s: float = 90.0, cuda: bool | None = None,
                 dist_timeout_s: float | None = None):
        self.threads = threads  # torch CPU threads (local runs: 1 each); 0 leaves torch's default
        self.signal_delay_s = signal_delay_s  # how long before the time limit SLURM sends USR2 (the profile's)
        self.cuda = cuda  # True: the job was given GPUs and must train on one; None: CUDA when visible
        self.dist_timeout_s = dist_timeout_s  # the collective time-out (the profile's); None: the environment's

    def __call__(self, config: dict, run_dir: str, root: str) -> dict:
        import torch

        from ..train import train

        if self.threads > 0:
            torch.set_num_threads(self.threads)
        if self.dist_timeout_s is not None:  # read by distributed.timeout(), here and in the trainer
            os.environ[TIMEOUT_ENV] = f"{float(self.dist_timeout_s):g}"
        try:
            cfg = absolute_init(config, root)
            world, device = setup_distributed(self.cuda)
        except Exception as exc:
            _record_failure(Path(run_dir), exc)  # e.g. no GPU for this task, or torch.distributed cannot start
            raise
        stop, requeue = self._take_over_usr2()
        rank = torch.distributed.get_rank() if world > 1 else 0
        try:
            status = train(cfg, run_dir, device=device, stop=stop)
        finally:
            if world > 1:
                torch.distributed.destroy_process_group()
        if world > 1:  # each task's own log: where every rank ended
            print(f"rank {rank} of {world}: {status.get('state')} at step {status.get('step')}", flush=True)
        if stop.is_set() and status.get("state") == "interrupted" and requeue is not None:
            requeue(signal.SIGUSR2, None)  # submitit: rank 0 calls checkpoint(), requeues the job and exits
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
        job = RunJob(self.threads, self.signal_delay_s, self.cuda, self.dist_timeout_s)
        return submitit.helpers.DelayedSubmission(job, config, run_dir, root)


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


def task_device(cuda: bool | None, local_rank: int, rank: int) -> torch.device:
    """This task's device. Where the task sees several GPUs (every task sees the node's), it takes the
    local_rank-th; where it sees exactly one, that one (SLURM bound one GPU to each task: --gpus-per-task,
    --gpu-bind). The GPUs are never renumbered (submitit's CUDA_VISIBLE_DEVICES=local_rank picks the wrong GPU,
    or none, under such a binding). A job given GPUs (cuda True) that sees none for this task fails; it never
    falls back to the CPU. cuda None: the CPU when no GPU is visible."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cuda is False or (cuda is None and count == 0):
        return torch.device("cpu")
    if count == 1:
        return torch.device("cuda", 0)
    if local_rank < count:
        return torch.device("cuda", local_rank)
    raise no_gpu_error(rank, count, local_rank)


def setup_distributed(cuda: bool | None) -> tuple[int, torch.device | None]:
    """(world size, device) of this task of a submitit job. Rendezvous variables inherited from the environment
    the job was submitted from (sbatch exports it) are dropped: they describe another job. One task: no process
    group (the trainer's device, checked when the job was given GPUs). Several: RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR (the first node) and MASTER_PORT (drawn from the job id) from submitit's task environment,
    then the process group, nccl on CUDA and gloo on the CPU, with the collective time-out
    distributed.timeout(); the trainer joins it."""
    import torch

    try:
        env = submitit.JobEnvironment()
        world, local_rank, rank = env.num_tasks, env.local_rank, env.global_rank
    except RuntimeError:  # not in a submitit job
        return 1, None
    if env.cluster == "debug":  # in this process: its environment is the caller's, left as it is
        return 1, None
    for key in (*LAUNCH_VARS, "LOCAL_WORLD_SIZE"):
        os.environ.pop(key, None)
    if world <= 1:
        return 1, (task_device(True, local_rank, rank) if cuda else None)
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    device = task_device(cuda, local_rank, rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":  # nccl binds this process to its device
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(backend, init_method="env://", timeout=timeout())
    print(f"rank {rank} of {world} (local rank {local_rank} on {env.hostname}): {backend} on {device}, "
          f"collective time-out {timeout().total_seconds():g} s", flush=True)
    return world, device
