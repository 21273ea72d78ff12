"""One study's analysis at one scale: its verdict (checked against the learning regime, with blow-ups and
power), its per-arm table and its figure, from the results store alone.

Studies are passed in (their metric and finding), so analysis never imports the trainer or the registry.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from ..results import load_results
from .convergence import convergence_verdict
from .extras import extra_verdict
from .figures import curve_figure, study_figure, tas_figure
from .power import detectable_from_interval, implied_effect
from .regime import NOT_IN_REGIME, RegimeResult, blowup_table, check_regime, mark_blowups, regime_status
from .tables import mark_references, write_table
from .tas import TAS_DEFAULT_VARIANT, tas_verdict
from .verdicts import Verdict, arm_table, final_values, independent_tags, study_verdict


@dataclass
class StudyAnalysis:
    """Everything the report prints for one study: the verdict, the per-arm table, the regime check of each
    reference, the final values (blow-ups flagged and capped) and the list of blown-up runs."""

    verdict: Verdict
    table: pd.DataFrame
    regime: list[RegimeResult] = field(default_factory=list)
    values: pd.DataFrame = field(default_factory=pd.DataFrame)
    blowups: pd.DataFrame = field(default_factory=pd.DataFrame)
    curves: pd.DataFrame = field(default_factory=pd.DataFrame)  # every evaluation along training (convergence)
    hue: str | None = None  # the figure's colour grouping

    def figure(self, study):
        """The study's figure, redrawn (for a notebook): its curves, else its final values; None without data."""
        tag = study.finding.tag
        if not self.curves.empty:
            return curve_figure(study, self.curves, tag, self.regime)
        if not self.values.empty and tag in self.values.columns:
            return study_figure(study, self.values, tag, self.hue, self.regime)
        return None

    def png(self, study) -> bytes | None:
        """The figure as PNG bytes (IPython.display.Image shows it under any matplotlib backend)."""
        fig = self.figure(study)
        if fig is None:
            return None
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        return buf.getvalue()

    def summary(self) -> str:
        """The verdict, the regime check of each reference, and the power, as the report prints them."""
        v = self.verdict
        lines = [f"{v.study}: {v.finding}", f"  verdict: {v.verdict}  ({v.detail})"]
        lines += [f"  regime: {r.describe()}" for r in self.regime] or ["  regime: no reference declared"]
        power = f"{v.detectable:.3g}" if math.isfinite(v.detectable) else f"not computable ({v.seeds} seed(s))"
        paper = f"{v.paper_effect:+.3g}" if math.isfinite(v.paper_effect) else "no paper number"
        lines.append(f"  detectable effect (95%, 80% power): {power}; paper's effect here: {paper}; "
                     f"blow-ups: {v.blowups}")
        return "\n".join(lines)


def control_value(study, values: pd.DataFrame) -> float:
    """The control's measured value (mean over seeds at the study's first NFE) that the paper's relative effect
    is applied to: the control arm of a `better` finding, the runner-up of a `best` one; nan otherwise."""
    f = study.finding
    if values.empty or f.tag not in values.columns or f.comparison not in ("better", "best"):
        return math.nan
    rows = values[values["nfe"] == study.metric.nfe[0]] if study.metric.nfe else values
    means = rows.groupby(f.tag)["value"].mean()
    if f.comparison == "better":
        return float(means.get(f.control, math.nan))
    others = means.drop(f.treatment, errors="ignore")
    if others.empty:
        return math.nan
    return float(others.min() if study.metric.lower_is_better else others.max())


def finish_verdict(study, verdict: Verdict, values: pd.DataFrame, regime: list[RegimeResult]) -> Verdict:
    """Add the regime check, blow-ups and power to a verdict; a reference that misses its bar overrides it."""
    status = regime_status(regime)
    checked = [r for r in regime if r.status != "unchecked"]
    worst = max(checked, key=lambda r: r.share / r.reference.bar, default=None)
    paper = getattr(study, "paper_effect", None)
    relative = paper.relative if paper is not None else None
    verdict = replace(
        verdict, regime=status,
        reference_share=worst.share if worst else math.nan, bar=worst.reference.bar if worst else math.nan,
        detectable=detectable_from_interval(verdict.effect, verdict.ci_high, verdict.seeds, df=verdict.df),
        paper_effect=implied_effect(relative, control_value(study, values), study.metric.lower_is_better,
                                    ratio=bool(paper and paper.ratio)),
        blowups=int(values["blowup"].sum()) if "blowup" in values.columns else 0)
    if status == "miss":
        missed = "; ".join(r.describe() for r in regime if r.status == "miss")
        verdict = replace(verdict, verdict=NOT_IN_REGIME,
                          detail=f"{missed}. The test alone reads: {verdict.verdict}. {verdict.detail}")
    return verdict


def _tas(study, base: Path) -> StudyAnalysis:
    csv = base / study.name / "tas.csv"
    verdict, table = tas_verdict(study, csv)
    if csv.exists():
        tas_figure(study, pd.read_csv(csv), TAS_DEFAULT_VARIANT, base / "figures" / study.name)
    return StudyAnalysis(verdict, table)


def _convergence(study, scale: str, base: Path, mine: pd.DataFrame, runs: pd.DataFrame,
                 regime: list[RegimeResult]) -> StudyAnalysis:
    """The speed-up to the control's final distance, read from the distance curves (drawn with blow-ups)."""
    metric, tag = study.metric, study.finding.tag
    distance = replace(metric, kind="distance").name(scale)
    verdict, table = convergence_verdict(study, mine, distance)
    curves = mine[(mine["metric"] == distance) & (mine["sampler"] == metric.sampler)
                  & (mine["nfe"] == metric.nfe[0])] if not mine.empty else mine
    if not curves.empty and tag in curves.columns:
        curves = mark_blowups(curves)  # per evaluation: above the ceiling is a blow-up at that epoch
        curve_figure(study, curves, tag, regime, base / "figures" / study.name)
    else:
        curves = pd.DataFrame()
    values = mark_blowups(final_values(mine, distance, metric.sampler, metric.nfe), runs, tag)
    return StudyAnalysis(verdict, table, values=values, curves=curves)


def _final_values(study, scale: str, base: Path, mine: pd.DataFrame, runs: pd.DataFrame,
                  regime: list[RegimeResult]) -> StudyAnalysis:
    """A grid finding (trend, better, best, threshold) on every run's final value."""
    metric, tag = study.metric, study.finding.tag
    values = final_values(mine, metric.name(scale), metric.sampler, metric.nfe)
    if metric.lower_is_better:  # a blow-up is a distance above the noise ceiling
        values = mark_blowups(values, runs, tag)
    tags = sorted({k for spec in study.runs(scale, 1) for k in spec.tags if k != "seed"})
    verdict = study_verdict(study, values, tags + ["seed"])
    table = arm_table(values, tags) if not values.empty else pd.DataFrame()
    hue = None
    if not values.empty and tag in values.columns:
        independent = independent_tags(values.dropna(subset=[tag]), tag, tags)
        hue = independent[0] if independent else ("nfe" if values["nfe"].nunique() > 1 else None)
        study_figure(study, values, tag, hue, regime, base / "figures" / study.name)
    return StudyAnalysis(verdict, table, values=values, hue=hue)


def study_analysis(study, scale: str, root: str | Path, evals: pd.DataFrame,
                   runs: pd.DataFrame | None = None) -> StudyAnalysis:
    """Analyse one study at one scale, writing its table and figure under <root>/<scale>/. `runs` (the store's
    run rows, which carry the diverged runs that have no evaluation) is loaded when not given."""
    base = Path(root) / scale
    mine = evals[evals["study"] == study.name] if not evals.empty else evals
    if runs is None:
        runs = load_results(root, study=study.name, scale=scale, kind="runs")
    runs = runs[runs["study"] == study.name] if not runs.empty else runs
    regime = check_regime(study, scale, mine, runs)
    if study.metric.kind == "tas":
        result = _tas(study, base)
    elif study.metric.kind == "epochs_to_target":
        result = _convergence(study, scale, base, mine, runs, regime)
    else:
        result = _final_values(study, scale, base, mine, runs, regime)
    table = mark_references(result.table, study)
    if not table.empty:
        write_table(table, base / "tables" / study.name)
    return replace(result, verdict=finish_verdict(study, result.verdict, result.values, regime), table=table,
                   regime=regime, blowups=blowup_table(result.values))


def analyze_named(study, scale: str, root: str | Path) -> StudyAnalysis:
    """A study's analysis read from a results store (what the notebooks call with `get_study(name)`)."""
    if isinstance(study, str):
        raise TypeError(f"analyze_named takes the Study, e.g. analyze_named(get_study({study!r}), ...)")
    evals = load_results(root, study=study.name, scale=scale, kind="evals")
    runs = load_results(root, study=study.name, scale=scale, kind="runs")
    return study_analysis(study, scale, root, evals, runs)


def analyze_extra(study, extra, scale: str, root: str | Path, evals: pd.DataFrame) -> Verdict:
    """One ExtraFinding's verdict; a cross-scale finding reads the stores of its scales together."""
    name = study.metric.name(scale)
    mine = evals[evals["study"] == study.name] if not evals.empty else evals
    values = final_values(mine, name, study.metric.sampler, study.metric.nfe) if not mine.empty else mine
    by_scale = None
    if extra.kind.startswith("cross-scale") and scale not in extra.not_applicable:
        scales = extra.params.get("scales") or (extra.params["treatment"][0], extra.params["control"][0])
        by_scale = {}
        for sc in scales:
            other = load_results(root, study=study.name, scale=sc, kind="evals")
            by_scale[sc] = (final_values(other, study.metric.name(sc), study.metric.sampler, study.metric.nfe[:1])
                            if not other.empty else other)
    return extra_verdict(study, extra, scale, values, mine, name, by_scale)
