"""Planning: every run of a grid with its state in the results store and what to do (run, resume, skip, ...),
the one readiness function, pre-flight checks and the record of a launch's overrides."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from experiments.registry import ResolvedRun, Study

from ..config import RunConfig
from ..results import (
    JOB_FILE,
    OVERRIDES_FILE,
    atomic_write_json,
    checkpoint_path,
    read_json,
    read_status,
    run_state,
)

TO_EXECUTE = ("run", "resume", "rerun", "restart")


# ----------------------------------------------------------------------------------------------------
# planning


@dataclass
class PlannedRun:
    """One run of a launch: its study, its resolved grid entry, its directory, its state there and the action."""

    study: str
    spec: ResolvedRun
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
    """Whether what `child` needs from `parent` exists: the kept checkpoint it continues (`spec.parent`), else
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


def plan(studies: Sequence[Study], scale: str, root: str | Path = "results", seeds: int | None = None,
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


SQUEUE_TRIES = 5
# SLURM's final job states. squeue is asked for every state (-t all): its default list leaves out a job that is
# being requeued (REQUEUED, REQUEUE_FED, ...) between its preemption and its next start, which would read as gone.
ENDED_STATES = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                          "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "TIMEOUT"})


def squeue_states(job_ids: list[str]) -> dict[str, str] | None:
    """{job id: SLURM state} of the jobs not yet ended (queued, running or being requeued); None when squeue is
    not available. The user's whole queue is read and filtered here: `squeue -j` fails for every id once one of
    them has been purged (MinJobAge after it ended), which would read as "none of them is queued". `-r` lists
    every array task on its own line (without it, pending tasks print collapsed as `65_[2-3]`)."""
    out = None
    for attempt in range(SQUEUE_TRIES):
        try:
            out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-u", getpass.getuser(), "-o", "%i %T"],
                                 capture_output=True, text=True, timeout=30)
        except FileNotFoundError:
            return None
        except subprocess.TimeoutExpired:
            out = None
            continue
        if out.returncode == 0:
            break
        time.sleep(min(8.0, 0.5 * 2**attempt))  # a busy controller ("Socket timed out"): ask again
    else:
        # Reading an unanswered squeue as "nothing queued" would submit a second job for a run that has one.
        reason = (out.stderr.strip().splitlines() or ["no answer"])[-1] if out is not None else "timed out"
        raise RuntimeError(f"squeue did not answer after {SQUEUE_TRIES} tries ({reason}); not deciding which runs "
                           "are queued")
    wanted = set(job_ids)
    states = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        state = parts[1] if len(parts) >= 2 else "PENDING"
        if parts and parts[0] in wanted and state not in ENDED_STATES:
            states[parts[0]] = state
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


def record_overrides(root: Path, scale: str, studies: Sequence[Study], overrides: list[str] | None) -> None:
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


def _mark_shared(runs: list[PlannedRun]) -> None:
    """A run that several planned studies share (registry.shared) is trained once: by its owner study if that
    is planned, else by the first study that lists it; the others get action "shared" and wait for it."""
    trainer: dict[Path, PlannedRun] = {}
    for run in sorted(runs, key=lambda r: bool(r.spec.owner)):  # owners first, stable otherwise
        first = trainer.setdefault(run.run_dir, run)
        if first is not run:
            run.action, run.note = "shared", f"trained as {first.study}/{first.spec.key}"
