"""Calibration: does vanilla MeanFlow learn one-step generation at this scale at all?

The scale's own preset, unchanged (at cpu scale the calibrated embedded default: two moons, MLP 3x256 on
raw (t, t - r), 4,000 steps, p = 0.5), evaluated along training. It is the sanity check every other
study's numbers stand on: a scale where vanilla 1-NFE sampling stays near noise cannot test a curriculum.
"""

from __future__ import annotations

from dynamics.config import preset

from .registry import U_BAR, Finding, Metric, Reference, RunSpec, register

THRESHOLD = 0.2  # 1-NFE distance below 20% of the noise-to-data distance


@register(
    name="calibration",
    question="does vanilla MeanFlow learn one-step generation at this scale?",
    metric=Metric("1-NFE distance of u samples (FID at paper scale)", sampler="u", nfe=(1,)),
    finding=Finding("vanilla 1-NFE samples are far closer to the data than noise is",
                    holds_if=f"1-NFE distance < {THRESHOLD:g} x the noise-to-data distance",
                    comparison="threshold", tag="arm", treatment=THRESHOLD),
    reference=(Reference({"arm": "vanilla"}, U_BAR, label="vanilla"),),
    notes=("the scale's preset as it is (its own steps, schedule and evaluation), not the study budgets",),
)
def calibration(scale: str) -> list[RunSpec]:
    return [RunSpec("vanilla", preset(scale), tags={"arm": "vanilla"})]
