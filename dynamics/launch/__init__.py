"""Running study grids: plan them against the results store, then execute them through submitit.

Plan. Every run of a study at a scale gets a directory `<results>/<scale>/<study>/<hash>` (the hash of its
resolved config, `ResolvedRun` in experiments/study.py) and an action from what the store holds there:
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

The package: `plan` (states, actions, the one readiness function, pre-flight), `executors` (debug, local,
slurm), `job` (RunJob), `profile` (cluster profiles), `cost` (the cost model); this module joins them in
`prepare` and `launch`. Tables and dry runs are printed by the CLI (dynamics/cli/tables.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from experiments.registry import Study

from ..config import EXECUTORS, ConfigError
from .cost import (
    CLUSTER_SCALES,
    DIT_GFLOPS,
    MEASURED_RATES_FILE,
    PHASE_COST,
    RUN_OVERHEAD_S,
    STEP_RATES,
    StepRate,
    cost_summary,
    estimate_seconds,
    step_rate,
)
from .executors import (
    LOCAL_TIMEOUT_MIN,
    SHARED_LINKS,
    execute_debug,
    execute_local,
    execute_slurm,
    link_shared,
    slurm_waves,
)
from .job import RunJob, absolute_init, slurm_time_left_s
from .plan import (
    TO_EXECUTE,
    PlannedRun,
    Readiness,
    config_problems,
    plan,
    preflight,
    readiness,
    record_overrides,
    recorded_overrides,
    squeue_states,
)
from .profile import EXECUTOR_KEYS, PROFILE_KEYS, load_profile, sbatch_preview, slurm_parameters

__all__ = [
    "CLUSTER_SCALES", "DIT_GFLOPS", "EXECUTORS", "EXECUTOR_KEYS", "LOCAL_TIMEOUT_MIN", "MEASURED_RATES_FILE",
    "PHASE_COST", "PROFILE_KEYS", "RUN_OVERHEAD_S", "SHARED_LINKS", "STEP_RATES", "TO_EXECUTE", "Launch",
    "PlannedRun", "Readiness", "RunJob", "StepRate", "absolute_init", "config_problems", "cost_summary",
    "estimate_seconds", "execute_debug", "execute_local", "execute_slurm", "launch", "link_shared", "load_profile",
    "plan", "preflight", "prepare", "readiness", "record_overrides", "recorded_overrides", "sbatch_preview",
    "slurm_parameters", "slurm_time_left_s", "slurm_waves", "squeue_states", "step_rate",
]


@dataclass
class Launch:
    """A planned launch: every run with its action, the ones to execute, the cluster profile, the problems
    pre-flight found, and why some studies have no runs at this scale."""

    studies: list[Study]
    scale: str
    executor: str
    root: Path
    runs: list[PlannedRun]
    profile: dict
    problems: list[str]
    unsupported: dict[str, str]

    @property
    def todo(self) -> list[PlannedRun]:
        return [r for r in self.runs if r.action in TO_EXECUTE]

    @property
    def by_uid(self) -> dict[str, PlannedRun]:
        return {r.uid: r for r in self.runs}


def prepare(studies: Sequence[Study], scale: str, executor: str = "local", root: str | Path = "results",
            seeds: int | None = None, profile: str | Path | None = None, rerun_failed: bool = False,
            overrides: list[str] | None = None) -> Launch:
    """Check the executor and profile, plan the studies' grids at `scale` and run the pre-flight checks;
    nothing is written."""
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor {executor!r} is not allowed; choose one of {', '.join(EXECUTORS)}")
    if executor == "slurm" and profile is None:
        raise ConfigError("--executor slurm needs --profile slurm/<cluster>.toml (see slurm/example.toml)")
    prof = load_profile(profile, scale) if profile is not None else {}
    root = Path(root).resolve()
    runs = plan(studies, scale, root, seeds, rerun_failed, overrides)
    todo = [r for r in runs if r.action in TO_EXECUTE]
    return Launch(list(studies), scale, executor, root, runs, prof, preflight(todo),
                  {s.name: s.unsupported[scale] for s in studies if scale in s.unsupported})


def launch(studies: Sequence[Study], scale: str, executor: str = "local", root: str | Path = "results",
           seeds: int | None = None, jobs: int | None = None, profile: str | Path | None = None,
           rerun_failed: bool = False, progress: bool = True, overrides: list[str] | None = None,
           say: Callable[[str], None] = print) -> dict[str, str]:
    """Plan the studies' grids at `scale` and execute what is not done; returns {run uid: final state}.
    `say` receives the launch's few lines of news (what is skipped or kept, the overrides, the outcome)."""
    job = prepare(studies, scale, executor, root, seeds, profile, rerun_failed, overrides)
    for name, why in job.unsupported.items():
        say(f"{name}: no runs at scale {scale}: {why}")
    runs, todo, by_uid, root = job.runs, job.todo, job.by_uid, job.root
    if job.problems:
        n = len(job.problems)
        raise ConfigError(job.problems[0] + (f" (and {n - 1} more problems)" if n > 1 else "") + "; nothing submitted")
    skipped = {a: sum(1 for r in runs if r.action == a) for a in ("skip", "keep", "busy", "blocked")}
    others = ", ".join(f"{n} {a}" for a, n in skipped.items() if n)
    say(f"{scale}: {len(runs)} runs, {len(todo)} to train" + (f" ({others})" if others else "") + f" -> {root / scale}")
    for r in runs:
        if r.action in ("keep", "blocked"):
            say(f"  {r.action}: {r.study}/{r.spec.key} ({r.note or r.state}; --rerun-failed to run it again)")
    for r in runs:
        if r.spec.owner:
            link_shared(r, root)
    for study in studies:
        recorded = recorded_overrides(root, scale, study.name)
        if recorded is not None and sorted(recorded) != sorted(overrides or []):
            say(f"  note: {study.name} was last launched with other overrides ({' '.join(recorded) or 'none'}); "
                "this launch trains the grid of the ones given now")
    record_overrides(root, scale, studies, overrides)
    if not todo:
        return {}
    start = time.time()
    if executor == "debug":
        final = execute_debug(todo, by_uid, root, progress)
    elif executor == "local":
        final = execute_local(todo, by_uid, root, jobs or None, progress)
    else:
        final = execute_slurm(todo, by_uid, root, job.profile)
        say(f"submitted {len(final)} runs to SLURM; follow them with: dynamics status STUDY --scale {scale}")
        return final
    counts: dict[str, int] = {}
    for state in final.values():
        counts[state] = counts.get(state, 0) + 1
    say(f"finished in {time.time() - start:.1f} s: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return final


def default_jobs(jobs: int | None) -> int:
    """Runs at once on this machine: `jobs`, else one per CPU core."""
    return jobs or os.cpu_count() or 1
