"""Issue 8's analysis pieces: the interpolated convergence speed-up and O3's verdict under each TAS variant."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dynamics.analysis.report import TAS_DEFAULT_VARIANT, crossing_epoch, tas_verdict
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
    assert (tmp_path / "cpu" / "figures" / f"{study.name}.png").exists()

    rows += _tas_rows("c: run's Adam state", "recomputed", {"random": 0.5, "v-only": 0.1, "u-small": 0.0})
    pd.DataFrame(rows).to_csv(csv, index=False)
    verdict, _ = tas_verdict(study, csv)
    assert verdict.verdict == "holds"  # the headline is variant b with the target recomputed
    assert "DEPENDS" in verdict.detail and "c: run's Adam state / target recomputed: does not hold" in verdict.detail
