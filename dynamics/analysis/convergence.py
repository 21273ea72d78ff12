"""The convergence finding: how much sooner the treatment reaches the control's final value.

Speed-up = the control's final epoch / the epoch from which the treatment stays at or below the control's
final value (lower is better), per seed; its mean with a 95% t-interval, decided as every other verdict.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .verdicts import Part, Verdict, judge, t_interval


def crossing_epoch(epochs: np.ndarray, values: np.ndarray, target: float) -> float:
    """The epoch from which the curve, linearly interpolated between evaluations, stays at or below `target`
    to its end (lower is better); inf when its last value is above it. Interpolation makes speed-ups other than
    240 / N readable. "Stays", not "first touches": on a monotone curve they agree, but a curve that has
    plateaued near the target touches it by noise long before it gets there for good, and would read as a
    large speed-up even when its final value is worse than the control's."""
    points = [(float(e), float(v)) for e, v in zip(epochs, values)]
    if not points or points[-1][1] > target:
        return math.inf
    above = [i for i, (_, v) in enumerate(points) if v > target]
    if not above:  # at or below the target from the first evaluation on
        return next((e for e, _ in points if e > 0), math.inf)
    (e0, v0), (e1, v1) = points[above[-1]], points[above[-1] + 1]
    return e0 + (v0 - target) / (v0 - v1) * (e1 - e0)


def convergence_verdict(study, evals: pd.DataFrame, metric_name: str) -> tuple[Verdict, pd.DataFrame]:
    """The speed-up per seed (`crossing_epoch` against the control's final value) and its verdict; the effect is
    speed-up - 1, so > 0 supports the finding."""
    f = study.finding
    rows = evals[(evals["metric"] == metric_name) & (evals["sampler"] == study.metric.sampler)
                 & (evals["nfe"] == study.metric.nfe[0])]
    speedups, table = [], []
    for seed, by_seed in rows.groupby("seed"):
        control = by_seed[by_seed[f.tag] == f.control].sort_values("epoch")
        treated = by_seed[by_seed[f.tag] == f.treatment].sort_values("epoch")
        if control.empty or treated.empty:
            continue
        target, final_epoch = float(control["value"].iloc[-1]), float(control["epoch"].iloc[-1])
        epoch = crossing_epoch(treated["epoch"].to_numpy(float), treated["value"].to_numpy(float), target)
        speedups.append(final_epoch / epoch if epoch > 0 else math.nan)
        table.append({"seed": seed, "control_final": target, "epochs_to_target": epoch, "speedup": speedups[-1]})
    if not speedups:
        return judge(study.name, f.claim, [], "no evaluation curves yet"), pd.DataFrame(table)
    mean, low, high = t_interval(np.array(speedups) - 1.0)
    detail = (f"speed-up {mean + 1:.2f}x [95% CI {low + 1:.2f}x, {high + 1:.2f}x] (1.0 = none; curve interpolated "
              "between evaluations)")
    return judge(study.name, f.claim, [Part(mean, low, high, len(speedups))], detail), pd.DataFrame(table)
