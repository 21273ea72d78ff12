"""Running study grids: plan them against the results store, then execute them through submitit.

Plan. Every run of a study at a scale gets a directory `<results>/<scale>/<study>/<hash>` (the hash of its
resolved config, see experiments/registry.py) and an action from what the store holds there:
  run      nothing there yet                      resume   interrupted (killed, timed out): from last.pt
  skip     done                                   keep     failed or diverged (kept unless --rerun-failed)
  rerun    failed, with --rerun-failed: resumes from its last checkpoint (a crash may have been transient)
  restart  diverged, with --rerun-failed: the old directory moves to `.archive/` and the run starts over
  busy     running now in another process or SLURM job (shown queued, requeued or running, from `squeue -r`)
  blocked  a parent it needs will not finish
Before anything is written or submitted, `preflight` checks what a job would fail on at its first line (data
and parent-checkpoint paths), and the `key=value` overrides are kept in `<scale>/<study>/overrides.json` so
that `dynamics status` shows the same grid.

Execute.
  debug  submitit's DebugExecutor: in this process, one run after another, parents first.
  local  submitit's LocalExecutor: one subprocess per run, `--jobs` at once (default: one per CPU core, each
         with 1 torch thread; on a GPU machine at cluster scales, one per GPU). A run starts as soon as the
         parent checkpoint it needs exists (a child of `v-pretrain` at epoch 5 need not wait for epoch 20).
  slurm  submitit's SlurmExecutor: one job array per (dependency wave, study); an array waits for the
         parents' jobs with `--dependency=afterok:...`; sbatch parameters come from a cluster profile
         (slurm/example.toml documents it).
Every job is `RunJob`, a submitit Checkpointable: on timeout or preemption (USR2) the trainer writes a checkpoint
at the step it is on, then submitit calls `checkpoint()`, which requeues the same run, and the trainer resumes it
from checkpoints/last.pt. Whatever kills a job, the trainer holds an exclusive lock on its run directory
(results.run_lock), so a run never has two writers, and a failure anywhere in the job (building the dataset
included) is recorded in status.json with its reason and kept until `--rerun-failed`. A job with several
tasks sets up torch.distributed from submitit's environment.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
import tomllib

from .config import ConfigError, RunConfig, phase_boundaries
from .results import (
    CKPT_DIR,
    CONFIG_FILE,
    EVAL_FILE,
    JOB_FILE,
    METRICS_FILE,
    OVERRIDES_FILE,
    RUN_FILE,
    STATUS_FILE,
    RunLockedError,
    atomic_write_json,
    checkpoint_path,
    last_jsonl_row,
    read_json,
    read_status,
    run_lock,
    run_state,
    write_status,
)

EXECUTORS = ("debug", "local", "slurm")
CLUSTER_SCALES = ("b4", "m2", "l2", "xl2")
TO_EXECUTE = ("run", "resume", "rerun", "restart")
LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # submitit's local default (2 min) would requeue every run


# ----------------------------------------------------------------------------------------------------
# cost estimates


@dataclass(frozen=True)
class StepRate:
    steps_per_s: float  # joint-MeanFlow optimiser steps per second of one run
    device: str
    eval_s: float  # seconds per evaluation in eval.jsonl (0 where FID is computed separately)
    source: str
    origin: str = "built-in figure in dynamics/launch.py STEP_RATES"  # where the figure comes from


# Small scales: measured with `python benchmarks/registry_scale.py --step-rates` (one torch thread per run) on
# this project's 2-core AMD EPYC machine, which other work was sharing: cpu gave 68 joint steps/s alone and
# 28-46 with two runs at once under that load; the table keeps a round 60 (the figure for an idle core).
# Cluster scales: GPU time of one run on ONE H100 (bf16, batch 256); the B/4 figure is an estimate from peers'
# MeanFlow reports (3-4 it/s), the others scale it by DiT forward GFLOPs (B/4 5.56, L/2 80.7, XL/2 118.6 from
# the DiT paper; M/2 ~53.8 = 16/24 of L/2). GFLOP scaling is likely pessimistic for the larger models, which
# use the GPU better than B/4's 64 tokens do. Evaluation (FID-50K) is not included at cluster scales.
STEP_RATES: dict[str, StepRate] = {
    "smoke": StepRate(350.0, "1 CPU thread", 0.12, "measured 390 alone, batch 128 MLP 64x2"),
    "cpu": StepRate(60.0, "1 CPU thread", 1.5, "measured 68 alone, batch 1024 MLP 256x3; 4096 eval samples, sw2"),
    "digits": StepRate(8.0, "1 CPU thread", 8.0, "measured 9.4 alone, batch 256 tiny DiT"),
    "b4": StepRate(3.5, "1 H100", 0.0, "estimate: peers' reports, DiT-B/4 MeanFlow 3-4 it/s at batch 256 bf16"),
    "m2": StepRate(3.5 * 5.56 / 53.8, "1 H100", 0.0, "estimate: B/4's 3.5 it/s x GFLOPs 5.56/53.8"),
    "l2": StepRate(3.5 * 5.56 / 80.7, "1 H100", 0.0, "estimate: B/4's 3.5 it/s x GFLOPs 5.56/80.7"),
    "xl2": StepRate(3.5 * 5.56 / 118.6, "1 H100", 0.0, "estimate: B/4's 3.5 it/s x GFLOPs 5.56/118.6"),
}
# Rates measured on a GPU by `python benchmarks/gpu_check.py --calibrate` replace the built-in figures above:
# {"<scale>": {"steps_per_s", "device", "img_per_s", "batch", "measured", "torch", "cuda"}}. A cluster scale
# without its own measurement scales a measured b4 rate by the DiT forward GFLOPs, as the estimates do.
MEASURED_RATES_FILE = Path(__file__).with_name("measured_rates.json")
DIT_GFLOPS = {"b4": 5.56, "m2": 53.8, "l2": 80.7, "xl2": 118.6}


_MEASURED_CACHE: dict[tuple[str, int], dict] = {}


def _measured_rates(path: Path) -> dict:
    """The file's {scale: rate entry}, read once per modification (a dry run estimates every run of a grid)."""
    try:
        key = (str(path), path.stat().st_mtime_ns)
    except FileNotFoundError:
        return {}
    if key in _MEASURED_CACHE:
        return _MEASURED_CACHE[key]
    try:
        data = json.loads(path.read_text())
        _MEASURED_CACHE[key] = {k: dict(v) for k, v in data.items()}
        return _MEASURED_CACHE[key]
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: not a measured-rates file ({exc}); rewrite it with "
                          f"`python benchmarks/gpu_check.py --calibrate` or delete it") from None


def step_rate(scale: str, path: Path | None = None) -> StepRate:
    """The rate the cost model uses for `scale`: measured (MEASURED_RATES_FILE) where it holds the scale or, for
    a cluster scale, a measured b4 scaled by GFLOPs; else the built-in STEP_RATES figure."""
    path = MEASURED_RATES_FILE if path is None else Path(path)
    measured = _measured_rates(path)
    base = STEP_RATES[scale]
    origin = f"measured by benchmarks/gpu_check.py --calibrate ({path.name})"
    if scale in measured:
        m = measured[scale]
        return StepRate(float(m["steps_per_s"]), str(m.get("device", "1 GPU")), base.eval_s,
                        f"{m.get('device', '?')}, batch {m.get('batch', '?')}, {m.get('measured', '?')}", origin)
    if scale in DIT_GFLOPS and "b4" in measured:
        b4 = step_rate("b4", path)
        return StepRate(b4.steps_per_s * DIT_GFLOPS["b4"] / DIT_GFLOPS[scale], b4.device, base.eval_s,
                        f"B/4's measured {b4.steps_per_s:.2f} it/s x GFLOPs {DIT_GFLOPS['b4']}/{DIT_GFLOPS[scale]}",
                        origin)
    return base


# Relative cost of one step by the phase's loss terms, measured at cpu scale (68 / 79 / 46 steps/s alone; 20.3 /
# 17.7 / 28.2 ms at load 1, one thread): u-only puts every row through the JVP, v-only none. The cpu evaluation
# (4096 samples: 1-, 2-NFE u and 32-NFE v, sliced W2 only) took 1.96 s wall at load 2.5 and 1.8 s of CPU time at
# load 10 (2048 samples: 0.96 s at load 2.5; adding energy distance tripled it); 1.5 s is kept for an idle core.
PHASE_COST = {"both": 1.0, "v": 0.87, "u": 1.4}
# Per small-scale run: python and torch import (1.2 s), the trainer's set-up (1 s, mostly torch.optim.Adam
# importing torch._dynamo), submitit's controller process; measured 2.6 s alone, 4 s under load.
RUN_OVERHEAD_S = 3.0


def estimate_seconds(cfg: RunConfig, start_step: int) -> float:
    """Device seconds to train `cfg` from `start_step` to its end, with its evaluations."""
    rate = step_rate(cfg.scale)
    bounds = phase_boundaries(cfg)
    seconds = 0.0
    for i, phase in enumerate(cfg.resolved_phases()):
        steps = bounds[i + 1] - max(bounds[i], start_step)
        if steps > 0:
            seconds += steps * PHASE_COST[phase.terms] / rate.steps_per_s
    if cfg.scale in CLUSTER_SCALES:
        return seconds
    every = round(cfg.eval.every_epochs * cfg.train.steps_per_epoch)
    total = bounds[-1]
    evals = 1
    if every > 0:
        evals += (total - 1) // every - start_step // every + (1 if start_step == 0 else 0)
    return seconds + evals * rate.eval_s + RUN_OVERHEAD_S


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

        from .train import train

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
    try:
        with run_lock(run_dir, wait_s=0):
            status = read_status(run_dir)
            write_status(run_dir, "failed", step=int(status.get("step", 0)), error=f"{type(exc).__name__}: {exc}")
    except RunLockedError:
        pass


def _near_time_limit(handler: Any, signal_delay_s: float) -> bool:
    """A USR2 is a time-out when the job's time limit is at most the signal delay away, plus SLURM's ~30 s
    signal tick and a margin; otherwise it is a preemption (scancel -s USR2), which does not count. The time
    left comes from SLURM (a limit may be changed while the job runs), else from the submitted limit."""
    left = slurm_time_left_s(os.environ.get("SLURM_JOB_ID", ""))
    if left is None:
        left = handler._delayed._timeout_min * 60 - (time.time() - handler._start_time)
    return left <= signal_delay_s + 60


def slurm_time_left_s(job_id: str) -> float | None:
    """Seconds left before a SLURM job's time limit (squeue %L: [days-][hours:]minutes:seconds); None if unknown."""
    if not job_id:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%L"], capture_output=True, text=True, timeout=10)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    text = out.stdout.strip()
    days, _, clock = text.rpartition("-")
    parts = clock.split(":")
    if not text or not all(p.isdigit() for p in parts) or (days and not days.isdigit()):
        return None  # UNLIMITED, INVALID, or the job has left the queue
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


# ----------------------------------------------------------------------------------------------------
# planning


@dataclass
class PlannedRun:
    study: str
    spec: Any  # experiments.registry.RunSpec
    run_dir: Path
    state: str
    action: str
    start_step: int
    total_steps: int
    job_id: str = ""  # the SLURM job already running or queued for it (action busy)
    note: str = ""

    @property
    def uid(self) -> str:
        return f"{self.study}:{self.spec.key}"

    @property
    def parents(self) -> list[str]:
        return [f"{self.study}:{k}" for k in self.spec.depends_on]

    @property
    def config(self) -> RunConfig:
        return self.spec.config


def _init_step(cfg: RunConfig) -> int:
    if cfg.init.run_dir and cfg.init.epoch >= 0:
        return round(cfg.init.epoch * cfg.train.steps_per_epoch)
    return 0


@dataclass(frozen=True)
class Readiness:
    """May a run start now? `state`: ready | wait (a parent it needs will still deliver) | blocked (one will
    not); `waits_on`: the uids of the parents it waits for; `blocked_by`: the parent that will not deliver."""

    state: str
    waits_on: tuple[str, ...] = ()
    blocked_by: str = ""


def _delivers(parent: PlannedRun, child: PlannedRun) -> bool:
    """Whether what `child` needs from `parent` exists: the kept checkpoint it continues (RunSpec.parent), else
    (a plain dependency) the parent's finished run."""
    ref = child.spec.parent
    if ref is not None and ref.key == parent.spec.key:
        return checkpoint_path(parent.run_dir, ref.epoch).exists()
    return read_status(parent.run_dir).get("state") == "done"


def _still_coming(parent: PlannedRun, pending: Collection[str]) -> bool:
    """A parent that this launch will still train (`pending`), or one trained elsewhere that is still going:
    running now, or a SLURM job of it still queued."""
    if parent.uid in pending:
        return True
    if parent.action != "busy":
        return False
    state = run_state(parent.run_dir)
    return state == "running" or (bool(parent.job_id) and state in ("pending", "interrupted"))


def readiness(run: PlannedRun, by_uid: dict[str, PlannedRun], pending: Collection[str]) -> Readiness:
    """The one answer to "may `run` start?", for planning, the local and debug executors and SLURM's waves and
    dependencies. A run that has its own checkpoint resumes from it and needs no parent; otherwise every parent
    must deliver (`_delivers`), or still be coming (`pending`: the uids this launch will still train)."""
    if checkpoint_path(run.run_dir).exists():
        return Readiness("ready")
    waits = []
    for uid in run.parents:
        parent = by_uid[uid]
        if _delivers(parent, run):
            continue
        if not _still_coming(parent, pending):
            return Readiness("blocked", blocked_by=uid)
        waits.append(uid)
    return Readiness("wait", tuple(waits)) if waits else Readiness("ready")


def plan(studies: list, scale: str, root: str | Path = "results", seeds: int | None = None,
         rerun_failed: bool = False, overrides: list[str] | None = None) -> list[PlannedRun]:
    """Every run of `studies` at `scale`, parents first, with its state in the store and what to do.
    `overrides` (key=value) apply to every run's config, e.g. the data path at cluster scales."""
    root = Path(root).resolve()
    out: list[PlannedRun] = []
    for study in studies:
        for spec in study.runs(scale, seeds, overrides):
            run_dir = root / scale / (spec.owner or study.name) / spec.hash  # a shared run: its owner's directory
            status = read_status(run_dir)
            state = run_state(run_dir, status)
            total = spec.config.total_steps()
            action = {"pending": "run", "interrupted": "resume", "running": "busy", "done": "skip",
                      "failed": "rerun" if rerun_failed else "keep",
                      "diverged": "restart" if rerun_failed else "keep"}[state]
            start = {"run": _init_step(spec.config), "restart": _init_step(spec.config),
                     "skip": total}.get(action, int(status.get("step", 0)))
            job = read_json(run_dir / JOB_FILE)
            note = f"failed: {status['error']}" if state == "failed" and status.get("error") else ""
            out.append(PlannedRun(study.name, spec, run_dir, state, action, start, total,
                                  job_id=str(job.get("job_id", "")) if job.get("executor") == "slurm" else "",
                                  note=note))
    _check_slurm_jobs(out)
    _mark_shared(out)
    by_uid = {r.uid: r for r in out}
    pending = {r.uid for r in out if r.action in TO_EXECUTE}
    for run in out:  # parents come first, so a blocked parent is known before its children
        if run.action not in TO_EXECUTE:
            continue
        ready = readiness(run, by_uid, pending)
        if ready.state == "blocked":
            parent = by_uid[ready.blocked_by]
            run.action, run.note = "blocked", f"needs {parent.spec.key} ({parent.state})"
            pending.discard(run.uid)
    return out


def squeue_states(job_ids: list[str]) -> dict[str, str] | None:
    """{job id: SLURM state} of the jobs still in the queue; None when squeue is not available. `-r` lists
    every array task on its own line (without it, pending tasks print collapsed as `65_[2-3]`)."""
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(job_ids)], capture_output=True,
                             text=True, timeout=30)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    states = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            states[parts[0]] = parts[1]
        elif parts:
            states[parts[0]] = "PENDING"
    return states


def _check_slurm_jobs(runs: list[PlannedRun]) -> None:
    """Runs with a recorded SLURM job: in the queue -> busy, shown `queued` (never started), `requeued` (waiting
    to resume after preemption, time-out or requeue) or `running`; gone while marked running -> resume."""
    ids = [r.job_id for r in runs if r.job_id and r.action != "skip"]
    if not ids:
        return
    states = squeue_states(ids)
    if states is None:
        return  # not on the cluster: trust status.json
    for r in runs:
        if not r.job_id or r.action == "skip":
            continue
        if r.job_id in states:
            started = r.state in ("running", "interrupted") or r.start_step > _init_step(r.config)
            if states[r.job_id] in ("RUNNING", "COMPLETING", "CONFIGURING"):
                r.state = "running"
            else:
                r.state = "requeued" if started else "queued"
            r.action, r.note = "busy", f"SLURM job {r.job_id} {states[r.job_id].lower()}"
        elif r.action == "busy":
            r.state, r.action = "interrupted", "resume"


# ----------------------------------------------------------------------------------------------------
# pre-flight checks and the record of a launch


def config_problems(cfg: RunConfig, grid_dirs: set[str] | None = None) -> list[str]:
    """What a run's first lines would fail on, found before anything is written or submitted: a missing
    data directory or shard index, a missing parent checkpoint (one outside the grid being launched)."""
    problems = []
    if cfg.data.name == "imagenet_latents":
        path = Path(cfg.data.path)
        if not path.is_dir():
            problems.append(f"data.path={cfg.data.path}: no such directory (the latent shards; see "
                            "dynamics/data/imagenet.py)")
        elif not (path / "index.json").is_file():
            problems.append(f"data.path={cfg.data.path}: no index.json there (not a latent shard directory, or "
                            "an incomplete extraction)")
    init = cfg.init
    if init.run_dir and os.path.isabs(init.run_dir) and init.run_dir not in (grid_dirs or set()):
        ckpt = checkpoint_path(Path(init.run_dir), init.epoch)
        if not ckpt.is_file():
            problems.append(f"init.run_dir={init.run_dir}: no checkpoint {ckpt.name} there (the weights to start "
                            "from)")
    return problems


def preflight(todo: list[PlannedRun]) -> list[str]:
    """`config_problems` of every run to execute, each problem once."""
    grid_dirs = {str(r.run_dir) for r in todo}
    problems: dict[str, None] = {}
    for run in todo:
        problems.update(dict.fromkeys(config_problems(run.config, grid_dirs)))
    return list(problems)


def record_overrides(root: Path, scale: str, studies: list, overrides: list[str] | None) -> None:
    """Keep the `key=value` list a grid was launched with beside it, so `dynamics status` sees the same grid."""
    for study in studies:
        path = root / scale / study.name / OVERRIDES_FILE
        if overrides or path.exists():
            atomic_write_json(path, list(overrides or []))


def recorded_overrides(root: str | Path, scale: str, study: str) -> list[str] | None:
    """The overrides `dynamics run` last used for a study at a scale (None: no record)."""
    path = Path(root) / scale / study / OVERRIDES_FILE
    if not path.exists():
        return None
    try:
        return list(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError):
        return None


# ----------------------------------------------------------------------------------------------------
# execution


def _prepare(run: PlannedRun) -> None:
    """Archive a diverged run that restarts, and record the run's identity in run.json."""
    if run.action == "restart" and run.run_dir.exists():
        archive = run.run_dir.parent / ".archive" / f"{run.run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        archive.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(run.run_dir), str(archive))
    study, key, tags = run.study, run.spec.key, run.spec.tags
    if run.spec.owner:  # a shared run trained from a referencing study: its directory is the owner's
        study, key, tags = run.spec.owner, run.spec.owner_key, run.spec.owner_tags
    atomic_write_json(run.run_dir / RUN_FILE, {
        "study": study, "key": key, "scale": run.config.scale, "hash": run.spec.hash,
        "tags": tags, "depends_on": run.spec.depends_on,
    })


def _record_job(run: PlannedRun, executor: str, job_id: str) -> None:
    atomic_write_json(run.run_dir / JOB_FILE, {"executor": executor, "job_id": job_id,
                                                "host": socket.gethostname(), "submitted": time.time()})


def _submitit_folder(root: Path, run: PlannedRun) -> Path:
    return root / run.config.scale / run.study / ".submitit"


def _progress(run: PlannedRun) -> int:
    """Steps this run has trained in this launch, from the tail of metrics.jsonl (fresher than status.json)."""
    row = last_jsonl_row(run.run_dir / METRICS_FILE) or {}
    step = max(int(row.get("step", 0)), int(read_status(run.run_dir).get("step", 0)))
    return min(max(0, step - run.start_step), run.total_steps - run.start_step)


def _final_state(run: PlannedRun) -> str:
    """The state of a run whose job has ended: still "running" means killed; no status at all, a crash first."""
    state = run_state(run.run_dir)
    return {"running": "interrupted", "pending": "failed"}.get(state, state)


def execute_debug(todo: list[PlannedRun], by_uid: dict[str, PlannedRun], root: Path,
                  progress: bool = True) -> dict[str, str]:
    """In this process, parents first (submitit's DebugExecutor); exceptions are recorded, not re-raised."""
    from tqdm import tqdm

    final: dict[str, str] = {}
    pending = {r.uid for r in todo}
    bar = tqdm(total=len(todo), unit="run", desc="debug", disable=not progress, dynamic_ncols=True)
    for run in todo:
        pending.discard(run.uid)
        if readiness(run, by_uid, pending).state != "ready":
            final[run.uid] = "blocked"
        else:
            _prepare(run)
            executor = submitit.DebugExecutor(folder=_submitit_folder(root, run))
            job = executor.submit(RunJob(), run.config.to_dict(), str(run.run_dir), str(root))
            _record_job(run, "debug", str(job.job_id))
            error = job.exception()
            final[run.uid] = _final_state(run)
            if error is not None and final[run.uid] == "done":
                final[run.uid] = "failed"
        bar.update(1)
        bar.write(f"{final[run.uid]:>11}  {run.study}/{run.spec.key}  {run.run_dir}")
    bar.close()
    return final


def execute_local(todo: list[PlannedRun], by_uid: dict[str, PlannedRun], root: Path, jobs: int | None = None,
                  progress: bool = True, poll_s: float = 0.2) -> dict[str, str]:
    """Subprocesses on this machine (submitit's LocalExecutor), `jobs` at once, children as soon as the parent
    checkpoint they need exists; one tqdm bar over the steps of the whole grid."""
    import torch
    from tqdm import tqdm

    gpus = torch.cuda.device_count() if todo and todo[0].config.scale in CLUSTER_SCALES else 0
    slots = jobs or gpus or os.cpu_count() or 1
    free = list(range(slots))
    waiting = list(todo)
    running: dict[str, tuple[Any, int]] = {}
    final: dict[str, str] = {}
    executors: dict[Path, Any] = {}
    total = sum(r.total_steps - r.start_step for r in todo)
    desc = f"{todo[0].config.scale}: " + (todo[0].study if len({r.study for r in todo}) == 1 else "studies")
    bar = tqdm(total=total, unit="step", desc=desc, disable=not progress, dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 10.0)
    try:
        while waiting or running:
            for uid, (job, slot) in list(running.items()):
                if job.done():
                    run = by_uid[uid]
                    final[uid] = _final_state(run)
                    free.append(slot)
                    del running[uid]
                    detail = "" if final[uid] == "done" else f"  (log: {job.paths.stderr})"
                    bar.write(f"{final[uid]:>11}  {run.study}/{run.spec.key}  {run.run_dir}{detail}")
            pending = {r.uid for r in waiting} | set(running)
            for run in list(waiting):
                if not free:
                    break
                verdict = readiness(run, by_uid, pending - {run.uid}).state
                if verdict == "wait":
                    continue
                waiting.remove(run)
                if verdict == "blocked":
                    final[run.uid] = "blocked"
                    bar.write(f"{'blocked':>11}  {run.study}/{run.spec.key}  (a parent it needs did not finish)")
                    continue
                slot = free.pop(0)
                folder = _submitit_folder(root, run)
                executor = executors.setdefault(folder, submitit.LocalExecutor(folder=folder))
                params: dict[str, Any] = {"timeout_min": LOCAL_TIMEOUT_MIN, "gpus_per_node": 0}
                if gpus:
                    params.update(gpus_per_node=1, visible_gpus=(slot,))
                executor.update_parameters(**params)
                _prepare(run)
                job = executor.submit(RunJob(0 if gpus else 1), run.config.to_dict(), str(run.run_dir), str(root))
                _record_job(run, "local", str(job.job_id))
                running[run.uid] = (job, slot)
            steps = sum(_progress(r) if r.uid in running or r.uid in final else 0 for r in todo)
            done = sum(1 for s in final.values() if s == "done")
            bad = sum(1 for s in final.values() if s != "done")
            bar.set_postfix_str(f"runs {done}/{len(todo)} done, {len(running)} running, {bad} not done",
                                refresh=False)
            bar.update(steps - bar.n)  # redraws at most every `mininterval`
            if waiting or running:
                time.sleep(poll_s)
    except KeyboardInterrupt:
        for job, _ in running.values():
            job.cancel()
        raise
    finally:
        bar.close()
    return final


def _waves(todo: list[PlannedRun], by_uid: dict[str, PlannedRun]) -> dict[str, int]:
    """Dependency depth among the runs to submit: a run's array starts after the arrays of the parents it waits
    for."""
    wave: dict[str, int] = {}
    uids = {r.uid for r in todo}
    for run in todo:  # parents first
        waits = [p for p in readiness(run, by_uid, uids).waits_on if p in uids]
        wave[run.uid] = 1 + max((wave[p] for p in waits), default=-1)
    return wave


def execute_slurm(todo: list[PlannedRun], by_uid: dict[str, PlannedRun], root: Path, profile: dict,
                  dry_run: bool = False) -> dict[str, str]:
    """Submit one job array per (wave, study); arrays of later waves wait for their parents (afterok)."""
    sbatch, executor_kwargs = slurm_parameters(profile)
    waves = _waves(todo, by_uid)
    uids = {r.uid for r in todo}
    job_ids: dict[str, str] = {}
    for w in sorted(set(waves.values())):
        studies = dict.fromkeys(r.study for r in todo if waves[r.uid] == w)
        for study in studies:
            group = [r for r in todo if waves[r.uid] == w and r.study == study]
            deps = set()
            for run in group:
                for p in readiness(run, by_uid, uids).waits_on:
                    if p in job_ids:
                        deps.add(job_ids[p])
                    elif by_uid[p].job_id:  # a parent already queued or running in SLURM
                        deps.add(by_uid[p].job_id)
            params = dict(sbatch, job_name=f"dyn-{study}-{group[0].config.scale}")
            if deps:
                params["dependency"] = "afterok:" + ":".join(sorted(deps))
                params["additional_parameters"] = {"kill-on-invalid-dep": "yes",
                                                   **params.get("additional_parameters", {})}
            if dry_run:
                for run in group:
                    job_ids[run.uid] = f"<wave {w}>"
                print(f"  wave {w}: {study}: array of {len(group)} job(s)"
                      + (f", {params['dependency']}" if deps else ""))
                continue
            executor = submitit.SlurmExecutor(folder=_submitit_folder(root, group[0]) / "%j", **executor_kwargs)
            executor.update_parameters(**params)
            for run in group:
                _prepare(run)
            with executor.batch():
                job_fn = RunJob(signal_delay_s=float(profile.get("signal_delay_s", 90)))
                jobs = [executor.submit(job_fn, r.config.to_dict(), str(r.run_dir), str(root)) for r in group]
            for run, job in zip(group, jobs):
                job_ids[run.uid] = str(job.job_id)
                _record_job(run, "slurm", str(job.job_id))
    return {uid: f"submitted {jid}" for uid, jid in job_ids.items()}


# ----------------------------------------------------------------------------------------------------
# cluster profiles

# profile key -> submitit SlurmExecutor parameter (sbatch flag); see slurm/example.toml
PROFILE_KEYS = {
    "partition": "partition", "nodes": "nodes", "gpus_per_node": "gpus_per_node",
    "tasks_per_node": "ntasks_per_node", "cpus_per_task": "cpus_per_task", "mem": "mem", "time_min": "time",
    "account": "account", "qos": "qos", "constraint": "constraint", "exclude": "exclude", "comment": "comment",
    "array_parallelism": "array_parallelism", "signal_delay_s": "signal_delay_s", "setup": "setup",
    "srun_args": "srun_args", "extra_sbatch": "additional_parameters",
}
EXECUTOR_KEYS = ("max_num_timeout", "python")


def load_profile(path: str | Path, scale: str | None = None) -> dict:
    """A cluster profile: the [slurm] table, overridden by [scale.<scale>] when present."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"--profile {path}: no such file (see slurm/example.toml)")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--profile {path}: not valid TOML ({exc})") from None
    unknown = sorted(set(data) - {"slurm", "scale"})
    if unknown:
        raise ConfigError(f"profile {path}: unknown table [{unknown[0]}]; allowed: [slurm], [scale.<scale>]")
    profile = dict(data.get("slurm", {}))
    if scale is not None:
        profile.update(data.get("scale", {}).get(scale, {}))
    allowed = set(PROFILE_KEYS) | set(EXECUTOR_KEYS)
    for key in profile:
        if key not in allowed:
            raise ConfigError(f"profile {path}: unknown key {key!r}; allowed: {', '.join(sorted(allowed))}")
    return profile


def slurm_parameters(profile: dict) -> tuple[dict, dict]:
    """(sbatch parameters for SlurmExecutor.update_parameters, keyword arguments of SlurmExecutor)."""
    sbatch = {PROFILE_KEYS[k]: v for k, v in profile.items() if k in PROFILE_KEYS}
    if "ntasks_per_node" not in sbatch:
        sbatch["ntasks_per_node"] = max(1, int(profile.get("gpus_per_node", 1)))  # one rank per GPU
    if "additional_parameters" in sbatch:
        sbatch["additional_parameters"] = dict(sbatch["additional_parameters"])
    executor = {k: profile[k] for k in EXECUTOR_KEYS if k in profile}
    return sbatch, executor


def sbatch_preview(profile: dict) -> list[str]:
    """The #SBATCH lines and setup that submitit writes for these parameters (log paths left out)."""
    from submitit.slurm.slurm import _make_sbatch_string

    sbatch, _ = slurm_parameters(profile)
    text = _make_sbatch_string(command="<job>", folder="<folder>", job_name="<study>-<scale>", **sbatch)
    keep = [line for line in text.splitlines() if line.startswith("#SBATCH")
            and not line.startswith(("#SBATCH --output", "#SBATCH --error", "#SBATCH --open-mode"))]
    return keep + [line for line in sbatch.get("setup", [])]


# ----------------------------------------------------------------------------------------------------
# the command-line entry points


def _fmt_minutes(seconds: float) -> str:
    return f"{seconds / 60:,.1f}"


def _describe_deps(run: PlannedRun, by_uid: dict[str, PlannedRun]) -> str:
    if not run.spec.depends_on:
        return "-"
    ref = run.spec.parent
    return ",".join(by_uid[p].spec.key + (f"@{ref.epoch:g}ep" if ref and ref.key == by_uid[p].spec.key else "")
                    for p in run.parents)


def cost_summary(runs: list[PlannedRun], jobs: int) -> str:
    todo = [r for r in runs if r.action in TO_EXECUTE]
    if not runs:
        return "nothing to estimate"
    scale = runs[0].config.scale
    rate = step_rate(scale)
    seconds = sum(estimate_seconds(r.config, r.start_step) for r in todo)
    steps = sum(r.total_steps - r.start_step for r in todo)
    if scale in CLUSTER_SCALES:
        return (f"{len(todo)} of {len(runs)} runs to train, {steps:,} steps: about {seconds / 3600:,.0f} GPU-hours "
                f"({rate.device}: {rate.steps_per_s:.2f} joint steps/s per GPU at batch 256, ideal data-parallel "
                f"scaling; {rate.origin}: {rate.source})")
    return (f"{len(todo)} of {len(runs)} runs to train, {steps:,} steps: about {_fmt_minutes(seconds)} CPU-minutes, "
            f"{_fmt_minutes(seconds / max(1, jobs))} min wall with {jobs} runs at once "
            f"({rate.steps_per_s:g} steps/s per run on {rate.device}, {rate.origin}: {rate.source})")


def print_plan(runs: list[PlannedRun], studies: list, jobs: int, out: Any = None) -> None:
    out = out or sys.stdout
    by_uid = {r.uid: r for r in runs}
    width = max([len(r.spec.key) for r in runs] + [8])
    for study in studies:
        mine = [r for r in runs if r.study == study.name]
        print(f"{study.name}: {study.question}  [{len(mine)} runs]", file=out)
        for note in study.notes:
            print(f"  note: {note}", file=out)
        if not mine:
            continue
        print(f"  {'run':<{width}}  {'hash':<12}  {'state':<11}  {'action':<8}  {'steps':>9}  "
              f"{'est.':>9}  after", file=out)
        for r in mine:
            seconds = estimate_seconds(r.config, r.start_step) if r.action in TO_EXECUTE else 0.0
            est = (f"{seconds / 3600:,.1f}h" if r.config.scale in CLUSTER_SCALES else f"{seconds / 60:.2f}m")
            print(f"  {r.spec.key:<{width}}  {r.spec.hash:<12}  {r.state:<11}  {r.action:<8}  "
                  f"{r.total_steps - r.start_step:>9,}  {est:>9}  {_describe_deps(r, by_uid)}"
                  + (f"  ({r.note})" if r.note else ""), file=out)
    print(f"total: {cost_summary(runs, jobs)}", file=out)


def status_table(runs: list[PlannedRun], out: Any = None) -> dict[str, int]:
    """Print one line per run with its state and progress; returns the count per state."""
    out = out or sys.stdout
    width = max([len(r.spec.key) for r in runs] + [8])
    counts: dict[str, int] = {}
    now = time.time()
    print(f"{'run':<{width}}  {'hash':<12}  {'state':<11}  {'progress':>22}  updated", file=out)
    for r in runs:
        status = read_status(r.run_dir)
        row = last_jsonl_row(r.run_dir / METRICS_FILE) or {}
        step = max(int(status.get("step", 0)), int(row.get("step", 0)))
        state = r.state
        counts[state] = counts.get(state, 0) + 1
        updated = status.get("updated")
        age = "-" if updated is None else f"{max(0.0, now - updated) / 60:.1f} min ago"
        pct = 100.0 * step / r.total_steps if r.total_steps else 0.0
        extra = f"  {status['error']}" if status.get("error") else ""
        print(f"{r.spec.key:<{width}}  {r.spec.hash:<12}  {state:<11}  "
              f"{f'{step:,}/{r.total_steps:,} ({pct:.0f}%)':>22}  {age}{extra}", file=out)
    order = ("done", "running", "queued", "requeued", "interrupted", "failed", "diverged", "pending")
    print("  ".join(f"{k}: {counts[k]}" for k in order if k in counts) or "no runs", file=out)
    return counts


def _mark_shared(runs: list[PlannedRun]) -> None:
    """A run that several planned studies share (registry.shared) is trained once: by its owner study if that
    is planned, else by the first study that lists it; the others get action "shared" and wait for it."""
    trainer: dict[Path, PlannedRun] = {}
    for run in sorted(runs, key=lambda r: bool(r.spec.owner)):  # owners first, stable otherwise
        first = trainer.setdefault(run.run_dir, run)
        if first is not run:
            run.action, run.note = "shared", f"trained as {first.study}/{first.spec.key}"


SHARED_LINKS = (CONFIG_FILE, STATUS_FILE, JOB_FILE, METRICS_FILE, EVAL_FILE, CKPT_DIR)


def link_shared(run: PlannedRun, root: Path) -> None:
    """The referencing study's entry of a shared run: `<scale>/<study>/<hash>/` holds its own run.json (key,
    tags, `shared_from`) and relative links to the owner's files, so `load_results(study=...)` reads it as a run
    of this study and the store stays one directory per (study, run)."""
    ref = root / run.config.scale / run.study / run.spec.hash
    ref.mkdir(parents=True, exist_ok=True)
    for name in SHARED_LINKS:
        link = ref / name
        if not link.is_symlink():
            link.symlink_to(Path("..", "..", run.spec.owner, run.spec.hash, name))
    atomic_write_json(ref / RUN_FILE, {
        "study": run.study, "key": run.spec.key, "scale": run.config.scale, "hash": run.spec.hash,
        "tags": run.spec.tags, "depends_on": [], "shared_from": f"{run.config.scale}/{run.spec.owner}/{run.spec.hash}",
    })


def launch(studies: list, scale: str, executor: str = "local", root: str | Path = "results",
           seeds: int | None = None, jobs: int | None = None, profile: str | Path | None = None,
           rerun_failed: bool = False, dry_run: bool = False, progress: bool = True,
           overrides: list[str] | None = None) -> dict[str, str]:
    """Plan the studies' grids at `scale` and execute what is not done; returns {run uid: final state}."""
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor {executor!r} is not allowed; choose one of {', '.join(EXECUTORS)}")
    if executor == "slurm" and profile is None:
        raise ConfigError("--executor slurm needs --profile slurm/<cluster>.toml (see slurm/example.toml)")
    prof = load_profile(profile, scale) if profile is not None else {}
    root = Path(root).resolve()
    for study in studies:
        if scale in study.unsupported:
            print(f"{study.name}: no runs at scale {scale}: {study.unsupported[scale]}")
    runs = plan(studies, scale, root, seeds, rerun_failed, overrides)
    by_uid = {r.uid: r for r in runs}
    todo = [r for r in runs if r.action in TO_EXECUTE]
    n_jobs = jobs or os.cpu_count() or 1
    problems = preflight(todo)
    if dry_run:
        print_plan(runs, studies, n_jobs)
        for problem in problems:
            print(f"warning: {problem}; the jobs would fail at start")
        if executor == "slurm":
            print("sbatch script header (submitit's, as each array gets it, plus --array and --dependency):")
            for line in sbatch_preview(prof):
                print(f"  {line}")
            execute_slurm(todo, by_uid, root, prof, dry_run=True)
        return {}
    if problems:
        raise ConfigError(problems[0] + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else "")
                          + "; nothing submitted")
    skipped = {a: sum(1 for r in runs if r.action == a) for a in ("skip", "keep", "busy", "blocked")}
    others = ", ".join(f"{n} {a}" for a, n in skipped.items() if n)
    print(f"{scale}: {len(runs)} runs, {len(todo)} to train" + (f" ({others})" if others else "")
          + f" -> {root / scale}")
    for r in runs:
        if r.action in ("keep", "blocked"):
            print(f"  {r.action}: {r.study}/{r.spec.key} ({r.note or r.state}; --rerun-failed to run it again)")
    for r in runs:
        if r.spec.owner:
            link_shared(r, root)
    for study in studies:
        recorded = recorded_overrides(root, scale, study.name)
        if recorded is not None and sorted(recorded) != sorted(overrides or []):
            print(f"  note: {study.name} was last launched with other overrides ({' '.join(recorded) or 'none'}); "
                  "this launch trains the grid of the ones given now")
    record_overrides(root, scale, studies, overrides)
    if not todo:
        return {}
    start = time.time()
    if executor == "debug":
        final = execute_debug(todo, by_uid, root, progress)
    elif executor == "local":
        final = execute_local(todo, by_uid, root, jobs, progress)
    else:
        final = execute_slurm(todo, by_uid, root, prof)
        print(f"submitted {len(final)} runs to SLURM; follow them with: dynamics status STUDY --scale {scale}")
        return final
    counts: dict[str, int] = {}
    for state in final.values():
        counts[state] = counts.get(state, 0) + 1
    print(f"finished in {time.time() - start:.1f} s: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return final
