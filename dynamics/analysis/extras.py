"""Further findings of a study (`ExtraFinding` of experiments.findings), each an explicit test.

- non-inferior: the treatment at most control + margin x ceiling, paired by seed.
- stability: the metric's spread over a phase shrinks as the tag grows (a per-seed slope).
- cross-scale-gap / cross-scale-match: across the stores of several scales (one seed each at paper scale).
- trend: the metric moves in a direction as a tag grows, tested as a study's own trend finding (seed-blocked
  slope); `zero` names runs that stand at tag = 0 (O1 contamination's normalised reading starts from the
  uncontaminated run of the literal grid). On contaminated runs the verdict carries the noise-to-signal ratio.
Every verdict goes through `verdicts.judge`, as the study's own finding does.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .noise import with_noise_ratio
from .regime import mark_blowups
from .verdicts import Part, Verdict, judge, seed_blocked_trend, t_interval


def _verdict(study, extra, parts: list[Part], detail: str) -> Verdict:
    return judge(study.name, extra.claim, parts, detail)


def _match(frame: pd.DataFrame, where: dict) -> pd.DataFrame:
    """The rows whose tags have the given values (numbers compared as numbers: 0 matches 0.0)."""
    out = frame
    for key, value in where.items():
        if key not in out.columns:
            return out.iloc[0:0]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out = out[np.isclose(pd.to_numeric(out[key], errors="coerce"), float(value))]
        else:
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
        return _verdict(study, extra, [], "arms not evaluated yet")
    mean, low, high = t_interval(diff.to_numpy())
    detail = (f"treatment {float(treated.mean()):.4g} vs control {float(control.mean()):.4g} "
              f"(margin {p['margin']:g} x ceiling {ceiling:.3g})")
    return _verdict(study, extra, [Part(mean, low, high, len(diff))], detail)


def _stability(study, extra, evals: pd.DataFrame, metric_name: str) -> Verdict:
    """Per seed, the slope of the metric's spread over the phase's evaluations (epoch > tag) against the tag;
    oriented so > 0 supports 'more stable as the tag grows'. Blow-ups per tag value in the detail."""
    tag = extra.tag
    rows = evals[(evals["metric"] == metric_name) & (evals["sampler"] == study.metric.sampler)
                 & (evals["nfe"] == study.metric.nfe[0])] if not evals.empty else evals
    if rows.empty or tag not in rows.columns:
        return _verdict(study, extra, [], "no evaluation curves yet")
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
    return _verdict(study, extra, [Part(mean, low, high, len(slopes))], detail)


def _trend(study, extra, scale: str, values: pd.DataFrame) -> Verdict:
    """The slope of the metric against the tag with one intercept per seed (blow-ups counted as the ceiling), its
    sign by params['direction']; runs matching params['zero'] enter at tag = 0."""
    p, tag = extra.params, extra.tag
    if values.empty:
        return _verdict(study, extra, [], "no finished evaluations of the metric")
    values = values.copy()
    if tag not in values.columns:
        values[tag] = math.nan
    if p.get("zero"):
        values.loc[_match(values, p["zero"]).index, tag] = 0.0
    values = values.dropna(subset=[tag])
    if study.metric.lower_is_better:
        values = mark_blowups(values, compared=tag)
    tags = sorted({k for spec in study.runs(scale, 1) for k in spec.tags if k != "seed"} | {tag, "seed"})
    parts, detail = seed_blocked_trend(values, tag, p["direction"], tags)
    return with_noise_ratio(_verdict(study, extra, parts, detail), values, tag, p.get("control"))


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
            return _verdict(study, extra, [], detail + " (scales missing)")
        worst = min(shrink)
        return _verdict(study, extra, [Part(worst, worst, worst, 1)], detail)
    (ts, ta), (cs, ca) = p["treatment"], p["control"]
    t_val = _arm_value(values_by_scale.get(ts, pd.DataFrame()), tag, ta).mean()
    c_val = _arm_value(values_by_scale.get(cs, pd.DataFrame()), tag, ca).mean()
    if not (np.isfinite(t_val) and np.isfinite(c_val)):
        return _verdict(study, extra, [], f"{ts} or {cs} not evaluated")
    effect = p["margin"] * c_val - abs(t_val - c_val)
    return _verdict(study, extra, [Part(effect, effect, effect, 1)],
                    f"{ts} {ta}: {t_val:.4g}, {cs} {ca}: {c_val:.4g} (margin {p['margin']:g})")


def extra_verdict(study, extra, scale: str, values: pd.DataFrame, evals: pd.DataFrame, metric_name: str,
                  values_by_scale: dict[str, pd.DataFrame] | None = None) -> Verdict:
    """The verdict of one ExtraFinding at `scale`: `values` are the study's final values there, `evals` its
    whole evaluation curves, `values_by_scale` the final values at the scales a cross-scale finding reads."""
    if scale in extra.not_applicable:
        return Verdict(study.name, extra.claim, "not applicable", math.nan, math.nan, math.nan, 0,
                       extra.not_applicable[scale])
    if extra.kind == "non-inferior":
        return _non_inferior(study, extra, values)
    if extra.kind == "stability":
        return _stability(study, extra, evals, metric_name)
    if extra.kind == "trend":
        return _trend(study, extra, scale, values)
    return _cross_scale(study, extra, values_by_scale or {})
