"""Is the improvement robust to the CFG-training guidance? A (w, kappa) grid, vanilla vs the full method.

Effective guidance w' = w / (1 - kappa); the grid crosses w' in {2.0, 2.5} with two splits of each (the
paper's B/4 setting is w = 1, kappa = 0.5; its L/2 and XL/2 setting w = 0.2 with w' = 2.5). Needs class
labels, so it runs from the digits scale up; the toy 2-D scales have no runs.
"""

from __future__ import annotations

from .registry import (
    NOT_AT_DIGITS,
    SCALE_SETTINGS,
    U_BAR,
    Finding,
    Metric,
    Reference,
    RunSpec,
    base_config,
    joint,
    paper_method,
    register,
)

SETTINGS = ((1.0, 0.5), (0.5, 0.75), (1.0, 0.6), (0.2, 0.92))  # (w, kappa): w' = 2.0, 2.0, 2.5, 2.5
EPOCHS = 240
UNCONDITIONAL = "needs class-conditional data (digits and up); the toy 2-D data of this scale has no labels"


@register(
    name="cfg-robustness",
    question="robust to guidance?",
    metric=Metric("1-NFE distance of u samples (FID at paper scale)", sampler="u", nfe=(1,)),
    finding=Finding("the improvement holds for every (w, kappa)",
                    holds_if="full < vanilla at every (w, kappa) setting", comparison="better", tag="arm",
                    treatment="full", control="vanilla"),
    unsupported={**NOT_AT_DIGITS,
                 **{scale: UNCONDITIONAL for scale, s in SCALE_SETTINGS.items() if not s.class_conditional}},
    reference=(Reference({"arm": "vanilla"}, U_BAR, label="vanilla"),),
    notes=(f"method: {paper_method('cfg-robustness')} at every scale (the paper's method at M/2, L/2, XL/2)",),
)
def cfg_robustness(scale: str) -> list[RunSpec]:
    runs = []
    for w, kappa in SETTINGS:
        for arm, method in (("vanilla", "vanilla"), ("full", paper_method("cfg-robustness"))):
            cfg = base_config(scale, method)
            cfg.phases = [joint(EPOCHS)]
            cfg.objective.guidance.w = w
            cfg.objective.guidance.kappa = kappa
            tags = {"arm": arm, "method": method, "w": w, "kappa": kappa, "w_eff": round(w / (1 - kappa), 6)}
            runs.append(RunSpec(f"w={w:g},kappa={kappa:g},arm={arm}", cfg, tags=tags))
    return runs
