"""Per-study tables and a verdict per finding: holds / does not hold / inconclusive, with effect and CI.

Reads the results store only (never the trainer). For each study it takes every run's final evaluation
of the study's metric, averages over seeds per arm, and tests the finding the study declares:
- trend:  per seed, the least-squares slope of the metric against the tag; the mean slope over seeds
          with a 95% t-interval. Holds when the interval lies on the declared side of zero.
- better: per seed, control minus treatment (lower is better, so > 0 means the treatment wins); every
          treatment arm must win, in every group (e.g. every NFE, every (w, kappa)).
- best:   the treatment arm against the runner-up, paired by seed.
- threshold (calibration): the 1-NFE distance, as a share of the noise-to-data distance, below `treatment`.
With one seed there is no interval: the verdict follows the sign and says "(1 seed)".
A finding that does not replicate is a result: the report states it as such.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .power import t_quantile


def t_interval(values: np.ndarray) -> tuple[float, float, float]:
    """(mean, low, high) of a 95% Student-t interval; low = high = mean for a single value."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if len(values) < 2:
        return mean, mean, mean
    half = t_quantile(len(values) - 1) * float(values.std(ddof=1)) / math.sqrt(len(values))
    return mean, mean - half, mean + half


@dataclass
class Verdict:
    study: str
    finding: str
    verdict: str  # holds | does not hold | inconclusive
    effect: float
    ci_low: float
    ci_high: float
    seeds: int
    detail: str
    # filled by dynamics.analysis.report.finish_verdict (regime check, blow-ups, power)
    regime: str = ""  # pass | miss | unchecked | no reference declared
    reference_share: float = math.nan  # worst reference's share of the noise-to-data distance
    bar: float = math.nan  # that reference's bar
    detectable: float = math.nan  # smallest effect the seeds detect (two-sided 95%, 80% power)
    paper_effect: float = math.nan  # the paper's relative change applied to the control's value here
    blowups: int = 0  # runs above the noise ceiling or diverged (all conditions)

    def as_row(self) -> dict:
        return dict(self.__dict__)


def _decide(mean: float, low: float, high: float, n: int) -> str:
    """'holds' when the effect is > 0 with confidence (the caller orients effects so > 0 supports it)."""
    if not math.isfinite(mean):
        return "inconclusive"
    if n < 2:
        return ("holds" if mean > 0 else "does not hold") + " (1 seed)"
    if low > 0:
        return "holds"
    if high < 0:
        return "does not hold"
    return "inconclusive"


def final_values(evals: pd.DataFrame, metric_name: str, sampler: str, nfes: tuple[int, ...]) -> pd.DataFrame:
    """Each run's evaluation at its last evaluated step, for the study's metric, sampler and NFEs."""
    if evals.empty:
        return evals
    rows = evals[(evals["metric"] == metric_name) & (evals["sampler"] == sampler) & (evals["nfe"].isin(nfes))]
    if rows.empty:
        return rows
    last = rows.groupby("hash")["step"].transform("max")
    return rows[rows["step"] == last]


def arm_table(values: pd.DataFrame, tags: list[str]) -> pd.DataFrame:
    """Mean, median, spread and 95% interval over seeds per arm (tag values) and NFE, the blown-up runs per arm
    (`blowups`, see dynamics.analysis.regime) and the mean's share of the noise-to-data distance."""
    keys = [t for t in tags if t in values.columns] + ["nfe"]
    out = []
    for key, group in values.groupby(keys, dropna=False):
        mean, low, high = t_interval(group["value"].to_numpy())
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        ceiling = float(group["ceiling"].mean())
        row.update(mean=mean, median=float(group["value"].median()),
                   std=float(group["value"].std(ddof=1)) if len(group) > 1 else 0.0,
                   ci_low=low, ci_high=high, seeds=len(group),
                   blowups=int(group["blowup"].sum()) if "blowup" in group.columns else 0,
                   share=mean / ceiling if ceiling else math.nan, floor=float(group["floor"].mean()),
                   ceiling=ceiling)
        out.append(row)
    return pd.DataFrame(out)


def independent_tags(values: pd.DataFrame, tag: str, tags: list[str]) -> list[str]:
    """Tags that vary independently of the compared one (e.g. init in o2), not those it determines (the
    bin's upper edge, E_u = 80 - E_v, the method behind an arm): the findings hold within each of their groups."""
    out = []
    for t in tags:
        if t in (tag, "seed") or t not in values.columns:
            continue
        if values.groupby(tag, dropna=False)[t].nunique(dropna=False).max() > 1:
            out.append(t)
    return out


def _groups(values: pd.DataFrame, tag: str, tags: list[str]):
    others = independent_tags(values, tag, tags) + ["nfe"]
    if not others:
        yield "", values
        return
    for key, group in values.groupby(others, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        yield ", ".join(f"{k}={v}" for k, v in zip(others, key)), group


def _trend(values, finding, tags, lower_is_better) -> tuple[list, str]:
    sign = -1.0 if finding.direction == "decreasing" else 1.0
    results, details = [], []
    for label, group in _groups(values, finding.tag, tags):
        slopes = []
        for _, by_seed in group.groupby("seed"):
            x = by_seed[finding.tag].astype(float).to_numpy()
            if len(np.unique(x)) > 1:
                slopes.append(float(np.polyfit(x, by_seed["value"].to_numpy(), 1)[0]) * sign)
        mean, low, high = t_interval(np.array(slopes))
        results.append((mean, low, high, len(slopes)))
        details.append(f"{label or 'all'}: slope {sign * mean:+.3g} per unit of {finding.tag}")
    return results, "; ".join(details)


def _better(values, finding, tags, lower_is_better) -> tuple[list, str]:
    treatments = finding.treatment if isinstance(finding.treatment, tuple) else (finding.treatment,)
    orient = 1.0 if lower_is_better else -1.0
    results, details = [], []
    for label, group in _groups(values, finding.tag, tags):
        control = group[group[finding.tag] == finding.control].set_index("seed")["value"]
        for treatment in treatments:
            treated = group[group[finding.tag] == treatment].set_index("seed")["value"]
            diff = (control - treated).dropna() * orient
            mean, low, high = t_interval(diff.to_numpy())
            results.append((mean, low, high, len(diff)))
            details.append(f"{label + ' ' if label else ''}{treatment} vs {finding.control}: {mean:+.3g}")
    return results, "; ".join(details)


def _best(values, finding, tags, lower_is_better) -> tuple[list, str]:
    orient = 1.0 if lower_is_better else -1.0
    results, details = [], []
    for label, group in _groups(values, finding.tag, tags):
        means = group.groupby(finding.tag)["value"].mean() * orient
        others = means.drop(finding.treatment, errors="ignore")
        if finding.treatment not in means.index or others.empty:
            continue
        runner_up = others.idxmin()
        by_seed = group.pivot_table(index="seed", columns=finding.tag, values="value")
        diff = (by_seed[runner_up] - by_seed[finding.treatment]).dropna() * orient
        mean, low, high = t_interval(diff.to_numpy())
        results.append((mean, low, high, len(diff)))
        details.append(f"{label + ' ' if label else ''}{finding.treatment} vs runner-up {runner_up}: {mean:+.3g}")
    return results, "; ".join(details)


def _threshold(values, finding, tags, lower_is_better) -> tuple[list, str]:
    share = (values["value"] / values["ceiling"]).to_numpy()
    mean, low, high = t_interval(finding.treatment - share)
    return [(mean, low, high, len(share))], f"1-NFE / noise-to-data = {float(np.mean(share)):.3f}"


COMPARE = {"trend": _trend, "better": _better, "best": _best, "threshold": _threshold}


def study_verdict(study, values: pd.DataFrame, tags: list[str]) -> Verdict:
    """Test the study's finding on its final values; `tags`: the tag names of the study's runs."""
    finding, metric = study.finding, study.metric
    if values.empty or finding.tag not in values.columns and finding.comparison != "threshold":
        return Verdict(study.name, finding.claim, "inconclusive", math.nan, math.nan, math.nan, 0,
                       f"no finished evaluations of the metric ({metric.description})")
    tags = sorted({t for t in tags if t in values.columns} | {finding.tag, "seed"})
    values = values.dropna(subset=[finding.tag]) if finding.tag in values.columns else values
    parts, detail = COMPARE[finding.comparison](values, finding, tags, metric.lower_is_better)
    if not parts:
        return Verdict(study.name, finding.claim, "inconclusive", math.nan, math.nan, math.nan, 0, detail)
    decisions = [_decide(*p) for p in parts]
    if all(d.startswith("holds") for d in decisions):
        verdict = decisions[0]
    elif any(d.startswith("does not hold") for d in decisions):
        verdict = "does not hold" + (" (1 seed)" if parts[0][3] < 2 else "")
    else:
        verdict = "inconclusive"
    worst = min(parts, key=lambda p: p[0])  # the arm or group that supports the finding least
    return Verdict(study.name, finding.claim, verdict, worst[0], worst[1], worst[2], worst[3], detail)
