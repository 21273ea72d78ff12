"""Executing a plan through submitit: debug (in this process), local (subprocesses, `jobs` at once), slurm (one
job array per dependency wave and study)."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import submitit

from ..results import (
    CKPT_DIR,
    CONFIG_FILE,
    EVAL_FILE,
    JOB_FILE,
    METRICS_FILE,
    RUN_FILE,
    STATUS_FILE,
    atomic_write_json,
    last_jsonl_row,
    read_status,
    run_state,
)
from .cost import CLUSTER_SCALES
from .job import RunJob
from .plan import PlannedRun, readiness
from .profile import slurm_parameters, wants_gpus

LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # submitit's local default (2 min) would requeue every run


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
    running: dict[str, tuple[submitit.Job, int]] = {}
    final: dict[str, str] = {}
    executors: dict[Path, submitit.LocalExecutor] = {}
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
                job_fn = RunJob(0, cuda=True) if gpus else RunJob(1)
                job = executor.submit(job_fn, run.config.to_dict(), str(run.run_dir), str(root))
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


def _arrays(todo: list[PlannedRun], by_uid: dict[str, PlannedRun], sbatch: dict,
            job_ids: dict[str, str]) -> Iterator[tuple[int, str, list[PlannedRun], dict]]:
    """One job array per (wave, study), parents' waves first: (wave, study, runs, sbatch parameters). The caller
    fills `job_ids` (run uid -> job id) before the next array, whose `--dependency=afterok` names them."""
    waves = _waves(todo, by_uid)
    uids = {r.uid for r in todo}
    for w in sorted(set(waves.values())):
        for study in dict.fromkeys(r.study for r in todo if waves[r.uid] == w):
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
            yield w, study, group, params


def slurm_waves(todo: list[PlannedRun], by_uid: dict[str, PlannedRun], profile: dict) -> list[str]:
    """What `execute_slurm` would submit, one line per array (a dry run)."""
    sbatch, _ = slurm_parameters(profile)
    job_ids: dict[str, str] = {}
    lines = []
    for w, study, group, params in _arrays(todo, by_uid, sbatch, job_ids):
        job_ids.update((run.uid, f"<wave {w}>") for run in group)
        dep = f", {params['dependency']}" if "dependency" in params else ""
        lines.append(f"wave {w}: {study}: array of {len(group)} job(s){dep}")
    return lines


def execute_slurm(todo: list[PlannedRun], by_uid: dict[str, PlannedRun], root: Path, profile: dict) -> dict[str, str]:
    """Submit one job array per (wave, study); arrays of later waves wait for their parents (afterok)."""
    sbatch, executor_kwargs = slurm_parameters(profile)
    job_ids: dict[str, str] = {}
    for _, _, group, params in _arrays(todo, by_uid, sbatch, job_ids):
        executor = submitit.SlurmExecutor(folder=_submitit_folder(root, group[0]) / "%j", **executor_kwargs)
        executor.update_parameters(**params)
        for run in group:
            _prepare(run)
        with executor.batch():
            job_fn = RunJob(signal_delay_s=float(profile.get("signal_delay_s", 90)), cuda=wants_gpus(profile) or None,
                            dist_timeout_s=profile.get("dist_timeout_s"))
            jobs = [executor.submit(job_fn, r.config.to_dict(), str(r.run_dir), str(root)) for r in group]
        for run, job in zip(group, jobs):
            job_ids[run.uid] = str(job.job_id)
            _record_job(run, "slurm", str(job.job_id))
    return {uid: f"submitted {jid}" for uid, jid in job_ids.items()}


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
