"""Run directories: atomic writes, status, JSON-lines logs, and loading runs back.

A run directory holds `config.json`, `status.json`, `metrics.jsonl` (step, epoch, loss, loss_v, loss_u,
lr, time), `eval.jsonl` (step, epoch, metric, sampler, nfe, value, floor, ceiling) and `checkpoints/`.
Every file that is replaced is written to a temporary name and renamed, so a killed run never leaves
a half-written file; the logs are append-only and trimmed back to the checkpoint on resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

STATUS_FILE = "status.json"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.jsonl"
CKPT_DIR = "checkpoints"
LAST_CKPT = "last.pt"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_torch_save(path: Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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


def checkpoint_path(run_dir: Path, epoch: float | None = None) -> Path:
    """`checkpoints/last.pt`, or the kept checkpoint of an epoch (`checkpoints/epoch_5.pt`)."""
    name = LAST_CKPT if epoch is None or epoch < 0 else f"epoch_{epoch:g}.pt"
    return Path(run_dir) / CKPT_DIR / name
