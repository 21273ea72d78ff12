"""Analysis of the fidelity findings: the interpolated convergence speed-up, O3's verdict under each TAS variant,
the further findings (non-inferiority, stability, cross-scale) and both readings of O1's contamination."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from dynamics.analysis.analyze import study_analysis
from dynamics.analysis.convergence import crossing_epoch
from dynamics.analysis.extras import extra_verdict
from dynamics.analysis.noise import analytic_ratio
from dynamics.analysis.report import write_report
from dynamics.analysis.tas import TAS_DEFAULT_VARIANT, tas_verdict
from experiments.registry import get_study


@pytest.mark.parametrize("speedup", [2.1, 2.3, 2.5])
def test_interpolated_speedup_reads_the_papers_values(speedup):
    """With evaluations every 8 epochs and a curve linear between them, 240 / crossing gives the speed-up
    back (every 24 epochs without interpolation only 240 / N: 2.0x or 2.5x)."""
    epochs = np.arange(0, 241, 8, dtype=float)
    target = 1.0
    cross = 240 / speedup
    values = target + 0.01 * (cross - epochs)  # a straight curve through the target at `cross`
    assert 240 / crossing_epoch(epochs, values, target) == pytest.approx(speedup, abs=1e-9)
    assert crossing_epoch(epochs, values + 10, target) == float("inf")


def test_a_plateau_that_touches_the_target_early_is_not_a_speedup():
    """The epoch counted is the one from which the curve stays at or below the target: an early touch by noise
    on a plateau does not count, and a curve that ends above the target never reaches it."""
    epochs = np.arange(0, 241, 8, dtype=float)
    wobble = 1.0 + 0.01 * (-1.0) ** np.arange(len(epochs))  # 1.01, 0.99, ...: hovers around the target
    plateau = np.where(epochs < 40, 2.0, wobble)
    plateau[-1] = 1.001  # ends just above the target
    assert crossing_epoch(epochs, plateau, 1.0) == float("inf")
    plateau[-5], plateau[-4:] = 1.01, 0.99  # above at the fifth-last evaluation, below for good after it
    assert crossing_epoch(epochs, plateau, 1.0) == pytest.approx(epochs[-5] + 4)  # half-way: 0.01 of 0.02


def _tas_rows(variant, mode, effect_by_init):
    rows = []
    for init, value in effect_by_init.items():
        for seed in range(3):
            for src, tgt in (("v", "u[0.7,0.9]"), ("u[0.7,0.9]", "v"), ("v", "v")):
                rows.append(dict(init=init, seed=seed, variant=variant, target_mode=mode, source=src, target=tgt,
                                 value=value + 0.001 * seed))
    return rows


def test_o3_verdict_per_variant_says_whether_it_depends(tmp_path):
    study = get_study("o3-task-affinity")
    agree = {"random": 0.0, "v-only": 0.1, "u-small": 0.3}
    rows = _tas_rows(TAS_DEFAULT_VARIANT, "recomputed", agree) + _tas_rows(TAS_DEFAULT_VARIANT, "held", agree)
    rows += _tas_rows("d: gradient cosine", "-", agree)
    csv = tmp_path / "cpu" / study.name / "tas.csv"
    csv.parent.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(csv, index=False)
    verdict, table = tas_verdict(study, csv)
    assert verdict.verdict == "holds" and "does NOT depend" in verdict.detail
    assert set(table["target_mode"]) == {"recomputed", "held", "-"}
    assert not (tmp_path / "cpu" / "figures" / f"{study.name}.png").exists()  # the verdict draws nothing
    assert study_analysis(study, "cpu", tmp_path, pd.DataFrame()).verdict.verdict == "holds"
    assert (tmp_path / "cpu" / "figures" / f"{study.name}.png").exists()  # the analysis draws the matrices

    rows += _tas_rows("c: run's Adam state", "recomputed", {"random": 0.5, "v-only": 0.1, "u-small": 0.0})
    pd.DataFrame(rows).to_csv(csv, index=False)
    verdict, _ = tas_verdict(study, csv)
    assert verdict.verdict == "holds"  # the headline is variant b with the target recomputed
    assert "DEPENDS" in verdict.detail and "c: run's Adam state / target recomputed: does not hold" in verdict.detail


def _evals(rows):
    frame = pd.DataFrame(rows)
    frame["floor"], frame["ceiling"] = 0.0, 1.0
    return frame


def test_extra_findings_verdicts():
    """The further findings: O2 non-inferiority, O1 stability, cross-scale ones not applicable at cpu."""
    o2 = get_study("o2-interval-bins")
    (small_dt,) = o2.extra_findings
    rows = []
    for seed in range(3):
        rows.append(dict(seed=seed, role="v-pretrain", init="v-only", bin="none", value=0.10 + 0.001 * seed))
        rows.append(dict(seed=seed, role="fine-tune", init="random", bin="[0.1,0.3]", value=0.11 + 0.001 * seed))
    assert extra_verdict(o2, small_dt, "cpu", _evals(rows), pd.DataFrame(), "sw2").verdict == "holds"
    worse = [dict(r, value=r["value"] + 0.2) if r["init"] == "random" else r for r in rows]
    assert extra_verdict(o2, small_dt, "cpu", _evals(worse), pd.DataFrame(), "sw2").verdict == "does not hold"

    o1 = get_study("o1-v-first")
    (stable,) = o1.extra_findings
    curves = []
    for seed in range(3):
        for e_v in (0, 10, 20):
            for k, epoch in enumerate(range(e_v + 10, e_v + 61, 10)):
                wobble = (0.3 - 0.01 * e_v) * (-1) ** k + 0.001 * seed
                curves.append(dict(seed=seed, E_v=e_v, epoch=float(epoch), metric="sw2", sampler="u", nfe=1,
                                   value=0.5 + wobble, hash=f"{seed}-{e_v}"))
    v = extra_verdict(o1, stable, "cpu", pd.DataFrame(), _evals(curves), "sw2")
    assert v.verdict == "holds" and "blow-ups" in v.detail

    main = get_study("main")
    for extra in main.extra_findings:
        v = extra_verdict(main, extra, "cpu", pd.DataFrame(), pd.DataFrame(), "sw2")
        assert v.verdict == "not applicable" and "model sizes" in v.detail
    gap, match = main.extra_findings
    by_scale = {sc: _evals([dict(seed=0, method=m, value=val) for m, val in arms.items()]) for sc, arms in {
        "b4": {"vanilla": 11.58, "minsnr": 10.57, "dtd": 10.96},
        "m2": {"vanilla": 6.0, "minsnr": 5.6, "dtd": 5.65},
        "l2": {"vanilla": 3.84, "minsnr": 3.55, "dtd": 3.56, "dtd-lu": 3.47},
        "xl2": {"vanilla": 3.43}}.items()}
    assert extra_verdict(main, gap, "b4", pd.DataFrame(), pd.DataFrame(), "fid", by_scale).verdict == "holds (1 seed)"
    assert extra_verdict(main, match, "l2", pd.DataFrame(), pd.DataFrame(), "fid", by_scale).verdict == \
        "holds (1 seed)"


# -- O1 contamination: both readings judged, each with its noise-to-signal ratio ------------------------------


def _contamination_store(root, slope_literal: float, slope_normalised: float) -> list:
    """O1 contamination's cpu runs (the grid's configs and tags, 2 seeds) with a final 1-NFE value of
    0.1 + slope x k per reading plus a seed offset and a small jitter, and metrics.jsonl rows logging
    noise_ratio = the definition x (0.9, 1.0, 1.2) (mean: 1.0333 x the definition)."""
    study = get_study("o1-contaminated-v")
    runs = study.runs("cpu", seeds=2)
    for i, run in enumerate(runs):
        d = root / "cpu" / study.name / run.hash
        d.mkdir(parents=True)
        (d / "run.json").write_text(json.dumps({"study": study.name, "key": run.key, "hash": run.hash,
                                                "tags": run.tags}))
        (d / "config.json").write_text(json.dumps(run.config.to_dict()))
        (d / "status.json").write_text(json.dumps({"state": "done", "step": 10, "total_steps": 10}))
        literal = run.tags["form"] == "literal"
        k = run.tags["k"] if literal else run.tags["k_normalised"]
        value = 0.1 + (slope_literal if literal else slope_normalised) * k + 0.01 * run.seed + 0.002 * (i % 3)
        (d / "eval.jsonl").write_text(json.dumps({"step": 10, "epoch": 80.0, "metric": "sw2", "sampler": "u",
                                                  "nfe": 1, "value": value, "floor": 0.02, "ceiling": 1.0}) + "\n")
        c = run.config.objective.contamination_k
        ratio = c * math.sqrt(run.tags["dim"]) if literal else c
        rows = [{"step": s, "loss": 1.0} | ({"noise_ratio": ratio * f} if c else {})
                for s, f in ((1, 0.9), (2, 1.0), (3, 1.2))]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return runs


def test_both_contamination_readings_are_judged_with_their_noise_ratio(tmp_path, monkeypatch):
    """At cpu both readings are trained and judged: the literal one (the finding, tag k) and the normalised one
    (the further finding, tag k_normalised, whose k = 0 is the uncontaminated run), each verdict row carrying its
    ratio at k = 0.03: measured (the runs' mean logged noise_ratio) and by definition (k' sqrt(D) with
    k' = 0.03 sqrt(4096 / 2) on 2-D data, i.e. 0.03 x 64; k for the normalised noise)."""
    monkeypatch.setattr("dynamics.analysis.analyze.study_figure", lambda *a, **k: None)  # seconds of matplotlib
    study = get_study("o1-contaminated-v")
    runs = _contamination_store(tmp_path, slope_literal=1.0, slope_normalised=0.0)
    normalised = [r for r in runs if r.tags["form"] == "normalised"]
    assert sorted({r.tags["k_normalised"] for r in normalised}) == [0.03, 0.3] and len(normalised) == 4
    write_report(tmp_path, "cpu", [study])
    verdicts = pd.read_csv(tmp_path / "cpu" / "verdicts.csv").set_index("finding")
    literal, norm = verdicts.loc[study.finding.claim], verdicts.loc[study.extra_findings[0].claim]
    assert literal["verdict"] == "holds" and literal["regime"] == "pass"
    assert norm["verdict"] in ("inconclusive", "does not hold") and norm["regime"] == "pass"
    assert literal["noise_ratio_analytic"] == pytest.approx(0.03 * math.sqrt(4096 / 2) * math.sqrt(2))
    assert literal["noise_ratio_analytic"] == pytest.approx(0.03 * 64)
    assert literal["noise_ratio"] == pytest.approx(0.03 * 64 * (0.9 + 1.0 + 1.2) / 3)
    assert norm["noise_ratio_analytic"] == pytest.approx(0.03)
    assert norm["noise_ratio"] == pytest.approx(0.03 * (0.9 + 1.0 + 1.2) / 3)
    assert "k_normalised = 0.3: 0.31 (definition 0.3)" in norm["detail"]
    table = pd.read_csv(tmp_path / "cpu" / "tables" / f"{study.name}.csv")
    for _, row in table.iterrows():  # every arm: its ratio by definition, and the logged one
        k = row["k"] if row["form"] == "literal" else row["k_normalised"]
        assert row["noise_ratio_analytic"] == pytest.approx(64 * k if row["form"] == "literal" else k)
        assert row["noise_ratio"] == pytest.approx(row["noise_ratio_analytic"] * 3.1 / 3)
    report = (tmp_path / "cpu" / "report.md").read_text()
    assert "(normalised reading); noise / signal at the claim's k: 0.031 measured, 0.03 by definition" in report

    # the other way round: a normalised effect with no literal one; without logged ratios (an old store) the
    # definition is still shown
    shutil.rmtree(tmp_path / "cpu")
    _contamination_store(tmp_path, slope_literal=0.0, slope_normalised=1.0)
    for m in (tmp_path / "cpu").rglob("metrics.jsonl"):
        m.unlink()
    write_report(tmp_path, "cpu", [study])
    verdicts = pd.read_csv(tmp_path / "cpu" / "verdicts.csv").set_index("finding")
    literal, norm = verdicts.loc[study.finding.claim], verdicts.loc[study.extra_findings[0].claim]
    assert norm["verdict"] == "holds" and literal["verdict"] in ("inconclusive", "does not hold")
    assert math.isnan(literal["noise_ratio"]) and literal["noise_ratio_analytic"] == pytest.approx(1.92)


def test_noise_ratio_by_definition():
    """k sqrt(D) for the literal noise, k for the normalised one, 0 without noise."""
    assert analytic_ratio(0.03, "literal", 4096) == pytest.approx(1.92)
    assert analytic_ratio(0.24, "literal", 64) == pytest.approx(1.92)
    assert analytic_ratio(0.3, "normalised", 2) == 0.3
    assert analytic_ratio(0.0, "literal", 2) == 0.0
