"""Tables, figures and a report with a verdict per finding, from the results store alone.

`write_report(root, scale, studies)` writes under `<root>/<scale>/`:
- `report.md`: per study the question, the paper's finding, the verdict with effect and 95% CI, the table;
- `verdicts.csv`; `tables/<study>.{csv,md,tex}`; `figures/<study>.{png,pdf}`.
Studies are passed in (their metric and finding), so analysis never imports the trainer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..results import atomic_write_bytes, load_results
from .figures import curve_figure, study_figure
from .power import detectable_from_interval, implied_effect
from .regime import NOT_IN_REGIME, RegimeResult, blowup_table, check_regime, mark_blowups, regime_status, select_runs
from .verdicts import Verdict, arm_table, extra_verdict, final_values, independent_tags, study_verdict, t_interval

LARGE_DT_TASKS = ("u[0.5,0.7]", "u[0.7,0.9]")


def markdown_table(table: pd.DataFrame) -> str:
    """A pipe table (numbers to 4 significant digits) without the optional `tabulate` dependency."""
    def cell(v) -> str:
        return f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)

    head = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "---|" * len(table.columns)
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([head, rule, *body]) + "\n"


def _tag_names(study, scale: str) -> list[str]:
    return sorted({k for spec in study.runs(scale, 1) for k in spec.tags if k != "seed"})


def crossing_epoch(epochs: np.ndarray, values: np.ndarray, target: float) -> float:
    """The epoch from which the curve, linearly interpolated between evaluations, stays at or below `target`
    to its end (lower is better); inf when its last value is above it. Interpolation makes speed-ups other than
    240 / N readable. "Stays", not "first touches": on a monotone curve they agree, but a curve that has
    plateaued near the target touches it by noise long before it gets there for good (the cpu reproduction
    read a 6x speed-up for DTD + L_u off first touches, while its final value was worse than vanilla's)."""
    points = [(float(e), float(v)) for e, v in zip(epochs, values)]
    if not points or points[-1][1] > target:
        return math.inf
    above = [i for i, (_, v) in enumerate(points) if v > target]
    if not above:  # at or below the target from the first evaluation on
        return next((e for e, _ in points if e > 0), math.inf)
    (e0, v0), (e1, v1) = points[above[-1]], points[above[-1] + 1]
    return e0 + (v0 - target) / (v0 - v1) * (e1 - e0)


def convergence_verdict(study, evals: pd.DataFrame, metric_name: str) -> tuple[Verdict, pd.DataFrame]:
    """Speed-up = control's final epoch / the (interpolated) epoch from which the treatment stays at or below the
    control's final value (`crossing_epoch`); mean over seeds with a 95% t-interval."""
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
    mean, low, high = t_interval(np.array(speedups) - 1.0)
    n = len(speedups)
    if n == 0:
        verdict = "inconclusive"
    elif n < 2:
        verdict = ("holds" if mean > 0 else "does not hold") + " (1 seed)"
    else:
        verdict = "holds" if low > 0 else "does not hold" if high < 0 else "inconclusive"
    detail = (f"speed-up {mean + 1:.2f}x [95% CI {low + 1:.2f}x, {high + 1:.2f}x] (1.0 = none; curve interpolated "
              "between evaluations)" if n else "no evaluation curves yet")
    return Verdict(study.name, f.claim, verdict, mean, low, high, n, detail), pd.DataFrame(table)


# O3's headline TAS variant (dynamics.study_tas.DEFAULT_VARIANT; analysis reads results only, so named here).
TAS_DEFAULT_VARIANT = "b: grad step of equal length"


def _tas_one_variant(study, tas: pd.DataFrame) -> tuple[Verdict, pd.DataFrame]:
    """The O3 verdict on one TAS table: per init, the mean affinity between the v task and the large-dt u tasks
    (both directions); the treatment init against the runner-up, paired by seed."""
    f = study.finding
    pairs = tas[((tas["source"] == "v") & tas["target"].isin(LARGE_DT_TASKS))
                | ((tas["target"] == "v") & tas["source"].isin(LARGE_DT_TASKS))]
    per_seed = pairs.groupby(["init", "seed"])["value"].mean().unstack("init")
    table = per_seed.agg(["mean", "std", "count"]).T.reset_index()
    if f.treatment not in per_seed or per_seed.shape[1] < 2:
        return Verdict(study.name, f.claim, "inconclusive", math.nan, math.nan, math.nan, 0, "inits missing"), table
    runner_up = per_seed.drop(columns=f.treatment).mean().idxmax()
    diff = (per_seed[f.treatment] - per_seed[runner_up]).dropna()
    mean, low, high = t_interval(diff.to_numpy())
    n = len(diff)
    if n < 2:
        verdict = ("holds" if mean > 0 else "does not hold") + " (1 seed)"
    else:
        verdict = "holds" if low > 0 else "does not hold" if high < 0 else "inconclusive"
    return (Verdict(study.name, f.claim, verdict, mean, low, high, n,
                    f"TAS(v <-> large dt): {f.treatment} minus runner-up {runner_up}"), table)


def tas_verdict(study, tas_csv: Path) -> tuple[Verdict, pd.DataFrame]:
    """O3: the verdict under the default variant (b, target recomputed), and under every other variant and
    target mode of tas.csv, with a line saying whether the finding depends on the choice (issue 8.5)."""
    f = study.finding
    if not tas_csv.exists():
        return (Verdict(study.name, f.claim, "inconclusive", math.nan, math.nan, math.nan, 0,
                        f"no {tas_csv.name}: run `dynamics tas --study {study.name} --scale ...`"), pd.DataFrame())
    tas = pd.read_csv(tas_csv)
    if "variant" not in tas.columns:  # a single-setting table (older stores)
        return _tas_one_variant(study, tas)
    tables, verdicts = [], {}
    for (variant, mode), part in tas.groupby(["variant", "target_mode"], sort=False):
        verdict, table = _tas_one_variant(study, part)
        verdicts[(variant, mode)] = verdict
        tables.append(table.assign(variant=variant, target_mode=mode, verdict=verdict.verdict,
                                   effect=verdict.effect))
    table = pd.concat(tables, ignore_index=True)
    head = verdicts.get((TAS_DEFAULT_VARIANT, "recomputed")) or next(iter(verdicts.values()))
    kinds = {v.verdict.split(" (")[0] for v in verdicts.values()}
    depends = ("the finding does NOT depend on the choice (same verdict under every variant and target mode)"
               if len(kinds) == 1 else "the finding DEPENDS on the choice: " + "; ".join(
                   f"{variant} / target {mode}: {v.verdict} ({v.effect:+.3g})"
                   for (variant, mode), v in verdicts.items()))
    head.detail = f"{head.detail} [variant {TAS_DEFAULT_VARIANT}, target recomputed]. {depends}"
    _tas_figure(study, tas, tas_csv.parent.parent / "figures" / study.name)
    return head, table


def _tas_figure(study, tas: pd.DataFrame, out: Path) -> None:
    """O3's TAS matrices, default variant, per init (columns) with the target recomputed and held (rows)."""
    from matplotlib.figure import Figure

    part = tas[tas["variant"] == TAS_DEFAULT_VARIANT]
    inits = list(dict.fromkeys(part["init"]))
    modes = [m for m in ("recomputed", "held") if m in set(part["target_mode"])]
    if not inits or not modes:
        return
    fig = Figure(figsize=(3.2 * len(inits), 3.0 * len(modes)))
    axes = np.atleast_2d(fig.subplots(len(modes), len(inits), squeeze=False))
    order = list(dict.fromkeys(part["source"]))
    lim = float(np.nanmax(np.abs(part["value"].to_numpy()))) or 1.0
    for r, mode in enumerate(modes):
        for c, init in enumerate(inits):
            cell = part[(part["target_mode"] == mode) & (part["init"] == init)]
            m = cell.pivot_table(index="source", columns="target", values="value", aggfunc="mean")
            m = m.reindex(index=order, columns=order)
            ax = axes[r, c]
            im = ax.imshow(m.to_numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.set_xticks(range(len(order)), order, rotation=60, fontsize=6)
            ax.set_yticks(range(len(order)), order, fontsize=6)
            for i in range(len(order)):
                for j in range(len(order)):
                    ax.text(j, i, f"{m.to_numpy()[i, j]:+.2g}", ha="center", va="center", fontsize=5)
            ax.set_title(f"init {init}, target {mode}", fontsize=7)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6)
    fig.suptitle(f"{study.name}: TAS ({TAS_DEFAULT_VARIANT}); rows stepped on, columns measured", fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "pdf"):
        fig.savefig(out.with_suffix(f".{ext}"), dpi=150)


def _write_table(table: pd.DataFrame, out: Path) -> None:
    atomic_write_bytes(out.with_suffix(".csv"), table.to_csv(index=False).encode())
    atomic_write_bytes(out.with_suffix(".md"), markdown_table(table).encode())
    atomic_write_bytes(out.with_suffix(".tex"), table.to_latex(index=False, float_format="%.4g").encode())


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
        import io

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


def study_analysis(study, scale: str, root: Path, evals: pd.DataFrame,
                   runs: pd.DataFrame | None = None) -> StudyAnalysis:
    """Analyse one study at one scale, writing its table and figure. `runs` (the store's run rows, which carry
    the diverged runs that have no evaluation) is loaded when not given."""
    root = Path(root)
    metric = study.metric
    name = metric.name(scale)
    base = root / scale
    mine = evals[evals["study"] == study.name] if not evals.empty else evals
    if runs is None:
        runs = load_results(root, study=study.name, scale=scale, kind="runs")
    runs = runs[runs["study"] == study.name] if not runs.empty else runs
    regime = check_regime(study, scale, mine, runs)
    values, curves, hue = pd.DataFrame(), pd.DataFrame(), None
    if metric.kind == "tas":
        verdict, table = tas_verdict(study, base / study.name / "tas.csv")
    elif metric.kind == "epochs_to_target":
        distance = replace(metric, kind="distance").name(scale)
        verdict, table = convergence_verdict(study, mine, distance)
        curves = mine[(mine["metric"] == distance) & (mine["sampler"] == metric.sampler)
                      & (mine["nfe"] == metric.nfe[0])] if not mine.empty else mine
        if not curves.empty and study.finding.tag in curves.columns:
            curves = mark_blowups(curves)  # per evaluation: above the ceiling is a blow-up at that epoch
            curve_figure(study, curves, study.finding.tag, regime, base / "figures" / study.name)
        else:
            curves = pd.DataFrame()
        values = mark_blowups(final_values(mine, distance, metric.sampler, metric.nfe), runs, study.finding.tag)
    else:
        values = final_values(mine, name, metric.sampler, metric.nfe)
        if metric.lower_is_better:  # a blow-up is a distance above the noise ceiling
            values = mark_blowups(values, runs, study.finding.tag)
        tags = _tag_names(study, scale)
        verdict = study_verdict(study, values, tags + ["seed"])
        table = arm_table(values, tags) if not values.empty else pd.DataFrame()
        if not values.empty and study.finding.tag in values.columns:
            independent = independent_tags(values.dropna(subset=[study.finding.tag]), study.finding.tag, tags)
            hue = independent[0] if independent else ("nfe" if values["nfe"].nunique() > 1 else None)
            study_figure(study, values, study.finding.tag, hue, regime, base / "figures" / study.name)
    table = mark_references(table, study)
    if not table.empty:
        _write_table(table, base / "tables" / study.name)
    verdict = finish_verdict(study, verdict, values, regime)
    return StudyAnalysis(verdict, table, regime, values, blowup_table(values), curves, hue)


def analyze_named(study, scale: str, root: str | Path) -> StudyAnalysis:
    """A study's analysis read from a results store (what the notebooks call with `get_study(name)`).

    The study is passed in, not looked up: analysis reads results and never imports the registry."""
    if isinstance(study, str):
        raise TypeError(f"analyze_named takes the Study, e.g. analyze_named(get_study({study!r}), ...)")
    evals = load_results(root, study=study.name, scale=scale, kind="evals")
    runs = load_results(root, study=study.name, scale=scale, kind="runs")
    return study_analysis(study, scale, Path(root), evals, runs)


def analyze_study(study, scale: str, root: Path, evals: pd.DataFrame,
                  runs: pd.DataFrame | None = None) -> tuple[Verdict, pd.DataFrame]:
    """The verdict and the per-arm table of one study at one scale (figures and tables written)."""
    result = study_analysis(study, scale, root, evals, runs)
    return result.verdict, result.table


def mark_references(table: pd.DataFrame, study) -> pd.DataFrame:
    """A `reference` column naming the bar of the rows that are a reference's runs (empty for the others)."""
    if table.empty or not getattr(study, "reference", ()):
        return table
    table = table.copy()
    table["reference"] = ""
    for ref in study.reference:
        hit = select_runs(table, ref.runs).index
        table.loc[hit, "reference"] = f"bar {ref.bar:.0%} at {ref.nfe}-NFE {ref.sampler}"
    return table


def _fmt(x: float, spec: str = "+.3g") -> str:
    return "" if x is None or not math.isfinite(x) else format(x, spec)


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


def _share(verdict: Verdict) -> str:
    if not math.isfinite(verdict.reference_share):
        return verdict.regime
    mark = "pass" if verdict.regime == "pass" else "miss" if verdict.regime == "miss" else verdict.regime
    return f"{verdict.reference_share:.1%} / {verdict.bar:.0%} ({mark})"


def analyze_extra(study, extra, scale: str, root: Path, evals: pd.DataFrame) -> Verdict:
    """One ExtraFinding's verdict (issue 8.6); a cross-scale finding reads the stores of its scales together."""
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


def write_report(root: str | Path, scale: str, studies: list) -> Path:
    """Analyse every study at `scale` and write report.md, verdicts.csv, tables and figures."""
    root = Path(root)
    evals = load_results(root, scale=scale, kind="evals")
    runs = load_results(root, scale=scale, kind="runs")
    lines = [f"# MeanFlow training dynamics: results at scale `{scale}`", "",
             "Verdict per finding from the final evaluation of every run (mean over seeds, 95% t-interval). "
             "Effects are oriented so that > 0 supports the paper's finding.", "", REGIME_NOTE, "", BLOWUP_NOTE, "",
             POWER_NOTE, "",
             "| study | finding | verdict | effect [95% CI] | detectable | paper here | reference / bar | blow-ups "
             "| seeds |", "|---|---|---|---|---|---|---|---|---|"]
    sections, verdicts = [], []
    for study in studies:
        if scale in study.unsupported:
            continue
        result = study_analysis(study, scale, root, evals, runs)
        verdict, table = result.verdict, result.table
        verdicts.append(verdict.as_row())
        ci = "" if not math.isfinite(verdict.effect) else \
            f"{verdict.effect:+.3g} [{verdict.ci_low:+.3g}, {verdict.ci_high:+.3g}]"
        lines.append(f"| {study.name} | {study.finding.claim} | **{verdict.verdict}** | {ci} "
                     f"| {_fmt(verdict.detectable, '.3g')} | {_fmt(verdict.paper_effect)} | {_share(verdict)} "
                     f"| {verdict.blowups} | {verdict.seeds} |")
        paper = getattr(study, "paper_effect", None)
        sections += [f"## {study.name}: {study.question}", "",
                     f"- Paper: {study.finding.claim}. Holds if {study.finding.holds_if}.",
                     f"- Metric: {study.metric.description} (`{study.metric.name(scale)}`).",
                     f"- Verdict: **{verdict.verdict}**. {verdict.detail}"]
        for r in result.regime:
            sections.append(f"- Learning regime: {r.describe()}.")
        if not result.regime:
            sections.append("- Learning regime: the study declares no reference runs.")
        power = (f"- Power: effects below {verdict.detectable:.3g} go undetected more than 20% of the time with "
                 f"{verdict.seeds} seeds" if math.isfinite(verdict.detectable)
                 else f"- Power: not computable ({verdict.seeds} seed(s); needs at least 2 with a spread)")
        if paper is not None:
            power += f"; the paper's effect ({paper.describe()})"
            power += (f" is {verdict.paper_effect:+.3g} here." if math.isfinite(verdict.paper_effect) else ".")
        sections += [power if power.endswith(".") else power + ".", ""]
        for extra in study.extra_findings:
            ev = finish_verdict(study, analyze_extra(study, extra, scale, root, evals), pd.DataFrame(), result.regime)
            verdicts.append(ev.as_row())
            eci = "" if not math.isfinite(ev.effect) else f"{ev.effect:+.3g} [{ev.ci_low:+.3g}, {ev.ci_high:+.3g}]"
            lines.append(f"| {study.name} | {extra.claim} | **{ev.verdict}** | {eci} | {_fmt(ev.detectable, '.3g')} "
                         f"|  | {_share(ev)} | | {ev.seeds} |")
            sections += [f"- Further finding: {extra.claim}. Holds if {extra.holds_if}. "
                         f"Verdict: **{ev.verdict}**. {ev.detail}", ""]
        if not table.empty:
            sections += [markdown_table(table), ""]
        if not result.blowups.empty:
            sections += [f"Blown-up runs ({len(result.blowups)}):", "", markdown_table(result.blowups), ""]
        if (root / scale / "figures" / f"{study.name}.png").exists():
            sections += [f"![{study.name}](figures/{study.name}.png)", ""]
    out = root / scale / "report.md"
    atomic_write_bytes(out, ("\n".join(lines + [""] + sections) + "\n").encode())
    atomic_write_bytes(root / scale / "verdicts.csv", pd.DataFrame(verdicts).to_csv(index=False).encode())
    return out
