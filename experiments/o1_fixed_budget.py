"""O1 at a fixed budget: with E_v + E_u = 80 epochs, where is compute best spent?

One shared 40-epoch v-only run keeps checkpoints at 10, 20, 30 and 40 epochs; each grid point continues one
of them with u-only training for the rest of the 80 epochs (E_v = 0 trains u alone for 80 epochs).
"""

from __future__ import annotations

from .registry import (
    CONSTANT_LR_NOTE,
    FINE_TUNE_BAR,
    NOT_AT_DIGITS,
    TREND_SEEDS,
    Finding,
    Metric,
    Reference,
    RunSpec,
    register,
    v_pretrain_then_u,
)

E_V = (0, 10, 20, 30, 40)
BUDGET = 80


@register(
    name="o1-fixed-budget",
    question="same compute, where to spend it?",
    metric=Metric("1-NFE distance of u samples (FID at paper scale)", sampler="u", nfe=(1,)),
    unsupported=NOT_AT_DIGITS,
    finding=Finding("early v investment is more efficient",
                    holds_if="at E_v + E_u = 80 the 1-NFE metric falls as E_v grows", comparison="trend",
                    tag="E_v", direction="decreasing"),
    seeds=TREND_SEEDS,
    reference=(Reference({"E_v": max(E_V)}, FINE_TUNE_BAR, label="longest-E_v fine-tune"),),
    notes=(CONSTANT_LR_NOTE, "the grid shares one 40-epoch v-only run (checkpoints at 10/20/30/40)"),
)
def o1_fixed_budget(scale: str) -> list[RunSpec]:
    return v_pretrain_then_u(scale, E_V, lambda e_v: BUDGET - e_v)
