"""Verdicts against synthetic results whose answer is known, and the report from a smoke study."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dynamics.analysis.report import write_report
from dynamics.analysis.verdicts import study_verdict, t_interval
from dynamics.launch import launch
from experiments.registry import Finding, Metric, Study, get_study


def _study(finding: Finding) -> Study:
    return Study(name="synthetic", question="?", metric=Metric("distance"), finding=finding, grid=lambda s: [])


def _frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{"nfe": 1, "floor": 0.0, "ceiling": 1.0, **r} for r in rows])


def test_t_interval_matches_formula():
    mean, low, high = t_interval(np.array([1.0, 2.0, 3.0]))
    assert mean == 2.0 and high - mean == pytest.approx(4.303 * 1.0 / np.sqrt(3))


@pytest.mark.parametrize("slope,expected", [(-0.1, "holds"), (0.1, "does not hold"), (0.0, "inconclusive")])
def test_trend_verdict(slope, expected):
    rng = np.random.default_rng(0)
    noise = 0.001 if slope else 0.05
    rows = [{"E_v": e, "seed": s, "value": 1.0 + slope * e + noise * rng.standard_normal()}
            for s in range(3) for e in (0, 5, 10)]
    finding = Finding("more v first is better", holds_if="", comparison="trend", tag="E_v", direction="decreasing")
    verdict = study_verdict(_study(finding), _frame(rows), ["E_v", "seed"])
    assert verdict.verdict == expected and verdict.seeds == 3


def test_better_needs_every_treatment_in_every_group():
    finding = Finding("all beat vanilla", holds_if="", comparison="better", tag="method",
                      treatment=("a", "b"), control="vanilla")
    rows = [{"method": m, "seed": s, "init": i, "value": v + 0.001 * s}
            for s in range(3) for i in ("x", "y")
            for m, v in (("vanilla", 1.0), ("a", 0.8), ("b", 0.9 if i == "x" else 1.2))]
    verdict = study_verdict(_study(finding), _frame(rows), ["method", "init", "seed"])
    assert verdict.verdict == "does not hold"  # b loses under init y
    assert verdict.effect == pytest.approx(-0.2)


def test_best_and_threshold():
    best = Finding("k = 1 best", holds_if="", comparison="best", tag="k", treatment=1.0)
    rows = [{"k": k, "seed": s, "value": {0.5: 1.1, 1.0: 1.0, 2.0: 1.2}[k] + 0.01 * s}
            for s in range(3) for k in (0.5, 1.0, 2.0)]
    verdict = study_verdict(_study(best), _frame(rows), ["k", "seed"])
    assert verdict.verdict == "holds" and verdict.effect == pytest.approx(0.1)
    threshold = Finding("learns", holds_if="", comparison="threshold", tag="arm", treatment=0.2)
    rows = [{"arm": "vanilla", "seed": s, "value": 0.1 + 0.01 * s} for s in range(3)]
    assert study_verdict(_study(threshold), _frame(rows), ["arm", "seed"]).verdict == "holds"


def test_report_from_a_smoke_study(tmp_path):
    study = get_study("o1-contaminated-v")
    launch([study], "smoke", executor="debug", root=tmp_path, progress=False)
    out = write_report(tmp_path, "smoke", [study])
    text = out.read_text()
    assert "o1-contaminated-v" in text and "| k |" in text
    for name in ("tables/o1-contaminated-v.csv", "tables/o1-contaminated-v.tex", "figures/o1-contaminated-v.png",
                 "figures/o1-contaminated-v.pdf", "verdicts.csv"):
        assert (tmp_path / "smoke" / name).exists(), name
    verdicts = pd.read_csv(tmp_path / "smoke" / "verdicts.csv")
    assert verdicts["verdict"].iloc[0].split(" (")[0] in ("holds", "does not hold", "inconclusive")
