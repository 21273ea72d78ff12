"""Learning curves behind the cpu scale's sizing (docs/reproduction-cpu.md, "Sizing the cpu scale"): one run,
several EMAs.

Trains the cpu study config (`base_config("cpu")`, one step per "epoch" so phases are given in steps) with the
given batch, width, lr and phases, keeps one EMA copy per decay, and prints value / ceiling of sliced W2 for
1-NFE u and 32-NFE v samples at the given steps. One torch thread.

    python benchmarks/cpu_sizing.py parent --phases v:1200 --at 1000,1200 --emas 0.99,0.995 --seed 1
    python benchmarks/cpu_sizing.py o1 --phases v:600,u:1800 --at 1200
    python benchmarks/cpu_sizing.py vanilla --phases j:7200 --schedule cosine --at 2400,4800
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time

import torch

from dynamics.config import PhaseConfig
from dynamics.train import Trainer, update_ema
from experiments.registry import base_config

TERMS = {"v": "v", "u": "u", "j": "both"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name")
    p.add_argument("--phases", required=True, help="comma-separated terms:steps, terms in v, u, j (joint)")
    p.add_argument("--at", default="", help="comma-separated steps to evaluate at (and the end)")
    p.add_argument("--emas", default="0.99", help="comma-separated EMA decays")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--schedule", default="constant", choices=("constant", "cosine"))
    p.add_argument("--warmup", type=int, default=60)
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(1)
    cfg = base_config("cpu", shared_prefix=a.schedule == "constant")
    cfg.train.steps_per_epoch, cfg.train.batch_size, cfg.model.width = 1, a.batch, a.width
    cfg.train.lr, cfg.train.lr_schedule, cfg.train.warmup_steps, cfg.train.seed = a.lr, a.schedule, a.warmup, a.seed
    cfg.eval.num_samples, cfg.eval.metrics = a.samples, ["sw2"]
    cfg.phases = [PhaseConfig(epochs=float(n), terms=TERMS[t]) for t, n in (x.split(":") for x in a.phases.split(","))]
    decays = [float(x) for x in a.emas.split(",")]
    at = {int(x) for x in a.at.split(",") if x}
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, tmp)
        emas = [copy.deepcopy(trainer.model).eval() for _ in decays]
        while trainer.step < trainer.total_steps:
            trainer.train_step()
            for ema, decay in zip(emas, decays):
                update_ema(ema, trainer.model, decay)
            if trainer.step in at or trainer.step == trainer.total_steps:
                parts = []
                for ema, decay in zip(emas, decays):
                    share = {f"{r['sampler']}{r['nfe']}": r["value"] / r["ceiling"] for r in trainer.evaluator(ema, 0)}
                    parts.append(f"ema {decay:g}: u1 {share.get('u1', float('nan')):.3f} "
                                 f"v32 {share.get('v32', float('nan')):.3f}")
                print(f"{a.name} step {trainer.step}: " + " | ".join(parts), flush=True)
    print(f"{a.name}: {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
