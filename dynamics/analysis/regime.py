"""Does a verdict stand on models that learned? The learning-regime check and blown-up runs.

Regime (docs/design.md): each study declares reference runs and a bar (`Study.reference`, a share of the
noise-to-data distance). Per reference, the final `sampler`/`nfe` distance of its runs over their ceiling is
averaged over seeds per grid point; the worst grid point is the reference's share. A study whose reference
misses its bar gets the verdict "not in the learning regime" (the test's own reading stays in the detail).
Where the share cannot be computed (no evaluation of the reference runs, or no ceiling: image FID at paper
scale), the check is "unchecked" and the verdict stands, marked so.

Blow-ups: a run whose final metric is above the noise ceiling (worse than sampling noise), not finite, or that
diverged. It is kept, flagged and counted per condition; in means, tests and the regime check it counts as
the ceiling (no better than noise), so one run at 51x the ceiling cannot make a cell's mean 17x the ceiling.
Its raw value stays in `raw` and in the report's list of blow-ups.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .verdicts import final_values


def _distance_name(scale: str) -> str:
    return {"smoke": "sw2", "cpu": "sw2", "digits": "fd_digits"}.get(scale, "fid")


def mark_blowups(values: pd.DataFrame, runs: pd.DataFrame | None = None, compared: str | None = None) -> pd.DataFrame:
    """Final values (lower is better) with `raw`, `blowup`, and `value` capped at the ceiling; diverged runs
    without a final evaluation are added as blow-ups at the ceiling (one row per metric/sampler/nfe seen).

    `compared`: the finding's tag. A run without it is not part of the comparison (O1's v-only parent read at
    1-NFE u sits at the noise ceiling by construction), so only a divergence makes it a blow-up."""
    if values.empty:
        return values.assign(raw=[], blowup=[]) if len(values.columns) else values
    out = values.copy()
    out["raw"] = out["value"].astype(float)
    ceiling = out["ceiling"].astype(float)
    diverged = out["state"].eq("diverged") if "state" in out.columns else False
    above = np.isfinite(ceiling) & (~np.isfinite(out["raw"]) | (out["raw"] > ceiling))
    if compared is not None and compared in out.columns:
        above &= out[compared].notna()
    out["blowup"] = above | diverged
    out["value"] = np.where(out["blowup"] & np.isfinite(ceiling), ceiling, out["raw"])
    if runs is not None and not runs.empty and "state" in runs.columns:
        lost = runs[runs["state"].eq("diverged") & ~runs["hash"].isin(out["hash"])]
        extra = []
        for _, run in lost.iterrows():
            for (metric, sampler, nfe), group in out.groupby(["metric", "sampler", "nfe"]):
                ceil = float(group["ceiling"].median())
                extra.append({**run.to_dict(), "metric": metric, "sampler": sampler, "nfe": nfe,
                              "value": ceil, "raw": math.nan, "floor": float(group["floor"].median()),
                              "ceiling": ceil, "blowup": True})
        if extra:
            out = pd.concat([out, pd.DataFrame(extra)], ignore_index=True)
    return out


def select_runs(frame: pd.DataFrame, tags: dict) -> pd.DataFrame:
    """Rows whose tags equal `tags` (numbers compared as numbers: E_v 20 matches 20.0)."""
    if frame.empty:
        return frame
    mask = pd.Series(True, index=frame.index)
    for key, want in tags.items():
        if key not in frame.columns:
            return frame.iloc[0:0]
        col = frame[key]
        if isinstance(want, (int, float)) and not isinstance(want, bool):
            mask &= (pd.to_numeric(col, errors="coerce") - float(want)).abs() < 1e-9
        else:
            mask &= col.astype(str) == str(want)
    return frame[mask]


def grid_point(frame: pd.DataFrame) -> pd.Series:
    """The run key without its seed suffix ("method=vanilla/s2" -> "method=vanilla"): one grid point."""
    if "key" not in frame.columns:
        return pd.Series("all", index=frame.index)
    return frame["key"].astype(str).map(lambda k: re.sub(r"/s\d+$", "", k))


@dataclass
class RegimeResult:
    """One reference's check: `share` is the worst grid point's mean (value / ceiling) over seeds."""

    reference: object  # experiments.findings.Reference
    status: str  # pass | miss | unchecked
    share: float = math.nan
    median_share: float = math.nan
    runs: int = 0
    blowups: int = 0
    mean_value: float = math.nan
    detail: str = ""

    def describe(self) -> str:
        ref = self.reference
        if self.status == "unchecked":
            return f"{ref.name}: unchecked ({self.detail})"
        verb = "meets" if self.status == "pass" else "misses"
        return (f"{ref.name} {ref.nfe}-NFE {ref.sampler}: {self.share:.1%} of noise-to-data (median "
                f"{self.median_share:.1%}, {self.runs} runs{f', {self.blowups} blown up' if self.blowups else ''})"
                f" {verb} the bar {ref.bar:.0%}")


def check_regime(study, scale: str, evals: pd.DataFrame, runs: pd.DataFrame | None = None) -> list[RegimeResult]:
    """Check every reference of `study` against the study's final evaluations (`evals`: this study's rows)."""
    out = []
    for ref in getattr(study, "reference", ()):
        values = final_values(evals, _distance_name(scale), ref.sampler, (ref.nfe,)) if not evals.empty else evals
        values = mark_blowups(values, runs) if not values.empty else values
        mine = select_runs(values, ref.runs) if not values.empty else values
        if mine.empty:
            out.append(RegimeResult(ref, "unchecked", detail=f"no {ref.nfe}-NFE {ref.sampler} evaluation of its runs"))
            continue
        share = mine["value"].astype(float) / mine["ceiling"].astype(float)
        if not np.isfinite(share).any():
            out.append(RegimeResult(ref, "unchecked", runs=len(mine),
                                    detail="the metric has no noise ceiling at this scale"))
            continue
        per_point = share.groupby(grid_point(mine)).mean()
        worst = float(per_point.max())
        out.append(RegimeResult(ref, "pass" if worst <= ref.bar else "miss", share=worst,
                                median_share=float(np.nanmedian(share)), runs=len(mine),
                                blowups=int(mine["blowup"].sum()), mean_value=float(mine["value"].mean())))
    return out


def regime_status(results: list[RegimeResult]) -> str:
    """The study's regime: miss if any reference misses, unchecked if any could not be checked, else pass."""
    if not results:
        return "no reference declared"
    states = {r.status for r in results}
    return "miss" if "miss" in states else "unchecked" if "unchecked" in states else "pass"


NOT_IN_REGIME = "not in the learning regime"


def blowup_table(values: pd.DataFrame) -> pd.DataFrame:
    """The blown-up runs: key, state, raw final value and its multiple of the ceiling."""
    if values.empty or "blowup" not in values.columns or not values["blowup"].any():
        return pd.DataFrame()
    rows = values[values["blowup"]]
    cols = [c for c in ("key", "state", "sampler", "nfe", "raw", "ceiling") if c in rows.columns]
    table = rows[cols].copy()
    table["x_ceiling"] = table["raw"] / table["ceiling"]
    return table.reset_index(drop=True)
