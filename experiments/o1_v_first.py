"""O1 forward: does v pre-training help u?

One v-only pre-training run of 20 epochs keeps its checkpoints at 5, 10, 15 and 20 epochs; each fine-tune
continues one of them with 60 epochs of u-only training (E_v = 0 trains u from scratch, with no parent).
A fine-tune lists the parent's prefix phase followed by its own and loads the parent's checkpoint with its
step counter, optimiser state and EMA, as one run that switches its loss would (DESIGN section 4).
"""

from __future__ import annotations

from .registry import (
    CONSTANT_LR_NOTE,
    Finding,
    Metric,
    RunSpec,
    base_config,
    register,
    start_from,
    u_only,
    v_only,
)

E_V = (0, 5, 10, 15, 20)
U_EPOCHS = 60


@register(
    name="o1-v-first",
    question="does v pre-training help u?",
    metric=Metric("1-NFE distance of u samples (FID at paper scale)", sampler="u", nfe=(1,)),
    finding=Finding("more v pre-training -> better, more stable u",
                    holds_if="the 1-NFE metric falls as E_v grows", comparison="trend", tag="E_v",
                    direction="decreasing"),
    notes=(CONSTANT_LR_NOTE, "the five fine-tunes share one 20-epoch v-only run (checkpoints at 5/10/15/20)"),
)
def o1_v_first(scale: str) -> list[RunSpec]:
    parent = base_config(scale, shared_prefix=True)
    parent.phases = [v_only(max(E_V))]
    parent.train.keep_epochs = [float(e) for e in E_V if e > 0]
    runs = [RunSpec("v-pretrain", parent, tags={"role": "v-pretrain", "v_epochs": max(E_V)})]
    for e_v in E_V:
        cfg = base_config(scale, shared_prefix=True)
        cfg.phases = ([v_only(e_v)] if e_v else []) + [u_only(U_EPOCHS)]
        if e_v:
            start_from(cfg, "v-pretrain", e_v)
        runs.append(RunSpec(f"E_v={e_v}", cfg, tags={"role": "fine-tune", "E_v": e_v, "E_u": U_EPOCHS}))
    return runs
