"""Per-study tables and a verdict per finding: holds / does not hold / inconclusive, with effect and CI.

Reads the results store only (never the trainer). Every kind of verdict reduces its data to one or more
`Part`s (an effect oriented so that > 0 supports the finding, its 95% interval, its seeds) and `decide` turns
them into the verdict, so the rule is written once. The grid findings, on every run's final evaluation:
- trend:  the least-squares slope of the metric against the tag with one intercept per seed (seeds as
          blocks: a seed's offset cancels, the grid's points carry the degrees of freedom, N - seeds - 1),
          with its 95% t-interval. Holds when the interval lies on the declared side of zero.
- better: per seed, control minus treatment (lower is better, so > 0 means the treatment wins); every
          treatment arm must win, in every group (e.g. every NFE, every (w, kappa)).
- best:   the treatment arm against the runner-up, paired by seed.
- threshold (calibration): the 1-NFE distance, as a share of the noise-to-data distance, below `treatment`.
The other kinds: convergence speed-up (`convergence`), task affinity (`tas`), further findings (`extras`).
With one seed there is no interval: the verdict follows the sign and says "(1 seed)".
A finding that does not replicate is a result: the report states it as such.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

from .noise import with_noise_ratio, with_ratios
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
    # filled by dynamics.analysis.analyze.finish_verdict (regime check, blow-ups, power)
    regime: str = ""  # pass | miss | unchecked | no reference declared
    reference_share: float = math.nan  # worst reference's share of the noise-to-data distance
    bar: float = math.nan  # that reference's bar
    detectable: float = math.nan  # smallest effect the seeds detect (two-sided 95%, 80% power)
    paper_effect: float = math.nan  # the paper's relative change applied to the control's value here
    blowups: int = 0  # runs above the noise ceiling or diverged (all conditions)
    df: int = -1  # degrees of freedom of the interval; -1: seeds - 1 (a t-interval over per-seed values)
    # O1 contamination (dynamics.analysis.noise): the reading's ||noise|| / ||v|| at the claim's k
    noise_ratio: float = math.nan  # measured: metrics.jsonl's noise_ratio, mean over the runs
    noise_ratio_analytic: float = math.nan  # by definition: k sqrt(D) (literal), k (normalised)

    def as_row(self) -> dict:
        return dict(self.__dict__)


class Part(NamedTuple):
    """One tested quantity: the effect (> 0 supports the finding), its 95% interval, the seeds behind it and
    the interval's degrees of freedom (-1: seeds - 1)."""

    effect: float
    low: float
    high: float
    n: int
    df: int = -1


def decide(parts: Sequence[Part]) -> str:
    """The verdict on a finding tested as `parts` (every arm, group or setting must support it).

    A part holds when its interval lies above zero, does not hold when below, and is inconclusive otherwise;
    without an interval (one seed) its sign decides, marked "(1 seed)". The finding holds when every part
    holds, does not hold when any part does not, and is inconclusive otherwise."""
    def one(p: Part) -> str:
        if not math.isfinite(p.effect):
            return "inconclusive"
        if (p.n if p.df < 0 else p.df + 1) < 2 or not (math.isfinite(p.low) and math.isfinite(p.high)):
            return ("holds" if p.effect > 0 else "does not hold") + " (1 seed)"
        return "holds" if p.low > 0 else "does not hold" if p.high < 0 else "inconclusive"

    decisions = [one(p) for p in parts]
    if decisions and all(d.startswith("holds") for d in decisions):
        return decisions[0]
    if any(d.startswith("does not hold") for d in decisions):
        return "does not hold" + (" (1 seed)" if parts[0].n < 2 else "")
    return "inconclusive"


def judge(study: str, claim: str, parts: Sequence[Part], detail: str) -> Verdict:
    """The Verdict of `parts`, reporting the part that supports the finding least; inconclusive without parts."""
    if not parts:
        return Verdict(study, claim, "inconclusive", math.nan, math.nan, math.nan, 0, detail)
    worst = min(parts, key=lambda p: p.effect)
    return Verdict(study, claim, decide(parts), worst.effect, worst.low, worst.high, worst.n, detail, df=worst.df)


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
    (`blowups`, see dynamics.analysis.regime), the mean's share of the noise-to-data distance and, for contaminated
    runs, the noise-to-signal ratio measured and by definition (dynamics.analysis.noise)."""
    keys = [t for t in tags if t in values.columns] + ["nfe"]
    values = with_ratios(values)
    ratios = [c for c in ("noise_ratio", "noise_ratio_analytic") if c in values.columns]
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
                   ceiling=ceiling, **{c: float(group[c].mean()) for c in ratios})
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


def seed_blocked_slope(x: np.ndarray, y: np.ndarray, seeds: np.ndarray) -> tuple[float, float, int]:
    """(slope, standard error, df) of y = slope x + intercept[seed]: ordinary least squares with seeds as blocks.

    Centring x and y within each seed removes the intercepts, so slope = sum(xc yc) / sum(xc^2), and the
    residual variance has N - (number of seeds) - 1 degrees of freedom. Seeds whose x does not vary carry no
    information on the slope and are left out."""
    sxx = sxy = 0.0
    centred, used = [], 0
    for s in np.unique(seeds):
        xs, ys = x[seeds == s].astype(float), y[seeds == s].astype(float)
        if len(np.unique(xs)) < 2:
            continue
        xc, yc = xs - xs.mean(), ys - ys.mean()
        sxx, sxy, used = sxx + float(xc @ xc), sxy + float(xc @ yc), used + 1
        centred.append((xc, yc))
    if not used:
        return math.nan, math.nan, 0
    slope = sxy / sxx
    df = sum(len(xc) for xc, _ in centred) - used - 1
    if df < 1:
        return slope, math.nan, max(df, 0)
    residual = sum(float(((yc - slope * xc) ** 2).sum()) for xc, yc in centred)
    return slope, math.sqrt(residual / df / sxx), df


def seed_blocked_trend(values: pd.DataFrame, tag: str, direction: str, tags: list[str]) -> tuple[list[Part], str]:
    """Per group of the independent tags, the seed-blocked slope of the value against `tag`, oriented by
    `direction` (increasing | decreasing) so that > 0 supports the finding, with its 95% t-interval."""
    sign = -1.0 if direction == "decreasing" else 1.0
    results, details = [], []
    for label, group in _groups(values, tag, tags):
        slope, se, df = seed_blocked_slope(group[tag].astype(float).to_numpy(),
                                           group["value"].astype(float).to_numpy(), group["seed"].to_numpy())
        half = t_quantile(df) * se if df >= 1 else math.nan
        mean = sign * slope
        results.append(Part(mean, mean - half, mean + half, int(group["seed"].nunique()), df))
        details.append(f"{label or 'all'}: slope {slope:+.3g} per unit of {tag} (seed-blocked, df {df})")
    return results, "; ".join(details)


def _trend(values, finding, tags, lower_is_better) -> tuple[list[Part], str]:
    return seed_blocked_trend(values, finding.tag, finding.direction, tags)


def _better(values, finding, tags, lower_is_better) -> tuple[list[Part], str]:
    treatments = finding.treatment if isinstance(finding.treatment, tuple) else (finding.treatment,)
    orient = 1.0 if lower_is_better else -1.0
    results, details = [], []
    for label, group in _groups(values, finding.tag, tags):
        control = group[group[finding.tag] == finding.control].set_index("seed")["value"]
        for treatment in treatments:
            treated = group[group[finding.tag] == treatment].set_index("seed")["value"]
            diff = (control - treated).dropna() * orient
            mean, low, high = t_interval(diff.to_numpy())
            results.append(Part(mean, low, high, len(diff)))
            details.append(f"{label + ' ' if label else ''}{treatment} vs {finding.control}: {mean:+.3g}")
    return results, "; ".join(details)


def _best(values, finding, tags, lower_is_better) -> tuple[list[Part], str]:
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
        results.append(Part(mean, low, high, len(diff)))
        details.append(f"{label + ' ' if label else ''}{finding.treatment} vs runner-up {runner_up}: {mean:+.3g}")
    return results, "; ".join(details)


def _threshold(values, finding, tags, lower_is_better) -> tuple[list[Part], str]:
    share = (values["value"] / values["ceiling"]).to_numpy()
    mean, low, high = t_interval(finding.treatment - share)
    return [Part(mean, low, high, len(share))], f"1-NFE / noise-to-data = {float(np.mean(share)):.3f}"


COMPARE = {"trend": _trend, "better": _better, "best": _best, "threshold": _threshold}


def study_verdict(study, values: pd.DataFrame, tags: list[str]) -> Verdict:
    """Test the study's finding on its final values; `tags`: the tag names of the study's runs."""
    finding, metric = study.finding, study.metric
    if values.empty or finding.tag not in values.columns and finding.comparison != "threshold":
        return judge(study.name, finding.claim, [], f"no finished evaluations of the metric ({metric.description})")
    tags = sorted({t for t in tags if t in values.columns} | {finding.tag, "seed"})
    values = values.dropna(subset=[finding.tag]) if finding.tag in values.columns else values
    parts, detail = COMPARE[finding.comparison](values, finding, tags, metric.lower_is_better)
    return with_noise_ratio(judge(study.name, finding.claim, parts, detail), values, finding.tag, finding.control)
