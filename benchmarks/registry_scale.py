"""Does the registry and the results store scale? And how fast is one run at each small scale?

    python benchmarks/registry_scale.py              # 1,000+ run grid: build + dry-run; 1,000 finished runs: load
    python benchmarks/registry_scale.py --step-rates # steps/s and eval seconds behind dynamics.launch.STEP_RATES

Targets (issue 4): a 1,000-run grid is built and dry-run in under 10 s; 1,000 finished runs load into a
DataFrame in under 5 s. The finished runs are fake (config, status, run record and eval rows written
directly), which is all the loader reads.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path


def grid_and_dry_run(seeds: int) -> float:
    from dynamics.cli import print_plan
    from dynamics.launch import default_jobs, prepare
    from experiments.registry import all_studies

    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        studies = all_studies()
        out = io.StringIO()
        with redirect_stdout(out):
            print_plan(prepare(studies, "cpu", "local", root, seeds), default_jobs(None))
        seconds = time.perf_counter() - start
    lines = out.getvalue().splitlines()
    runs = sum(1 for line in lines if "/s" in line and ("pending" in line))
    print(f"grid: {len(studies)} studies at cpu scale x {seeds} seeds = {runs} runs, built and dry-run in "
          f"{seconds:.2f} s (target < 10 s)")
    print(f"      {lines[-1]}")
    return seconds


def fake_store(root: Path, n: int) -> None:
    """n finished runs of the cpu-scale grids, as the trainer and the launcher leave them."""
    from dynamics.results import CONFIG_FILE, EVAL_FILE, RUN_FILE, STATUS_FILE
    from experiments.registry import all_studies

    rng = random.Random(0)
    specs = []
    seeds = 1
    while len(specs) < n:
        seeds += 1
        specs = [(s.name, r) for s in all_studies() for r in s.runs("cpu", seeds)]
    for study, spec in specs[:n]:
        run_dir = root / "cpu" / study / spec.hash
        run_dir.mkdir(parents=True)
        total = spec.config.total_steps()
        (run_dir / CONFIG_FILE).write_text(json.dumps(spec.config.to_dict(), indent=2))
        (run_dir / STATUS_FILE).write_text(json.dumps({"state": "done", "step": total, "total_steps": total,
                                                       "updated": time.time(), "pid": 1}))
        (run_dir / RUN_FILE).write_text(json.dumps({"study": study, "key": spec.key, "scale": "cpu",
                                                    "hash": spec.hash, "tags": spec.tags,
                                                    "depends_on": spec.depends_on}))
        rows = [{"step": total, "epoch": total / 4, "metric": m, "sampler": s, "nfe": nfe,
                 "value": rng.random(), "floor": 0.01, "ceiling": 1.0}
                for m in ("sw2", "energy") for s, nfe in (("u", 1), ("u", 2), ("v", 32))]
        (run_dir / EVAL_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))


def load(n: int) -> tuple[float, float]:
    from dynamics.results import load_results

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fake_store(root, n)
        start = time.perf_counter()
        runs = load_results(root, kind="runs")
        t_runs = time.perf_counter() - start
        start = time.perf_counter()
        evals = load_results(root, kind="evals")
        t_evals = time.perf_counter() - start
    print(f"load: {len(runs)} finished runs -> DataFrame {runs.shape} in {t_runs:.2f} s (target < 5 s); "
          f"their {len(evals)} eval rows -> {evals.shape} in {t_evals:.2f} s")
    return t_runs, t_evals


def step_rates(steps: int) -> None:
    """Steps/s of one run per small scale and phase kind (one torch thread), and one evaluation's seconds."""
    import torch

    from dynamics.config import PhaseConfig
    from dynamics.train import Trainer
    from experiments.registry import base_config

    torch.set_num_threads(1)
    print(f"{'scale':<7} {'phase':<6} {'steps/s':>8} {'eval s':>7}")
    for scale in ("smoke", "cpu", "digits"):
        n = steps if scale != "digits" else max(10, steps // 10)
        for terms in ("both", "v", "u"):
            cfg = base_config(scale)
            cfg.phases = [PhaseConfig(epochs=n / cfg.train.steps_per_epoch, terms=terms)]
            with tempfile.TemporaryDirectory() as tmp:
                trainer = Trainer(cfg, tmp)
                trainer.train_step()  # warm-up
                start = time.perf_counter()
                for _ in range(n - 1):
                    trainer.train_step()
                rate = (n - 1) / (time.perf_counter() - start)
                eval_s = float("nan")
                if terms == "both":
                    start = time.perf_counter()
                    trainer.evaluate()
                    eval_s = time.perf_counter() - start
            print(f"{scale:<7} {terms:<6} {rate:>8.1f} {eval_s:>7.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=25, help="seeds per grid point (25 -> 1,025 runs at cpu)")
    parser.add_argument("--runs", type=int, default=1000, help="fake finished runs to load")
    parser.add_argument("--step-rates", action="store_true", help="measure the small scales' step rates")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    if args.step_rates:
        step_rates(args.steps)
        return 0
    t_grid = grid_and_dry_run(args.seeds)
    t_runs, _ = load(args.runs)
    ok = t_grid < 10 and t_runs < 5
    print("ok" if ok else "TOO SLOW")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
