"""Run directories: atomic writes, status, JSON-lines logs, and loading runs back.

A run directory holds `config.json`, `status.json`, `metrics.jsonl` (step, epoch, loss, loss_v, loss_u,
lr, time), `eval.jsonl` (step, epoch, metric, sampler, nfe, value, floor, ceiling) and `checkpoints/`.
Every file that is replaced is written to a temporary name and renamed, so a killed run never leaves
a half-written file; the logs are append-only and trimmed back to the checkpoint on resume.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

STATUS_FILE = "status.json"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.jsonl"
CKPT_DIR = "checkpoints"
LAST_CKPT = "last.pt"


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside `path`; on success it replaces `path` (readers never see half a file),
    on failure it is removed. Files are made readable by all (mkstemp's are private), as caches are shared."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_torch_save(path: Path, obj: Any) -> None:
    """torch.save to a temporary name, fsync, rename: a crash at any point leaves the old file or the new one."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSON-lines file; a torn last line (a kill mid-write) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def truncate_jsonl(path: Path, max_step: int) -> None:
    """Drop rows logged after `max_step` (they came after the checkpoint a resumed run restarts from)."""
    path = Path(path)
    if path.exists():
        rows = [r for r in read_jsonl(path) if r.get("step", 0) <= max_step]
        atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode())


def config_hash(config: dict, length: int = 12) -> str:
    """A stable short hash of a resolved config (canonical JSON), naming its run directory."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]


def write_status(run_dir: Path, state: str, **fields: Any) -> None:
    """state: pending | running | done | failed | diverged."""
    atomic_write_json(Path(run_dir) / STATUS_FILE, {"state": state, "updated": time.time(), **fields})


def read_status(run_dir: Path) -> dict:
    path = Path(run_dir) / STATUS_FILE
    if not path.exists():
        return {"state": "pending"}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {"state": "unknown"}


class RunLockedError(RuntimeError):
    """Another process holds a run directory's lock (two trainers in one directory would interleave rows)."""


LOCK_FILE = ".lock"
LOCK_WAIT_S = float(os.environ.get("DYNAMICS_LOCK_WAIT_S", 60))  # > SLURM's KillWait (default 30 s)


@contextmanager
def run_lock(run_dir: Path, wait_s: float | None = None):
    """Hold an exclusive lock on `run_dir` for the life of a run. The lock is flock(2) on `<run_dir>/.lock`,
    so the OS releases it when the holder dies however it dies (kill -9 included). A second process waits
    up to `wait_s` (default LOCK_WAIT_S, longer than SLURM's KillWait, so a requeued job can take over from
    its dying predecessor), then raises RunLockedError having changed nothing but the empty lock file."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    wait_s = LOCK_WAIT_S if wait_s is None else wait_s
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                if time.monotonic() >= deadline:
                    raise RunLockedError(f"{run_dir} is being trained by another process (its lock was held for "
                                         f"{wait_s:g} s); not starting a second writer") from None
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)  # releases the lock


def checkpoint_path(run_dir: Path, epoch: float | None = None) -> Path:
    """`checkpoints/last.pt`, or the kept checkpoint of an epoch (`checkpoints/epoch_5.pt`)."""
    name = LAST_CKPT if epoch is None or epoch < 0 else f"epoch_{epoch:g}.pt"
    return Path(run_dir) / CKPT_DIR / name


# ----------------------------------------------------------------------------------------------------
# the results store: <root>/<scale>/<study>/<hash>/, written by dynamics.launch

RUN_FILE = "run.json"  # the launcher's record: study, key, scale, hash, tags, depends_on
JOB_FILE = "job.json"  # the launcher's record of the job: executor, job_id, host, submitted
OVERRIDES_FILE = "overrides.json"  # <root>/<scale>/<study>/overrides.json: the `dynamics run` key=value list
RUN_STATES = ("pending", "running", "interrupted", "done", "failed", "diverged")
_HOST = socket.gethostname()
_RESERVED = ("scale", "study", "key", "hash", "run_dir", "state", "step", "total_steps", "progress",
             "updated", "error")


def read_json(path: Path) -> dict:
    """A JSON file as a dict; {} when it is missing or unreadable (a store is read while jobs write it)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def last_jsonl_row(path: Path) -> dict | None:
    """The last complete row of a JSON-lines file, reading only its tail (progress of a running job)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            lines = f.read().splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
    return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_state(run_dir: Path, status: dict | None = None) -> str:
    """The state of a run as the store sees it: status.json's state, except that a run marked running whose
    process is gone (on this host) is "interrupted", as is one that has a checkpoint but no status."""
    run_dir = Path(run_dir)
    status = read_status(run_dir) if status is None else status
    state = status.get("state", "pending")
    if state == "pending" and checkpoint_path(run_dir).exists():
        return "interrupted"
    if state != "running":
        return state if state in RUN_STATES else "pending"
    job = read_json(run_dir / JOB_FILE)
    if job.get("executor") == "slurm" or job.get("host", _HOST) != _HOST:
        return "running"  # another machine's process: trust the status (dynamics.launch asks squeue)
    pid = status.get("pid")
    return "running" if pid is not None and pid_alive(pid) else "interrupted"


def flatten_config(d: dict, prefix: str = "") -> dict:
    """{"objective": {"beta": "none"}} -> {"objective.beta": "none"}; lists of numbers become tuples, other
    lists (phases) a JSON string, so every column can be grouped on."""
    out: dict = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_config(value, name + "."))
        elif isinstance(value, list):
            if all(not isinstance(v, (dict, list)) for v in value):
                out[name] = tuple(value)
            else:
                out[name] = json.dumps(value, sort_keys=True)
        else:
            out[name] = value
    return out


def _scan_runs(root: Path, study: str | None, scale: str | None):
    """(scale, study, run_dir) of every run directory under root; names starting with '.' are skipped."""
    def dirs(path: Path, only: str | None) -> list[os.DirEntry]:
        try:
            with os.scandir(path) as it:
                return sorted((e for e in it if e.is_dir() and not e.name.startswith(".")
                               and (only is None or e.name == only)), key=lambda e: e.name)
        except FileNotFoundError:
            return []

    for sc in dirs(root, scale):
        for st in dirs(Path(sc.path), study):
            for run in dirs(Path(st.path), None):
                yield sc.name, st.name, Path(run.path)


def load_results(root: str | Path = "results", study: str | None = None, scale: str | None = None,
                 kind: str = "runs"):
    """The results store as a pandas DataFrame.

    kind="runs": one row per run: scale, study, key, hash, run_dir, state (see `run_state`), step,
    total_steps, progress, updated, error, the run's tags (a tag that clashes with one of these names is
    stored as `tag.<name>`), and its config flattened to columns (`objective.beta`, `train.seed`, ...).
    kind="evals": one row per eval.jsonl record (step, epoch, metric, sampler, nfe, value, floor, ceiling)
    joined with its run's columns (the run's own step is then `run_step`).
    """
    import pandas as pd

    if kind not in ("runs", "evals"):
        raise ValueError(f"kind={kind!r} is not allowed; choose runs or evals")
    runs: list[dict] = []
    evals: list[dict] = []
    for sc, st, run_dir in _scan_runs(Path(root), study, scale):
        config = read_json(run_dir / CONFIG_FILE)
        meta = read_json(run_dir / RUN_FILE)
        if not config and not meta:
            continue
        status = read_status(run_dir)
        total = status.get("total_steps")
        row = {
            "scale": sc, "study": st, "key": meta.get("key", run_dir.name), "hash": meta.get("hash", run_dir.name),
            "run_dir": str(run_dir), "state": run_state(run_dir, status), "step": status.get("step", 0),
            "total_steps": total, "progress": (status.get("step", 0) / total) if total else 0.0,
            "updated": status.get("updated"), "error": status.get("error"),
        }
        for tag, value in meta.get("tags", {}).items():
            row[f"tag.{tag}" if tag in _RESERVED else tag] = value
        row.update(flatten_config(config))
        runs.append(row)
        if kind == "evals":
            for record in read_jsonl(run_dir / EVAL_FILE):
                evals.append({"run_dir": row["run_dir"], **record})
    frame = pd.DataFrame(runs)
    if kind == "runs":
        return frame
    eval_frame = pd.DataFrame(evals)
    if eval_frame.empty:
        return eval_frame
    # joined on the directory, not the hash: a run shared by several studies has one directory per study (the
    # owner's and links), and each study must see its rows once
    return eval_frame.merge(frame.rename(columns={"step": "run_step"}), on="run_dir", how="left")
