"""What a run writes besides its checkpoints: config.json, status.json, metrics.jsonl and eval.jsonl.

Only the main rank writes; every rank may read. The logs are append-only and cut back to the checkpoint's
step when a run resumes, so a resumed run's logs read as an uninterrupted run's (results.py has the layout).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

from .results import (
    CONFIG_FILE,
    EVAL_FILE,
    METRICS_FILE,
    RunLockedError,
    append_jsonl,
    atomic_write_json,
    read_status,
    run_lock,
    truncate_jsonl,
    write_status,
)


class RunLog:
    def __init__(self, run_dir: Path, is_main: bool, total_steps: int):
        self.run_dir, self.is_main, self.total_steps = run_dir, is_main, total_steps
        self.start_time, self.start_step = time.time(), 0

    def write_config(self, config: dict) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.is_main:
            atomic_write_json(self.run_dir / CONFIG_FILE, config)

    def resume_at(self, step: int) -> None:
        """Drop the rows logged after `step` (the checkpoint this process resumes from)."""
        if self.is_main:
            truncate_jsonl(self.run_dir / METRICS_FILE, step)
            truncate_jsonl(self.run_dir / EVAL_FILE, step)

    def begin(self, config: dict, step: int, resumed: bool) -> dict | None:
        """Open the logs of a run that starts at `step`: config.json, the logs cut back to a resumed checkpoint's
        step, the clock, status "running". A run already done returns its status instead and is left as is."""
        self.write_config(config)
        if resumed:
            self.resume_at(step)
        if self.read_status().get("state") == "done" and step >= self.total_steps:
            return self.read_status()
        self.start(step)
        self.status("running", step)
        return None

    def start(self, step: int) -> None:
        """This process trains from `step` on: the clock of the rows' time and steps_per_s."""
        self.start_time, self.start_step = time.time(), step

    def status(self, state: str, step: int, **fields) -> None:
        """running | done | diverged | interrupted (train() records failed)."""
        if self.is_main:
            write_status(self.run_dir, state, step=step, total_steps=self.total_steps, pid=os.getpid(), **fields)

    def end(self, state: str, step: int, rank: int, **fields) -> dict:
        """Record the run's end; returns status.json (main rank) or this rank's own view of it (the others)."""
        self.status(state, step, **fields)
        if self.is_main:
            return self.read_status()
        return {"state": state, "step": step, "total_steps": self.total_steps, "rank": rank, **fields}

    def metrics_due(self, step: int, every: int) -> bool:
        return step % every == 0 or step == self.total_steps

    def read_status(self) -> dict:
        return read_status(self.run_dir)

    def metrics(self, row: dict) -> None:
        """One metrics.jsonl row: `row`, then the process's start step, wall time and speed."""
        if self.is_main:
            elapsed = max(1e-9, time.time() - self.start_time)
            append_jsonl(self.run_dir / METRICS_FILE, {**row, "start_step": self.start_step, "time": elapsed,
                                                       "steps_per_s": (row["step"] - self.start_step) / elapsed})

    def evals(self, rows: Iterable[dict], epoch: float) -> None:
        if self.is_main:
            for row in rows:
                append_jsonl(self.run_dir / EVAL_FILE, {"epoch": epoch, **row})


def record_failure(run_dir: Path, total_steps: int, exc: BaseException, wait_s: float | None = None) -> None:
    """status.json "failed" with the reason, by the process that holds the run's lock. wait_s=0: take the
    lock first, and write only if no process holds it (another rank of a job whose main rank is gone)."""
    if wait_s is not None:
        try:
            with run_lock(run_dir, wait_s=wait_s):
                record_failure(run_dir, total_steps, exc)
        except RunLockedError:
            pass  # the main rank is alive and records the run's end
        return
    step = int(read_status(run_dir).get("step", 0))
    write_status(run_dir, "failed", step=step, total_steps=total_steps, pid=os.getpid(),
                 error=f"{type(exc).__name__}: {exc}")
