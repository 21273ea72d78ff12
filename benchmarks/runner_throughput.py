"""Study-runner throughput on CPU: runs per hour with the cores split across runs or given to one run.

(a) `parallel`: as many runs at once as there are cores, one torch thread each;
(b) `serial`: one run at a time with every core as a torch thread.
Each run is a fresh `dynamics.cli train` process (start-up, training, evaluations, checkpoints), as the
local executor starts them; the wall time of the whole set gives runs per hour.

    .venv/bin/python benchmarks/runner_throughput.py                  # cpu preset, 2 epochs per run
    .venv/bin/python benchmarks/runner_throughput.py --epochs 8       # the preset's own length
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def train_command(preset: str, out: Path, threads: int, epochs: float, seed: int) -> list[str]:
    return [sys.executable, "-m", "dynamics.cli", "train", "--preset", preset, "--out", str(out), "--quiet",
            f"train.threads={threads}", f"train.epochs={epochs}", f"train.seed={seed}"]


def run_set(mode: str, preset: str, runs: int, cores: int, epochs: float, root: Path) -> dict:
    """Train `runs` runs in the given mode; returns the record with wall time and runs per hour."""
    threads = 1 if mode == "parallel" else cores
    at_once = cores if mode == "parallel" else 1
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    commands = [train_command(preset, root / f"{mode}-{i}", threads, epochs, seed=i) for i in range(runs)]
    start = time.perf_counter()
    for first in range(0, runs, at_once):
        procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for cmd in commands[first:first + at_once]]
        for proc in procs:
            _, err = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"run failed ({' '.join(proc.args)}):\n{err[-2000:]}")
    wall = time.perf_counter() - start
    return {"mode": mode, "runs": runs, "runs_at_once": at_once, "threads_per_run": threads,
            "epochs": epochs, "wall_s": round(wall, 1), "runs_per_hour": round(runs / wall * 3600, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--epochs", type=float, default=2.0, help="train.epochs per run (cpu preset: 8)")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--runs", type=int, default=0, help="runs per mode (default: 2 x cores)")
    parser.add_argument("--json", type=Path, help="write the records to this file")
    args = parser.parse_args(argv)
    runs = args.runs or 2 * args.cores
    records = []
    print(f"{'mode':9s} {'runs':>4s} {'at once':>7s} {'threads':>7s} {'epochs':>6s} {'wall s':>8s} {'runs/h':>7s}")
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("parallel", "serial"):
            rec = run_set(mode, args.preset, runs, args.cores, args.epochs, Path(tmp))
            records.append(rec)
            print(f"{rec['mode']:9s} {rec['runs']:4d} {rec['runs_at_once']:7d} {rec['threads_per_run']:7d} "
                  f"{rec['epochs']:6g} {rec['wall_s']:8.1f} {rec['runs_per_hour']:7.1f}", flush=True)
    ratio = records[0]["runs_per_hour"] / records[1]["runs_per_hour"]
    print(f"parallel / serial throughput: {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(records, indent=2))


if __name__ == "__main__":
    main()
