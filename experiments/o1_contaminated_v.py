"""O1 reverse: does a corrupted v break u?

Joint MeanFlow training in which the v term's target is `v + k |v| xi / |xi|` (objective.contamination_k).
The paper gives no budget for this probe; we use 80 epochs, the O1 fixed-budget length.
"""

from __future__ import annotations

from .registry import CPU_TREND_SEEDS, Finding, Metric, RunSpec, base_config, joint, register

K = (0.0, 0.01, 0.03, 0.1, 0.3)
EPOCHS = 80


@register(
    name="o1-contaminated-v",
    question="does a corrupted v break u?",
    metric=Metric("1-NFE distance of u samples (FID at paper scale)", sampler="u", nfe=(1,)),
    finding=Finding("even k = 0.03 degrades u severely",
                    holds_if="the 1-NFE metric rises with k, and k = 0.03 is clearly worse than k = 0",
                    comparison="trend", tag="k", direction="increasing", treatment=0.0, control=0.03),
    seeds=CPU_TREND_SEEDS,
    notes=("budget 80 epochs of joint training (the paper does not state it; O1's fixed budget)",),
)
def o1_contaminated_v(scale: str) -> list[RunSpec]:
    runs = []
    for k in K:
        cfg = base_config(scale)
        cfg.phases = [joint(EPOCHS)]
        cfg.objective.contamination_k = k
        runs.append(RunSpec(f"k={k:g}", cfg, tags={"k": k}))
    return runs
