"""Verdicts against synthetic results whose answer is known, and the report from a smoke study."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from dynamics.analysis.analyze import study_analysis
from dynamics.analysis.power import (
    detectable_from_interval,
    implied_effect,
    paired_detectable,
    seeds_needed,
    t_power,
    two_sample_detectable,
)
from dynamics.analysis.regime import NOT_IN_REGIME, mark_blowups
from dynamics.analysis.report import write_report
from dynamics.analysis.verdicts import seed_blocked_slope, study_verdict, t_interval
from dynamics.launch import launch
from dynamics.results import load_results
from experiments.paper import PAPER_EFFECTS
from experiments.registry import Finding, Metric, Reference, RunSpec, Study, all_studies, base_config, get_study


def _study(finding: Finding) -> Study:
    return Study(name="synthetic", question="?", metric=Metric("distance"), finding=finding, grid=lambda s: [])


def _frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{"nfe": 1, "floor": 0.0, "ceiling": 1.0, **r} for r in rows])


def test_t_interval_matches_formula():
    mean, low, high = t_interval(np.array([1.0, 2.0, 3.0]))
    assert mean == 2.0 and high - mean == pytest.approx(4.30265 * 1.0 / np.sqrt(3), rel=1e-5)  # t_.975, df 2


@pytest.mark.parametrize("slope,expected", [(-0.1, "holds"), (0.1, "does not hold"), (0.0, "inconclusive")])
def test_trend_verdict(slope, expected):
    rng = np.random.default_rng(0)
    noise = 0.001 if slope else 0.05
    rows = [{"E_v": e, "seed": s, "value": 1.0 + slope * e + noise * rng.standard_normal()}
            for s in range(3) for e in (0, 5, 10)]
    finding = Finding("more v first is better", holds_if="", comparison="trend", tag="E_v", direction="decreasing")
    verdict = study_verdict(_study(finding), _frame(rows), ["E_v", "seed"])
    assert verdict.verdict == expected and verdict.seeds == 3


def test_seed_blocked_slope_is_least_squares_with_one_intercept_per_seed():
    """Against its definition: lstsq on [x, one dummy per seed], and the textbook standard error."""
    rng = np.random.default_rng(1)
    seeds = np.repeat([0, 1, 2], 5)
    x = np.tile([0.0, 5, 10, 15, 20], 3)
    y = 0.3 * seeds - 0.01 * x + 0.02 * rng.standard_normal(len(x))
    slope, se, df = seed_blocked_slope(x, y, seeds)
    design = np.column_stack([x] + [(seeds == s).astype(float) for s in range(3)])
    coef, residual, *_ = np.linalg.lstsq(design, y, rcond=None)
    assert slope == pytest.approx(coef[0], rel=1e-10) and df == 15 - 3 - 1
    cov = residual[0] / df * np.linalg.inv(design.T @ design)
    assert se == pytest.approx(np.sqrt(cov[0, 0]), rel=1e-8)


def test_trend_with_two_seeds_uses_the_grid_not_the_seed_count():
    """Two seeds with very different offsets and a clear common slope: the seed-blocked test holds (a t-interval
    over two per-seed slopes has one degree of freedom and could not tell)."""
    rows = [{"E_v": e, "seed": s, "value": 0.5 * s + 0.05 - 0.001 * e + 0.0002 * ((e * 7 + s) % 3 - 1)}
            for s in range(2) for e in (0, 5, 10, 15, 20)]
    finding = Finding("more v first is better", holds_if="", comparison="trend", tag="E_v", direction="decreasing")
    verdict = study_verdict(_study(finding), _frame(rows), ["E_v", "seed"])
    assert verdict.verdict == "holds" and verdict.seeds == 2 and verdict.df == 7


def test_a_run_outside_the_comparison_is_not_a_blowup():
    """O1's v-only parent read at 1-NFE u sits at the noise ceiling by construction: not a blow-up."""
    values = _frame([{"E_v": None, "seed": 0, "value": 1.2, "state": "done"},
                     {"E_v": 5.0, "seed": 0, "value": 1.3, "state": "done"},
                     {"E_v": 10.0, "seed": 0, "value": 0.2, "state": "done"}])
    marked = mark_blowups(values, compared="E_v")
    assert marked["blowup"].tolist() == [False, True, False]


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
    assert verdicts["verdict"].iloc[0].split(" (")[0] in ("holds", "does not hold", "inconclusive", NOT_IN_REGIME)
    for column in ("regime", "reference_share", "bar", "detectable", "paper_effect", "blowups"):
        assert column in verdicts.columns


# ----------------------------------------------------------------------------------------------------
# statistical power


def test_power_matches_textbook_sample_sizes():
    # Cohen's classic numbers (G*Power, two-sided 5%, 80% power, d = 0.5): 64 per group for two samples,
    # 34 for a one-sample / paired test (actual power 0.8015 and 0.8078)
    assert seeds_needed(0.5, 1.0, paired=False) == 64
    assert seeds_needed(0.5, 1.0, paired=True) == 34
    assert t_power(0.5, 1 / np.sqrt(34), 33) == pytest.approx(0.8078, abs=1e-3)
    assert t_power(0.5, np.sqrt(2 / 64), 126) == pytest.approx(0.8015, abs=1e-3)
    assert two_sample_detectable(1.0, 64, 64) == pytest.approx(0.499, abs=2e-3)


def test_power_approaches_the_normal_formula_and_is_exact_at_few_seeds():
    # many seeds: (z_.975 + z_.8) sd / sqrt(n)
    assert paired_detectable(1.0, 20000) * np.sqrt(20000) == pytest.approx(1.95996 + 0.84162, rel=2e-3)
    # 3 seeds: simulate paired t-tests at the detectable effect; they reject 80% of the time
    n, sd = 3, 0.7
    effect = paired_detectable(sd, n)
    rng = np.random.default_rng(0)
    diffs = effect + sd * rng.standard_normal((40000, n))
    t = diffs.mean(1) / (diffs.std(1, ddof=1) / np.sqrt(n))
    assert np.mean(np.abs(t) > 4.303) == pytest.approx(0.80, abs=0.01)
    # the interval a verdict prints carries the same information
    values = np.array([0.1, 0.5, 0.2])
    mean, _, high = t_interval(values)
    assert detectable_from_interval(mean, high, 3) == pytest.approx(paired_detectable(values.std(ddof=1), 3))
    assert np.isnan(paired_detectable(1.0, 1))


def test_paper_effect_is_scaled_to_the_control():
    main = PAPER_EFFECTS["main"]
    assert main.relative == pytest.approx(10.98 / 11.58 - 1)
    assert implied_effect(main.relative, 0.2) == pytest.approx(0.2 * (1 - 10.98 / 11.58))  # > 0: supports
    assert implied_effect(PAPER_EFFECTS["convergence"].relative, 0.2, ratio=True) == pytest.approx(1.1)
    assert np.isnan(implied_effect(PAPER_EFFECTS["o1-v-first"].relative, 0.2))
    assert set(PAPER_EFFECTS) >= {s.name for s in all_studies() if s.module.startswith("experiments.")}


# ----------------------------------------------------------------------------------------------------
# learning regime and blow-ups on a synthetic store


def _synthetic_study(name: str) -> Study:
    def grid(scale):
        return [RunSpec(f"arm={a}", base_config(scale), tags={"arm": a}) for a in ("vanilla", "full", "wild")]

    return Study(name=name, question="?", metric=Metric("1-NFE distance"), grid=grid,
                 finding=Finding("full beats vanilla", holds_if="", comparison="better", tag="arm",
                                 treatment="full", control="vanilla"),
                 reference=(Reference({"arm": "vanilla"}, 0.2, label="vanilla"),))


def _write_run(root, study, key, tags, value=None, state="done", ceiling=0.5):
    run = root / "cpu" / study / key.replace("=", "_").replace("/", "_")
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"key": key, "hash": run.name, "tags": tags, "study": study}))
    (run / "status.json").write_text(json.dumps({"state": state, "step": 10, "total_steps": 10}))
    if value is not None:
        rows = [{"step": 10, "epoch": 1.0, "metric": "sw2", "sampler": s, "nfe": 1, "value": value, "floor": 0.02,
                 "ceiling": ceiling} for s in ("u", "v")]
        (run / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _synthetic_store(root, name, vanilla):
    """4 seeds; full beats vanilla by 0.01; arm `wild`: one run at 51x the ceiling, one diverged (no eval)."""
    for s in range(4):
        noise = 0.001 * (s % 2)
        _write_run(root, name, f"arm=vanilla/s{s}", {"arm": "vanilla", "seed": s}, vanilla + noise)
        _write_run(root, name, f"arm=full/s{s}", {"arm": "full", "seed": s}, vanilla - 0.01 + 0.0005 * s)
        wild = {0: 25.5, 1: None, 2: 0.06, 3: 0.07}[s]
        _write_run(root, name, f"arm=wild/s{s}", {"arm": "wild", "seed": s}, wild,
                   state="diverged" if wild is None else "done")


@pytest.mark.parametrize("vanilla,expected", [(0.05, "holds"), (0.2, NOT_IN_REGIME)])
def test_reference_that_misses_its_bar_is_not_in_the_learning_regime(tmp_path, vanilla, expected):
    study = _synthetic_study("synthetic")
    _synthetic_store(tmp_path, study.name, vanilla)
    evals = load_results(tmp_path, scale="cpu", kind="evals")
    result = study_analysis(study, "cpu", tmp_path, evals)
    verdict = result.verdict
    assert verdict.verdict == expected
    assert verdict.reference_share == pytest.approx((vanilla + 0.0005) / 0.5, rel=1e-6)  # mean over 4 seeds
    assert verdict.regime == ("pass" if vanilla == 0.05 else "miss") and verdict.bar == 0.2
    if expected == NOT_IN_REGIME:
        assert "The test alone reads: holds" in verdict.detail  # the test's own reading is kept
    assert np.isfinite(verdict.detectable) and verdict.detectable > 0
    # blow-ups: counted per condition, capped at the ceiling, the median beside the mean, raw values listed
    wild = result.table.set_index("arm").loc["wild"]
    assert wild["blowups"] == 2 and wild["seeds"] == 4
    assert wild["mean"] == pytest.approx((0.5 + 0.5 + 0.06 + 0.07) / 4)
    assert wild["median"] == pytest.approx((0.07 + 0.5) / 2)
    assert result.table.set_index("arm").loc["vanilla", "reference"].startswith("bar 20%")
    assert verdict.blowups == 2
    assert sorted(result.blowups["state"]) == ["diverged", "done"]
    assert result.blowups["x_ceiling"].max() == pytest.approx(51.0)
    report = write_report(tmp_path, "cpu", [study]).read_text()
    assert expected in report and "| detectable |" in report and "51" in report
    assert (tmp_path / "cpu" / "figures" / "synthetic.png").exists()
    row = pd.read_csv(tmp_path / "cpu" / "verdicts.csv").iloc[0]
    assert row["verdict"] == expected and row["blowups"] == 2


def test_a_run_shared_by_two_studies_counts_once_in_each(tmp_path):
    """A shared run has one directory per study (the owner's, and links in the other's, as `registry.shared`
    lays them out): each study must see its evaluations once, or a paired test pairs every copy with every other
    (n inflated, the interval too narrow: the cpu report once read n = 18 for main's 3 seeds)."""
    study = _synthetic_study("owner")
    _synthetic_store(tmp_path, "owner", 0.05)
    for run in sorted((tmp_path / "cpu" / "owner").iterdir()):
        link = tmp_path / "cpu" / "borrower" / run.name  # same directory name: same hash
        link.mkdir(parents=True)
        meta = {**json.loads((run / "run.json").read_text()), "study": "borrower"}
        (link / "run.json").write_text(json.dumps(meta))
        for name in ("status.json", "eval.jsonl"):
            if (run / name).exists():
                (link / name).symlink_to(os.path.relpath(run / name, link))
    evals = load_results(tmp_path, scale="cpu", kind="evals")
    assert (evals["study"] == "owner").sum() == (evals["study"] == "borrower").sum() == 2 * 11  # 11 evaluated, u + v
    verdict = study_analysis(study, "cpu", tmp_path, evals).verdict
    assert verdict.seeds == 4 and verdict.verdict == "holds"


def test_unevaluated_reference_is_unchecked_not_passed(tmp_path):
    study = _synthetic_study("synthetic")
    study.reference = (Reference({"arm": "vanilla"}, 0.2, sampler="v", nfe=32),)  # never evaluated
    _synthetic_store(tmp_path, study.name, 0.05)
    verdict = study_analysis(study, "cpu", tmp_path, load_results(tmp_path, scale="cpu", kind="evals")).verdict
    assert verdict.regime == "unchecked" and verdict.verdict == "holds"


def test_every_builtin_study_declares_its_reference():
    for study in [s for s in all_studies() if s.module.startswith("experiments.")]:  # not other tests' studies
        assert study.reference, study.name
        for scale in ("cpu",):
            if scale in study.unsupported:
                continue
            runs = study.runs(scale, 1)
            for ref in study.reference:  # the tags select at least one run of the grid
                assert any(all(r.tags.get(k) == v for k, v in ref.runs.items()) for r in runs), (study.name, ref)
