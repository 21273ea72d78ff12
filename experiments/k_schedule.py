"""How fast should the L_u weighting move from small to all intervals? s = 1 - (i / T)^k, full method.

k = 1 is the method's default, so that grid point is the main ablation's run of the full method (trained once,
`grids.shared`)."""

from __future__ import annotations

from .registry import (
    LONG_RUN_STEPS_PER_EPOCH,
    NOT_AT_DIGITS,
    U_BAR,
    Finding,
    Metric,
    Reference,
    RunSpec,
    base_config,
    joint,
    paper_method,
    register,
    shared,
)

K = (0.5, 1.0, 2.0)
EPOCHS = 240


@register(
    name="k-schedule",
    question="schedule speed",
    metric=Metric("1-NFE distance of u samples (FID at paper scale)", sampler="u", nfe=(1,)),
    unsupported=NOT_AT_DIGITS,
    finding=Finding("k = 1 is best (B/4: k = 0.5 -> 11.16, 1 -> 10.20, 2 -> 11.44)",
                    holds_if="k = 1 gives the lowest 1-NFE metric", comparison="best", tag="k", treatment=1.0),
    reference=(Reference({"k": 1.0}, U_BAR, label="k = 1"),),
    notes=(f"method: {paper_method('k-schedule')} at every scale (the paper's k = 1 value, 10.20 at B/4, is its "
           "DTD + L_u row)",),
)
def k_schedule(scale: str) -> list[RunSpec]:
    method = paper_method("k-schedule")
    runs = []
    for k in K:
        if k == 1.0:  # the method's default k: main's run
            runs.append(shared("main", f"method={method}", f"k={k:g}", {"k": k, "method": method}))
            continue
        cfg = base_config(scale, method, steps_per_epoch=LONG_RUN_STEPS_PER_EPOCH)
        cfg.phases = [joint(EPOCHS)]
        cfg.objective.beta_k = k
        runs.append(RunSpec(f"k={k:g}", cfg, tags={"k": k, "method": method}))
    return runs
