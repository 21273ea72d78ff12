"""Tables, figures and a report with a verdict per finding, from the results store alone.

`write_report(root, scale, studies)` writes under `<root>/<scale>/`:
- `report.md`: per study the question, the paper's finding, the verdict with effect and 95% CI, the table;
- `verdicts.csv`; `tables/<study>.{csv,md,tex}`; `figures/<study>.{png,pdf}`.
Studies are passed in (their metric and finding), so analysis never imports the trainer.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..results import atomic_write_bytes, load_results
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
    """The first epoch > 0 at which the curve, linearly interpolated between evaluations, reaches `target`
    (lower is better); inf when it never does. Interpolation makes speed-ups other than 240 / N readable."""
    prev_e, prev_v = None, None
    for e, v in zip(epochs, values):
        if e > 0 and v <= target:
            if prev_e is None or prev_e <= 0 or prev_v <= v:
                return float(e)
            return float(prev_e + (prev_v - target) / (prev_v - v) * (e - prev_e))
        prev_e, prev_v = float(e), float(v)
    return math.inf


def convergence_verdict(study, evals: pd.DataFrame, metric_name: str) -> tuple[Verdict, pd.DataFrame]:
    """Speed-up = control's final epoch / the (interpolated) epoch the treatment first reaches the control's
    final value; mean over seeds with a 95% t-interval."""
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


# O3's headline TAS variant (dynamics.affinity.DEFAULT_VARIANT; analysis reads results only, so named here).
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


def _figure(study, values: pd.DataFrame, tag: str, tags: list[str], out: Path) -> None:
    import seaborn as sns
    from matplotlib.figure import Figure  # no pyplot: no global backend change, safe inside notebooks

    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    independent = independent_tags(values, tag, tags)
    hue = independent[0] if independent else ("nfe" if values["nfe"].nunique() > 1 else None)
    sns.pointplot(data=values, x=tag, y="value", hue=hue, errorbar=("ci", 95), ax=ax, linestyle="none",
                  dodge=0.3 if hue else False)
    ceiling = float(values["ceiling"].mean())
    if np.isfinite(ceiling):
        ax.axhline(float(values["floor"].mean()), color="grey", ls=":", lw=1, label="floor (data vs data)")
    ax.set_title(f"{study.name}: {study.metric.description}", fontsize=8)
    ax.set_ylabel(str(values["metric"].iloc[0]))
    ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "pdf"):
        fig.savefig(out.with_suffix(f".{ext}"), dpi=150)


def _write_table(table: pd.DataFrame, out: Path) -> None:
    atomic_write_bytes(out.with_suffix(".csv"), table.to_csv(index=False).encode())
    atomic_write_bytes(out.with_suffix(".md"), markdown_table(table).encode())
    atomic_write_bytes(out.with_suffix(".tex"), table.to_latex(index=False, float_format="%.4g").encode())


def analyze_study(study, scale: str, root: Path, evals: pd.DataFrame) -> tuple[Verdict, pd.DataFrame]:
    """The verdict and the per-arm table of one study at one scale (figures and tables written)."""
    metric = study.metric
    name = metric.name(scale)
    base = root / scale
    if metric.kind == "tas":
        verdict, table = tas_verdict(study, base / study.name / "tas.csv")
    elif metric.kind == "epochs_to_target":
        mine = evals[evals["study"] == study.name] if not evals.empty else evals
        verdict, table = convergence_verdict(study, mine, replace(metric, kind="distance").name(scale))
    else:
        mine = evals[evals["study"] == study.name] if not evals.empty else evals
        values = final_values(mine, name, metric.sampler, metric.nfe)
        tags = _tag_names(study, scale)
        verdict = study_verdict(study, values, tags + ["seed"])
        table = arm_table(values, tags) if not values.empty else pd.DataFrame()
        if not values.empty and study.finding.tag in values.columns:
            _figure(study, values, study.finding.tag, tags, base / "figures" / study.name)
    if not table.empty:
        _write_table(table, base / "tables" / study.name)
    return verdict, table


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
    lines = [f"# MeanFlow training dynamics: results at scale `{scale}`", "",
             "Verdict per finding from the final evaluation of every run (mean over seeds, 95% t-interval). "
             "Effects are oriented so that > 0 supports the paper's finding.", "",
             "| study | finding | verdict | effect [95% CI] | seeds |", "|---|---|---|---|---|"]
    sections, verdicts = [], []
    for study in studies:
        if scale in study.unsupported:
            continue
        verdict, table = analyze_study(study, scale, root, evals)
        verdicts.append(verdict.as_row())
        ci = "" if not math.isfinite(verdict.effect) else \
            f"{verdict.effect:+.3g} [{verdict.ci_low:+.3g}, {verdict.ci_high:+.3g}]"
        lines.append(f"| {study.name} | {study.finding.claim} | **{verdict.verdict}** | {ci} | {verdict.seeds} |")
        sections += [f"## {study.name}: {study.question}", "",
                     f"- Paper: {study.finding.claim}. Holds if {study.finding.holds_if}.",
                     f"- Metric: {study.metric.description} (`{study.metric.name(scale)}`).",
                     f"- Verdict: **{verdict.verdict}**. {verdict.detail}", ""]
        for extra in study.extra_findings:
            ev = analyze_extra(study, extra, scale, root, evals)
            verdicts.append(ev.as_row())
            eci = "" if not math.isfinite(ev.effect) else f"{ev.effect:+.3g} [{ev.ci_low:+.3g}, {ev.ci_high:+.3g}]"
            lines.append(f"| {study.name} | {extra.claim} | **{ev.verdict}** | {eci} | {ev.seeds} |")
            sections += [f"- Further finding: {extra.claim}. Holds if {extra.holds_if}. "
                         f"Verdict: **{ev.verdict}**. {ev.detail}", ""]
        if not table.empty:
            sections += [markdown_table(table), ""]
            if (root / scale / "figures" / f"{study.name}.png").exists():
                sections += [f"![{study.name}](figures/{study.name}.png)", ""]
    out = root / scale / "report.md"
    atomic_write_bytes(out, ("\n".join(lines + [""] + sections) + "\n").encode())
    atomic_write_bytes(root / scale / "verdicts.csv", pd.DataFrame(verdicts).to_csv(index=False).encode())
    return out
