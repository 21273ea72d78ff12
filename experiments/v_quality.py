"""Is the learned v better? Vanilla vs the full method, v = u(z, t, t) read back with 32/64/128 Euler steps."""

from __future__ import annotations

from .registry import (
    V_BAR,
    Finding,
    Metric,
    Reference,
    RunSpec,
    base_config,
    joint,
    paper_method,
    register,
)

NFE_V = [32, 64, 128]
EPOCHS = 240


@register(
    name="v-quality",
    question="is the learned v better?",
    metric=Metric("32/64/128-NFE distance of v = u(z,t,t) samples (FID at paper scale)", sampler="v",
                  nfe=tuple(NFE_V)),
    finding=Finding("the full method's v is better at every NFE",
                    holds_if="full < vanilla at 32, 64 and 128 NFE", comparison="better", tag="arm",
                    treatment="full", control="vanilla"),
    reference=(Reference({"arm": "vanilla"}, V_BAR, "v", 32, label="vanilla"),),
    notes=(f"method: {paper_method('v-quality')} at every scale (the paper's B/4 comparison: MeanFlow 7.61 "
           "against 'ours w MinSNR' 7.09)",),
)
def v_quality(scale: str) -> list[RunSpec]:
    runs = []
    for arm, method in (("vanilla", "vanilla"), ("full", paper_method("v-quality"))):
        cfg = base_config(scale, method)
        cfg.phases = [joint(EPOCHS)]
        cfg.eval.nfe_v = list(NFE_V)
        runs.append(RunSpec(f"arm={arm}", cfg, tags={"arm": arm, "method": method}))
    return runs
