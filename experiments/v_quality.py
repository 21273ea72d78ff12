"""Is the learned v better? Vanilla vs the full method, v = u(z, t, t) read back with 32/64/128 Euler steps.

Both arms are the main ablation's runs of the same methods (trained once, `grids.shared`); main gives them
these evaluations."""

from __future__ import annotations

from .registry import (
    NOT_AT_DIGITS,
    V_BAR,
    Finding,
    Metric,
    Reference,
    RunSpec,
    paper_method,
    register,
    shared,
)

NFE_V = [32, 64, 128]
EPOCHS = 240


@register(
    name="v-quality",
    question="is the learned v better?",
    metric=Metric("32/64/128-NFE distance of v = u(z,t,t) samples (FID at paper scale)", sampler="v",
                  nfe=tuple(NFE_V)),
    unsupported=NOT_AT_DIGITS,
    finding=Finding("the full method's v is better at every NFE",
                    holds_if="full < vanilla at 32, 64 and 128 NFE", comparison="better", tag="arm",
                    treatment="full", control="vanilla"),
    reference=(Reference({"arm": "vanilla"}, V_BAR, "v", 32, label="vanilla"),),
    notes=(f"method: {paper_method('v-quality')} at every scale (the paper's B/4 comparison: MeanFlow 7.61 "
           "against 'ours w MinSNR' 7.09)",
           "both arms are main's runs (method=vanilla, method=minsnr-lu), trained once"),
)
def v_quality(scale: str) -> list[RunSpec]:
    return [shared("main", f"method={method}", f"arm={arm}", {"arm": arm, "method": method})
            for arm, method in (("vanilla", "vanilla"), ("full", paper_method("v-quality")))]
