"""Analysis of the fidelity findings: the interpolated convergence speed-up, O3's verdict under each TAS variant,
and the further findings (non-inferiority, stability, cross-scale)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dynamics.analysis.analyze import study_analysis
from dynamics.analysis.convergence import crossing_epoch
from dynamics.analysis.extras import extra_verdict
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
