"""The report: a verdict per finding, from the results store alone.

`write_report(root, scale, studies)` writes under `<root>/<scale>/`:
- `report.md`: per study the question, the paper's finding, the verdict with effect and 95% CI, the table;
- `verdicts.csv`; `tables/<study>.{csv,md,tex}`; `figures/<study>.{png,pdf}`.
Studies are passed in (their metric and finding), so analysis never imports the trainer.
The numbers come from `analyze` (one study) and `verdicts` (the decision); this module writes them out.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ..results import atomic_write_bytes, load_results
from .analyze import StudyAnalysis, analyze_extra, analyze_named, finish_verdict, study_analysis
from .tables import markdown_table
from .verdicts import Verdict

__all__ = ["analyze_named", "study_analysis", "write_report"]  # analyze_named: the notebooks' import

REGIME_NOTE = ("A verdict counts only where the models learned: each study names reference runs and a bar for them "
               "as a share of the noise-to-data distance (value / ceiling; `reference` below). A study whose "
               "reference misses its bar is reported as **not in the learning regime**, whatever its test reads.")
BLOWUP_NOTE = ("Blow-ups: a run whose final metric is above the noise ceiling, or that diverged. It counts as the "
               "ceiling (no better than noise) in means, tests and the regime check; `blowups` counts them per "
               "condition and the figures mark them with red crosses.")
POWER_NOTE = ("`detectable`: the smallest effect the study's seeds detect at the measured seed spread (two-sided 95% "
              "t-test, 80% power; paired by seed): an inconclusive verdict rules out effects of at least this size "
              "(80% of the time). `paper here`: the paper's relative change (experiments/paper.py) applied to the "
              "control's value at this scale.")
HEADER = ("| study | finding | verdict | effect [95% CI] | detectable | paper here | reference / bar | blow-ups "
          "| seeds |", "|---|---|---|---|---|---|---|---|---|")


def _fmt(x: float, spec: str = "+.3g") -> str:
    return "" if x is None or not math.isfinite(x) else format(x, spec)


def _ci(v: Verdict) -> str:
    return "" if not math.isfinite(v.effect) else f"{v.effect:+.3g} [{v.ci_low:+.3g}, {v.ci_high:+.3g}]"


def _claim(claim: str, v: Verdict) -> str:
    """The finding's claim, with its reading's noise-to-signal ratio where it has one (O1 contamination)."""
    if not (math.isfinite(v.noise_ratio) or math.isfinite(v.noise_ratio_analytic)):
        return claim
    return (f"{claim}; noise / signal at the claim's k: {_fmt(v.noise_ratio, '.3g') or 'not logged'} measured, "
            f"{_fmt(v.noise_ratio_analytic, '.3g') or '?'} by definition")


def _share(verdict: Verdict) -> str:
    if not math.isfinite(verdict.reference_share):
        return verdict.regime
    return f"{verdict.reference_share:.1%} / {verdict.bar:.0%} ({verdict.regime})"


def _power(study, verdict: Verdict) -> str:
    """The power line: the smallest effect the seeds detect, and the paper's effect at this scale."""
    line = (f"- Power: effects below {verdict.detectable:.3g} go undetected more than 20% of the time with "
            f"{verdict.seeds} seeds" if math.isfinite(verdict.detectable)
            else f"- Power: not computable ({verdict.seeds} seed(s); needs at least 2 with a spread)")
    paper = getattr(study, "paper_effect", None)
    if paper is not None:
        line += f"; the paper's effect ({paper.describe()})"
        line += (f" is {verdict.paper_effect:+.3g} here." if math.isfinite(verdict.paper_effect) else ".")
    return line if line.endswith(".") else line + "."


def _study_section(study, scale: str, result: StudyAnalysis) -> list[str]:
    """The study's heading, finding, metric, verdict, regime check and power."""
    v = result.verdict
    lines = [f"## {study.name}: {study.question}", "",
             f"- Paper: {study.finding.claim}. Holds if {study.finding.holds_if}.",
             f"- Metric: {study.metric.description} (`{study.metric.name(scale)}`).",
             f"- Verdict: **{v.verdict}**. {v.detail}"]
    lines += [f"- Learning regime: {r.describe()}." for r in result.regime]
    if not result.regime:
        lines.append("- Learning regime: the study declares no reference runs.")
    return lines + [_power(study, v), ""]


def _study_figures_and_tables(study, root: Path, scale: str, result: StudyAnalysis) -> list[str]:
    lines = []
    if not result.table.empty:
        lines += [markdown_table(result.table), ""]
    if not result.blowups.empty:
        lines += [f"Blown-up runs ({len(result.blowups)}):", "", markdown_table(result.blowups), ""]
    if (root / scale / "figures" / f"{study.name}.png").exists():
        lines += [f"![{study.name}](figures/{study.name}.png)", ""]
    return lines


def write_report(root: str | Path, scale: str, studies: list) -> Path:
    """Analyse every study at `scale` and write report.md, verdicts.csv, tables and figures."""
    root = Path(root)
    evals = load_results(root, scale=scale, kind="evals")
    runs = load_results(root, scale=scale, kind="runs")
    summary = [f"# MeanFlow training dynamics: results at scale `{scale}`", "",
               "Verdict per finding from the final evaluation of every run (mean over seeds, 95% t-interval). "
               "Effects are oriented so that > 0 supports the paper's finding.", "", REGIME_NOTE, "", BLOWUP_NOTE,
               "", POWER_NOTE, "", *HEADER]
    sections, verdicts = [], []
    for study in studies:
        if scale in study.unsupported:
            continue
        result = study_analysis(study, scale, root, evals, runs)
        v = result.verdict
        verdicts.append(v.as_row())
        summary.append(f"| {study.name} | {_claim(study.finding.claim, v)} | **{v.verdict}** | {_ci(v)} "
                       f"| {_fmt(v.detectable, '.3g')} | {_fmt(v.paper_effect)} | {_share(v)} "
                       f"| {v.blowups} | {v.seeds} |")
        sections += _study_section(study, scale, result)
        for extra in study.extra_findings:
            ev = finish_verdict(study, analyze_extra(study, extra, scale, root, evals), pd.DataFrame(), result.regime)
            verdicts.append(ev.as_row())
            summary.append(f"| {study.name} | {_claim(extra.claim, ev)} | **{ev.verdict}** | {_ci(ev)} "
                           f"| {_fmt(ev.detectable, '.3g')} |  | {_share(ev)} | | {ev.seeds} |")
            sections += [f"- Further finding: {extra.claim}. Holds if {extra.holds_if}. "
                         f"Verdict: **{ev.verdict}**. {ev.detail}", ""]
        sections += _study_figures_and_tables(study, root, scale, result)
    out = root / scale / "report.md"
    atomic_write_bytes(out, ("\n".join(summary + [""] + sections) + "\n").encode())
    atomic_write_bytes(root / scale / "verdicts.csv", pd.DataFrame(verdicts).to_csv(index=False).encode())
    return out
