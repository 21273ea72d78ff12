"""Where a reproduction's time went: per study, the runs it trained, their steps, and the training + evaluation
time each run logged (metrics.jsonl), in CPU-seconds of one thread. Links to another study's runs (shared runs)
are counted once, in the owner's directory.

    python benchmarks/where_time_goes.py results/cpu
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path


def study_times(store: Path) -> dict[str, list]:
    """{study: [runs, steps, seconds, evaluations]} over the store's own (non-linked) run directories."""
    totals: dict[str, list] = defaultdict(lambda: [0, 0, 0.0, 0])
    for metrics in sorted(store.glob("*/*/metrics.jsonl")):
        if metrics.is_symlink():
            continue
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        if not rows:
            continue
        # the step the first process started from (stores written before rows had start_step: step - rate * time)
        start = rows[0].get("start_step", round(rows[0]["step"] - rows[0]["steps_per_s"] * rows[0]["time"]))
        evals = metrics.with_name("eval.jsonl")
        n_evals = len({json.loads(line)["step"] for line in evals.read_text().splitlines() if line.strip()}) \
            if evals.exists() else 0
        t = totals[metrics.parent.parent.name]
        t[0] += 1
        t[1] += rows[-1]["step"] - start
        t[2] += rows[-1]["time"]
        t[3] += n_evals
    return dict(totals)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("store", type=Path, help="a scale's results directory, e.g. results/cpu")
    args = p.parse_args(argv)
    totals = study_times(args.store)
    if not totals:
        print(f"no runs under {args.store}", file=sys.stderr)
        return 1
    print("| study | runs trained | steps | CPU-s | steps/s per run | evaluations |")
    print("|---|---|---|---|---|---|")
    grand = [0, 0, 0.0, 0]
    for name, (runs, steps, seconds, evals) in sorted(totals.items(), key=lambda kv: -kv[1][2]):
        print(f"| {name} | {runs} | {steps:,} | {seconds:,.0f} | {steps / seconds:.1f} | {evals} |")
        grand = [grand[0] + runs, grand[1] + steps, grand[2] + seconds, grand[3] + evals]
    print(f"| total | {grand[0]} | {grand[1]:,} | {grand[2]:,.0f} | {grand[1] / grand[2]:.1f} | {grand[3]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
