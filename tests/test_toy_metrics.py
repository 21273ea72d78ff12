"""Sliced W2 against its closed form, and the evaluator's cached reference against the plain function."""

from __future__ import annotations

import math

import pytest
import torch

from dynamics.data.toy2d import ToyDataset
from dynamics.metrics.evaluate import Evaluator
from dynamics.metrics.toy import sliced_w2, sliced_w2_from_projections, sorted_projections
from experiments.registry import base_config


def test_sliced_w2_of_a_shift_is_the_projected_shift():
    """Shifting a sample by c shifts every 1-D projection by theta . c, so W2 on direction theta is |theta . c|
    and sliced W2 = sqrt(mean_theta (theta . c)^2), which tends to |c| / sqrt(d) over uniform directions."""
    a = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))
    c = torch.tensor([0.3, -0.4])
    g = torch.Generator().manual_seed(5)
    dirs = torch.randn(2, 4096, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    exact = float(((c.double() @ dirs) ** 2).mean().sqrt())
    # a + c is rounded to float32
    assert sliced_w2(a + c, a, num_projections=4096, seed=5) == pytest.approx(exact, rel=1e-6)
    assert exact == pytest.approx(c.norm().item() / math.sqrt(2), rel=0.05)
    assert sliced_w2(a, a) == 0.0


def test_projections_of_unequal_samples_are_refused():
    with pytest.raises(ValueError, match="differ"):
        sliced_w2_from_projections(sorted_projections(torch.randn(10, 2)), sorted_projections(torch.randn(12, 2)))


def test_evaluator_reuses_the_reference_projections_without_changing_the_distance():
    cfg = base_config("smoke")
    cfg.eval.metrics = ["sw2"]
    dataset = ToyDataset(cfg.data.name)
    ev = Evaluator(cfg, dataset, torch.device("cpu"))
    ref = dataset.reference(cfg.eval.num_samples, cfg.train.seed)
    for scale in (1.0, 0.5):
        samples = scale * torch.randn(cfg.eval.num_samples, 2)
        assert ev.distance("sw2", samples) == sliced_w2(samples, ref)
