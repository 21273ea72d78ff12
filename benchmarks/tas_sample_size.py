"""The N of the accumulated TAS (the authors' Task Affinity Score) at a scale: the smallest N for which 5 disjoint
sample sets give every entry a standard deviation <= 0.05 and the same ranking of O3's inits.

For each candidate N, seed and O3 init (random, v-only, u-small; `dynamics.study_tas.study_sources`), the TAS
matrix is measured on 5 disjoint sets of N samples (`dynamics.affinity.affinity_values`, sets = batches). Per N:
- spread: the largest standard deviation (ddof 1) over the 5 sets of any off-diagonal entry, init and seed;
- ranking: per set, O3's statistic per init (the mean TAS between v and the large-dt bins, both directions, as
  dynamics.analysis.tas reads it) averaged over seeds, and the inits ordered by it; `agree` when all 5 sets give
  the same order (what the verdict reads); `seeds agree` counts the seeds whose own order is the same in all 5.
The chosen N is the smallest with spread <= 0.05 and agree. Record it in
dynamics/affinity/methods/accumulated.py (SAMPLES_BY_SCALE) and docs/fidelity.md.

    python benchmarks/tas_sample_size.py --scale cpu --results results        # O3's finished runs in a store
    python benchmarks/tas_sample_size.py --scale cpu --results /tmp/o3 --train-steps 80
        # a proxy where no store exists: O3's warm-ups trained for 80 steps each (40 epochs of 2 steps) first
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from dynamics.affinity import affinity_values
from dynamics.analysis.tas import LARGE_DT_TASKS
from dynamics.launch import launch
from dynamics.study_tas import study_sources
from experiments.registry import get_study

STUDY = "o3-task-affinity"
SETS = 5
MAX_STD = 0.05
DEFAULT_NS = (32, 64, 128, 256, 512, 1000)


def o3_statistic(matrix: np.ndarray, names: Sequence[str]) -> float:
    """The mean TAS between v and the large-dt bins, both directions (O3's verdict reads this)."""
    v = names.index("v")
    large = [names.index(t) for t in LARGE_DT_TASKS if t in names]
    return float(np.mean([matrix[v, j] for j in large] + [matrix[j, v] for j in large]))


def _order(stat: dict, inits: list[str], seeds: Sequence[int], k: int) -> tuple[str, ...]:
    """The inits by set k's statistic averaged over `seeds`, highest first."""
    score = {init: np.mean([stat[init, seed, k] for seed in seeds]) for init in inits}
    return tuple(sorted(inits, key=lambda i: -score[i]))


def summarise(values: dict[tuple[int, str, int], np.ndarray], names: Sequence[str],
              max_std: float = MAX_STD) -> pd.DataFrame:
    """values[(N, init, seed)]: (sets, n, n) -> one row per N: spread, rankings, whether they agree, ok."""
    off = ~np.eye(len(names), dtype=bool)
    rows = []
    for n in sorted({k[0] for k in values}):
        mine = {(init, seed): v for (m, init, seed), v in values.items() if m == n}
        inits = list(dict.fromkeys(init for init, _ in mine))
        seeds = sorted({seed for _, seed in mine})
        sets = min(v.shape[0] for v in mine.values())
        spread = max(float(v[:, off].std(axis=0, ddof=1).max()) for v in mine.values())
        stat = {(init, seed, k): o3_statistic(mine[init, seed][k], names)
                for init, seed in mine for k in range(sets)}
        orders = [_order(stat, inits, seeds, k) for k in range(sets)]
        agree = len(set(orders)) == 1
        seeds_agree = sum(len({_order(stat, inits, [s], k) for k in range(sets)}) == 1 for s in seeds)
        rows.append(dict(N=n, sets=sets, seeds=len(seeds), max_std=spread,
                         rankings=" | ".join(" > ".join(o) for o in dict.fromkeys(orders)), agree=agree,
                         seeds_agree=f"{seeds_agree}/{len(seeds)}", ok=spread <= max_std and agree))
    return pd.DataFrame(rows)


def chosen_n(table: pd.DataFrame) -> int | None:
    """The smallest N that is ok, None where none is."""
    ok = table[table["ok"]]
    return int(ok["N"].min()) if len(ok) else None


def measure(scale: str, root: str | Path, ns: Sequence[int], seeds: int | None = None,
            overrides: list[str] | None = None, sets: int = SETS, batch_size: int | None = None,
            say=print) -> tuple[dict[tuple[int, str, int], np.ndarray], list[str]]:
    """Every (N, init, seed)'s matrices on `sets` disjoint sets of N samples, with the O3 unit's TAS seed."""
    study = get_study(STUDY)
    values, names = {}, [t.name for t in study.tasks]
    for (init, seed, source), n in itertools.product(study_sources(study, scale, root, seeds, overrides), ns):
        names, v, _ = affinity_values(source, list(study.tasks), "accumulated", sets, samples=n, seed=seed,
                                      batch_size=batch_size)
        values[n, init, seed] = v
        say(f"  N={n} init={init} seed={seed}: max std {v.std(axis=0, ddof=1).max():.4f}")
    return values, names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", required=True)
    p.add_argument("--results", default="results")
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--ns", default=",".join(map(str, DEFAULT_NS)), help="candidate N, comma-separated")
    p.add_argument("--sets", type=int, default=SETS)
    p.add_argument("--batch-size", type=int, default=None, help="backward chunk (default: the run's batch)")
    p.add_argument("--train-steps", type=int, default=None, metavar="S",
                   help="proxy: first train O3's warm-ups for about S steps each (40 epochs of ceil(S/40) steps)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    overrides = list(args.overrides)
    if args.train_steps is not None:
        overrides.append(f"train.steps_per_epoch={max(1, math.ceil(args.train_steps / 40))}")
        launch([get_study(STUDY)], args.scale, executor="debug", root=args.results, seeds=args.seeds,
               progress=False, overrides=overrides, say=lambda s: print(s, file=sys.stderr))
    ns = [int(x) for x in args.ns.split(",")]
    values, names = measure(args.scale, args.results, ns, args.seeds, overrides, args.sets, args.batch_size,
                            say=lambda s: print(s, file=sys.stderr))
    table = summarise(values, names)
    print(f"{STUDY} at {args.scale} ({args.results}{', ' + ' '.join(overrides) if overrides else ''}): "
          f"{args.sets} disjoint sets per N; ok = max std <= {MAX_STD} and the same ranking in every set")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    n = chosen_n(table)
    print(f"chosen N: {n}" if n is not None else f"chosen N: none of {ns} (try larger N)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
