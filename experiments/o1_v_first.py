"""O1 forward: does v pre-training help u?

One v-only pre-training run of 20 epochs keeps its checkpoints at 5, 10, 15 and 20 epochs; each fine-tune
continues one of them with 60 epochs of u-only training (E_v = 0 trains u from scratch, with no parent).
A fine-tune lists the parent's prefix phase followed by its own and loads the parent's checkpoint with its
step counter, optimiser state and EMA, as one run that switches its loss would (docs/design.md).
"""

from __future__ import annotations

from .registry import (
    CONSTANT_LR_NOTE,
    FINE_TUNE_BAR,
    TREND_SEEDS,
    ExtraFinding,
    Finding,
    Metric,
    Reference,
    RunSpec,
    register,
    v_pretrain_then_u,
)

E_V = (0, 5, 10, 15, 20)
U_EPOCHS = 60
U_EVAL_EVERY = 10  # a few intermediate 1-NFE evaluations (EMA weights) in each fine-tune, for the stability finding


@register(
    name="o1-v-first",
    question="does v pre-training help u?",
    metric=Metric("1-NFE distance of u samples (FID at paper scale)", sampler="u", nfe=(1,)),
    finding=Finding("more v pre-training -> better, more stable u",
                    holds_if="the 1-NFE metric falls as E_v grows", comparison="trend", tag="E_v",
                    direction="decreasing"),
    reference=(Reference({"E_v": max(E_V)}, FINE_TUNE_BAR, label="longest-E_v fine-tune"),),
    seeds=TREND_SEEDS,
    notes=(CONSTANT_LR_NOTE, "the five fine-tunes share one 20-epoch v-only run (checkpoints at 5/10/15/20)",
           f"fine-tunes evaluate 1-NFE every {U_EVAL_EVERY} epochs (EMA weights) for the stability finding"),
    extra_findings=(ExtraFinding(
        "more-stable-u", "more v pre-training -> more stable u learning",
        "the spread (std) of the 1-NFE metric over the u phase's evaluations falls as E_v grows (slope < 0), "
        "blow-ups counted per E_v", kind="stability", tag="E_v", params={"phase_tag": "E_v"}),),
)
def o1_v_first(scale: str) -> list[RunSpec]:
    runs = v_pretrain_then_u(scale, E_V, lambda e_v: U_EPOCHS)
    for run in runs:
        if run.tags["role"] == "fine-tune":
            run.config.eval.every_epochs = float(U_EVAL_EVERY)
            run.config.eval.nfe, run.config.eval.nfe_v = [1], []
    return runs
