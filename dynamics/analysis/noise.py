"""O1 contamination's noise-to-signal ratio ||noise|| / ||v||, measured and by definition, per arm and per verdict.

The paper's noise "scaled by k * ||v||" has two readings (dynamics.curriculum.contamination_noise) whose ratios
differ by sqrt(D), so every verdict on contaminated runs states the ratio its runs had:
- measured: metrics.jsonl's `noise_ratio` (the trainer logs, at every logged step, the batch mean of
  ||noise|| / ||v|| over the v rows), averaged over a run's rows, then over the runs;
- by definition: k sqrt(D) for the literal noise k ||v|| xi, xi ~ N(0, I_D) (sqrt(D) = sqrt(E ||xi||^2), the
  root-mean-square ratio), k for the normalised noise k ||v|| xi / ||xi||. k is the run's
  objective.contamination_k, D its data dimension (the run's tag `dim`). The measured mean of the literal ratio
  is k E||xi|| = k sqrt(2) Gamma((D+1)/2) / Gamma(D/2): 0.886 k sqrt(D) at D = 2, 0.996 at D = 64, 1.000 at 4096.
Rows without contamination (k = 0, other studies) get no ratio: nothing is read for them.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..results import METRICS_FILE, read_jsonl

if TYPE_CHECKING:
    from .verdicts import Verdict

K_COLUMN, FORM_COLUMN, DIM_TAG = "objective.contamination_k", "objective.contamination_form", "dim"


def contaminated(values: pd.DataFrame) -> bool:
    """Whether any row's run trained on a contaminated v target."""
    return K_COLUMN in values.columns and bool((pd.to_numeric(values[K_COLUMN], errors="coerce") > 0).any())


def analytic_ratio(k: float, form: str, dim: float) -> float:
    """||noise|| / ||v|| by definition: k sqrt(D) (literal), k (normalised); 0 without noise."""
    if not k:
        return 0.0
    return float(k) if form == "normalised" else float(k) * math.sqrt(float(dim))


def measured_ratio(run_dir: str | Path) -> float:
    """The mean of a run's logged `noise_ratio` (nan when it logged none: no contamination, or an old store)."""
    ratios = [row["noise_ratio"] for row in read_jsonl(Path(run_dir) / METRICS_FILE) if "noise_ratio" in row]
    return float(np.mean(ratios)) if ratios else math.nan


def with_ratios(values: pd.DataFrame) -> pd.DataFrame:
    """`values` with columns noise_ratio (measured) and noise_ratio_analytic (by definition) for each row's run
    (0 for uncontaminated runs); unchanged when no run is contaminated."""
    if values.empty or not contaminated(values):
        return values
    out = values.copy()
    k = pd.to_numeric(out[K_COLUMN], errors="coerce").fillna(0.0)
    form = out[FORM_COLUMN] if FORM_COLUMN in out.columns else pd.Series("literal", index=out.index)
    dim = pd.to_numeric(out[DIM_TAG], errors="coerce") if DIM_TAG in out.columns else pd.Series(math.nan, out.index)
    out["noise_ratio_analytic"] = [analytic_ratio(a, f, d) for a, f, d in zip(k, form, dim)]
    run_dirs = out["run_dir"] if "run_dir" in out.columns else pd.Series(None, index=out.index)
    measured = {d: measured_ratio(d) for d in run_dirs[k > 0].dropna().unique()}
    out["noise_ratio"] = [measured.get(d, math.nan) if a > 0 else 0.0 for d, a in zip(run_dirs, k)]
    return out


def ratio_table(values: pd.DataFrame, tag: str) -> pd.DataFrame:
    """Per value of `tag`: the mean measured and analytic ratio over its runs (empty when none is contaminated)."""
    values = with_ratios(values)
    if "noise_ratio" not in values.columns or tag not in values.columns:
        return pd.DataFrame()
    rows = values.dropna(subset=[tag])
    rows = rows.drop_duplicates("run_dir") if "run_dir" in rows.columns else rows
    return rows.groupby(tag)[["noise_ratio", "noise_ratio_analytic"]].mean()


def with_noise_ratio(verdict: Verdict, values: pd.DataFrame, tag: str, at) -> Verdict:
    """The verdict with its reading's ratio at tag value `at` (the claim's k) in noise_ratio and
    noise_ratio_analytic, and the ratio at every contaminated tag value in its detail; unchanged without noise."""
    table = ratio_table(values, tag)
    if table.empty:
        return verdict
    numeric = pd.to_numeric(pd.Series(table.index), errors="coerce").to_numpy(dtype=float)
    at = pd.to_numeric(pd.Series([at]), errors="coerce").iloc[0]
    hit = np.isclose(numeric, at)  # nan (no claim's k) matches nothing
    measured, analytic = (float(table[c].to_numpy()[hit][0]) if hit.any() else math.nan
                          for c in ("noise_ratio", "noise_ratio_analytic"))
    per = "; ".join(f"{tag} = {k:g}: {m:.3g} (definition {a:.3g})" for k, (m, a) in
                    zip(numeric, table.to_numpy()) if a > 0)
    detail = f"{verdict.detail}. Noise / signal measured (definition), per {tag}: {per}"
    return replace(verdict, noise_ratio=measured, noise_ratio_analytic=analytic, detail=detail)
