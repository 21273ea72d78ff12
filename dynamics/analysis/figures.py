"""Figures a reader can judge: every value against the floor (data vs data) and the noise ceiling (noise vs
data), the study's reference runs and their regime bar, every seed's point, and blown-up runs marked.

Distances are drawn on a log axis so that the floor, the ceiling and differences of a few percent between
arms all stay readable. Blown-up runs sit at the ceiling (their capped value) as red crosses. Functions return a
matplotlib Figure (no pyplot: no global backend change, safe inside notebooks) and save it when given `out`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .regime import RegimeResult
from .verdicts import t_interval

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def _save(fig, out: Path | None) -> None:
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "pdf"):
        fig.savefig(out.with_suffix(f".{ext}"), dpi=150, bbox_inches="tight")


def _bounds(ax, values: pd.DataFrame, regime: list[RegimeResult]) -> None:
    """Floor, ceiling, each reference's mean and its bar, as horizontal lines with a legend entry."""
    floor, ceiling = float(values["floor"].mean()), float(values["ceiling"].mean())
    if np.isfinite(floor):
        ax.axhline(floor, color="grey", ls=":", lw=1, label="floor (data vs data)")
    if np.isfinite(ceiling):
        ax.axhline(ceiling, color="black", ls="-", lw=1, label="ceiling (noise vs data)")
    for r in regime:
        color = ("#2ca02c", "#d62728")[r.status == "miss"] if r.status != "unchecked" else "grey"
        if np.isfinite(r.mean_value):
            ax.axhline(r.mean_value, color=color, ls="--", lw=1.2,
                       label=f"reference: {r.reference.name} ({r.reference.nfe}-NFE {r.reference.sampler})")
        if np.isfinite(ceiling):
            ax.axhline(r.reference.bar * ceiling, color=color, ls="-.", lw=0.8, alpha=0.7,
                       label=f"regime bar {r.reference.bar:.0%} of ceiling")
    if (values["value"] > 0).all() and np.isfinite(ceiling):
        ax.set_yscale("log")


def _finish(fig, ax, out: Path | None):
    """One legend entry per label, outside the axes on the right; save (PNG and PDF) when `out` is given."""
    handles, labels = ax.get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    ax.legend(seen.values(), seen.keys(), fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    _save(fig, out)
    return fig


def study_figure(study, values: pd.DataFrame, tag: str, hue: str | None, regime: list[RegimeResult],
                 out: Path | None = None):
    """Final metric per value of the compared tag (x), one colour per `hue` group: seeds as dots, the mean with
    its 95% interval, blow-ups as red crosses at the ceiling; floor, ceiling and reference lines."""
    from matplotlib.figure import Figure

    values = values.dropna(subset=[tag])
    if values.empty:  # no run carries the compared tag (e.g. a user's study whose runs are not tagged with it)
        return None
    if "blowup" not in values.columns:
        values = values.assign(blowup=False)
    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.subplots()
    xs = sorted(values[tag].unique(), key=lambda v: (isinstance(v, str), v))
    pos = {x: i for i, x in enumerate(xs)}
    groups = [(None, values)] if hue is None else list(values.groupby(hue, dropna=False))
    width = 0.5 / max(1, len(groups))
    for g, (label, group) in enumerate(groups):
        color = COLORS[g % len(COLORS)]
        shift = (g - (len(groups) - 1) / 2) * width
        for x, cell in group.groupby(tag):
            px = pos[x] + shift
            ok, blown = cell[~cell["blowup"]], cell[cell["blowup"]]
            ax.scatter([px] * len(ok), ok["value"], s=10, color=color, alpha=0.45, lw=0)
            ax.scatter([px] * len(blown), blown["value"], s=40, color="#d62728", marker="x", zorder=5)
            mean, low, high = t_interval(cell["value"].to_numpy())
            ax.errorbar(px, mean, yerr=[[mean - low], [high - mean]], fmt="o", color=color, ms=5, capsize=3,
                        label=(f"{hue}={label}" if hue else "mean, 95% CI") if x == xs[0] else None)
            ax.plot(px, float(cell["value"].median()), marker="_", color=color, ms=12)
    if "blowup" in values.columns and values["blowup"].any():
        ax.scatter([], [], s=40, color="#d62728", marker="x", label="blow-up (> ceiling or diverged)")
    _bounds(ax, values, regime)
    ax.set_xticks(range(len(xs)), [str(x) for x in xs], rotation=30, fontsize=7)
    ax.set_xlabel(tag)
    ax.set_ylabel(str(values["metric"].iloc[0]) if "metric" in values else "value")
    ax.set_title(f"{study.name}: {study.metric.description}\n(dots: seeds, o: mean, -: median)", fontsize=8)
    return _finish(fig, ax, out)


def curve_figure(study, curves: pd.DataFrame, tag: str, regime: list[RegimeResult], out: Path | None = None):
    """Metric against epoch per value of `tag` (e.g. vanilla vs full): the mean over seeds with its min-max band,
    each seed thin; floor, ceiling and the reference's bar. The convergence study's curves."""
    from matplotlib.figure import Figure

    curves = curves.dropna(subset=[tag])
    if curves.empty:
        return None
    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.subplots()
    for g, (label, arm) in enumerate(curves.groupby(tag)):
        color = COLORS[g % len(COLORS)]
        for _, seed in arm.groupby("seed"):
            seed = seed.sort_values("epoch")
            ax.plot(seed["epoch"], seed["value"], color=color, lw=0.5, alpha=0.4)
        stats = arm.groupby("epoch")["value"].agg(["mean", "min", "max"]).reset_index()
        ax.plot(stats["epoch"], stats["mean"], color=color, lw=1.8, marker="o", ms=3, label=f"{tag}={label}")
        ax.fill_between(stats["epoch"], stats["min"], stats["max"], color=color, alpha=0.15)
        if "blowup" in arm.columns and arm["blowup"].any():
            b = arm[arm["blowup"]]
            ax.scatter(b["epoch"], b["value"], color="#d62728", marker="x", s=30, label="blow-up")
    _bounds(ax, curves, regime)
    ax.set_xlabel("epoch")
    ax.set_ylabel(str(curves["metric"].iloc[0]))
    ax.set_title(f"{study.name}: {study.metric.description}", fontsize=8)
    return _finish(fig, ax, out)


def tas_figure(study, tas: pd.DataFrame, variant: str, out: Path | None = None):
    """The TAS matrices of one step variant, per init (columns) with the target recomputed and held (rows):
    rows of each matrix are the task stepped on, columns the task measured."""
    from matplotlib.figure import Figure

    part = tas[tas["variant"] == variant] if "variant" in tas.columns else tas.iloc[0:0]
    inits = list(dict.fromkeys(part["init"]))
    modes = [m for m in ("recomputed", "held", "-") if m in set(part["target_mode"])]  # -: no lookahead step
    if not inits or not modes:
        return None
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
            ax.set_title(f"init {init}" + (f", target {mode}" if mode != "-" else ""), fontsize=7)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6)
    fig.suptitle(f"{study.name}: TAS ({variant}); rows stepped on, columns measured", fontsize=8)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        for ext in ("png", "pdf"):
            fig.savefig(out.with_suffix(f".{ext}"), dpi=150)
    return fig
