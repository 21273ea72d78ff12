"""Per-study tables and a verdict per finding: holds / does not hold / inconclusive, with effect and CI.

Reads the results store only (never the trainer). For each study it takes every run's final evaluation
of the study's metric, averages over seeds per arm, and tests the finding the study declares:
- trend:  the least-squares slope of the metric against the tag with one intercept per seed (seeds as
          blocks: a seed's offset cancels, the grid's points carry the degrees of freedom, N - seeds - 1),
          with its 95% t-interval. Holds when the interval lies on the declared side of zero.
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
    df: int = -1  # degrees of freedom of the interval; -1: seeds - 1 (a t-interval over per-seed values)

    def as_row(self) -> dict:
        return dict(self.__dict__)


def _decide(mean: float, low: float, high: float, n: int, df: int = -1) -> str:
    """'holds' when the effect is > 0 with confidence (the caller orients effects so > 0 supports it)."""
    if not math.isfinite(mean):
        return "inconclusive"
    if (n if df < 0 else df + 1) < 2 or not (math.isfinite(low) and math.isfinite(high)):
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


def _trend(values, finding, tags, lower_is_better) -> tuple[list, str]:
    sign = -1.0 if finding.direction == "decreasing" else 1.0
    results, details = [], []
    for label, group in _groups(values, finding.tag, tags):
        slope, se, df = seed_blocked_slope(group[finding.tag].astype(float).to_numpy(),
                                           group["value"].astype(float).to_numpy(), group["seed"].to_numpy())
        half = t_quantile(df) * se if df >= 1 else math.nan
        mean = sign * slope
        results.append((mean, mean - half, mean + half, int(group["seed"].nunique()), df))
        details.append(f"{label or 'all'}: slope {slope:+.3g} per unit of {finding.tag} (seed-blocked, df {df})")
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
    df = worst[4] if len(worst) > 4 else -1
    return Verdict(study.name, finding.claim, verdict, worst[0], worst[1], worst[2], worst[3], detail, df=df)


# ----------------------------------------------------------------------------------------------------
# further findings (issue 8.6): ExtraFinding kinds of experiments.registry, each an explicit test


def _extra(study, extra, verdict: str, mean: float, low: float, high: float, n: int, detail: str) -> Verdict:
    return Verdict(study.name, extra.claim, verdict, mean, low, high, n, detail)


def _match(frame: pd.DataFrame, where: dict) -> pd.DataFrame:
    out = frame
    for key, value in where.items():
        if key not in out.columns:
            return out.iloc[0:0]
        out = out[out[key].astype(str) == str(value)]
    return out


def _non_inferior(study, extra, values: pd.DataFrame) -> Verdict:
    """Treatment at most control + margin x ceiling (lower is better), paired by seed; effect > 0 supports it."""
    p = extra.params
    treated = _match(values, p["treatment"]).groupby("seed")["value"].mean()
    control = _match(values, p["control"]).groupby("seed")["value"].mean()
    ceiling = float(values["ceiling"].mean()) if "ceiling" in values else math.nan
    diff = (control + p["margin"] * ceiling - treated).dropna()
    if diff.empty:
        return _extra(study, extra, "inconclusive", math.nan, math.nan, math.nan, 0, "arms not evaluated yet")
    mean, low, high = t_interval(diff.to_numpy())
    detail = (f"treatment {float(treated.mean()):.4g} vs control {float(control.mean()):.4g} "
              f"(margin {p['margin']:g} x ceiling {ceiling:.3g})")
    return _extra(study, extra, _decide(mean, low, high, len(diff)), mean, low, high, len(diff), detail)


def _stability(study, extra, evals: pd.DataFrame, metric_name: str) -> Verdict:
    """Per seed, the slope of the metric's spread over the phase's evaluations (epoch > tag) against the tag;
    oriented so > 0 supports 'more stable as the tag grows'. Blow-ups per tag value in the detail."""
    tag = extra.tag
    rows = evals[(evals["metric"] == metric_name) & (evals["sampler"] == study.metric.sampler)
                 & (evals["nfe"] == study.metric.nfe[0])] if not evals.empty else evals
    if rows.empty or tag not in rows.columns:
        return _extra(study, extra, "inconclusive", math.nan, math.nan, math.nan, 0, "no evaluation curves yet")
    rows = rows.dropna(subset=[tag])
    rows = rows[rows["epoch"] > rows[tag].astype(float)]
    spread = rows.groupby(["seed", tag])["value"].std(ddof=1).reset_index()
    slopes = []
    for _, by_seed in spread.dropna().groupby("seed"):
        x = by_seed[tag].astype(float).to_numpy()
        if len(np.unique(x)) > 1:
            slopes.append(-float(np.polyfit(x, by_seed["value"].to_numpy(), 1)[0]))
    state = rows["state"] if "state" in rows.columns else pd.Series("", index=rows.index)
    blown = rows[(rows["value"] > rows["ceiling"]) | (state == "diverged")]
    blowups = blown.groupby(tag)["hash"].nunique().reindex(sorted(rows[tag].unique()), fill_value=0)
    mean, low, high = t_interval(np.array(slopes))
    per_tag = spread.groupby(tag)["value"].mean()
    detail = ("spread over the u phase per " + tag + ": "
              + ", ".join(f"{k}: {v:.3g}" for k, v in per_tag.items())
              + "; blow-ups: " + ", ".join(f"{k}: {int(v)}" for k, v in blowups.items()))
    return _extra(study, extra, _decide(mean, low, high, len(slopes)), mean, low, high, len(slopes), detail)


def _arm_value(values: pd.DataFrame, tag: str, arm: str) -> pd.Series:
    return values[values[tag].astype(str) == arm].groupby("seed")["value"].mean() if tag in values else pd.Series()


def _cross_scale(study, extra, values_by_scale: dict[str, pd.DataFrame]) -> Verdict:
    """Across the stores of several scales (1 seed each at paper scale: the verdict is the sign, '(1 seed)')."""
    p, tag = extra.params, extra.tag
    if extra.kind == "cross-scale-gap":
        a, b = p["arms"]
        gaps = {}
        for sc in p["scales"]:
            v = values_by_scale.get(sc, pd.DataFrame())
            va, vb, v0 = (_arm_value(v, tag, arm).mean() for arm in (a, b, "vanilla"))
            gaps[sc] = (va - vb) / v0 if v0 and np.isfinite(v0) else math.nan
        first, rest = p["scales"][0], p["scales"][1:]
        shrink = [gaps[first] - gaps[sc] for sc in rest]
        detail = "gap (" + f"{a} - {b}) / vanilla: " + ", ".join(f"{sc} {g:+.3g}" for sc, g in gaps.items())
        if not all(np.isfinite(shrink)):
            return _extra(study, extra, "inconclusive", math.nan, math.nan, math.nan, 0, detail + " (scales missing)")
        worst = min(shrink)
        return _extra(study, extra, ("holds" if worst > 0 else "does not hold") + " (1 seed)", worst, worst, worst,
                      1, detail)
    (ts, ta), (cs, ca) = p["treatment"], p["control"]
    t_val = _arm_value(values_by_scale.get(ts, pd.DataFrame()), tag, ta).mean()
    c_val = _arm_value(values_by_scale.get(cs, pd.DataFrame()), tag, ca).mean()
    if not (np.isfinite(t_val) and np.isfinite(c_val)):
        return _extra(study, extra, "inconclusive", math.nan, math.nan, math.nan, 0, f"{ts} or {cs} not evaluated")
    effect = p["margin"] * c_val - abs(t_val - c_val)
    return _extra(study, extra, ("holds" if effect > 0 else "does not hold") + " (1 seed)", effect, effect, effect,
                  1, f"{ts} {ta}: {t_val:.4g}, {cs} {ca}: {c_val:.4g} (margin {p['margin']:g})")


def extra_verdict(study, extra, scale: str, values: pd.DataFrame, evals: pd.DataFrame, metric_name: str,
                  values_by_scale: dict[str, pd.DataFrame] | None = None) -> Verdict:
    """The verdict of one ExtraFinding at `scale`: `values` are the study's final values there, `evals` its
    whole evaluation curves, `values_by_scale` the final values at the scales a cross-scale finding reads."""
    if scale in extra.not_applicable:
        return _extra(study, extra, "not applicable", math.nan, math.nan, math.nan, 0, extra.not_applicable[scale])
    if extra.kind == "non-inferior":
        return _non_inferior(study, extra, values)
    if extra.kind == "stability":
        return _stability(study, extra, evals, metric_name)
    return _cross_scale(study, extra, values_by_scale or {})
