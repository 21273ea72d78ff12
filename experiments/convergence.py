"""How much faster? Vanilla vs DTD + L_u, with an evaluation curve over training.

The paper's speed-ups (2.1x M/2, 2.3x L/2, 2.5x XL/2) are 240 / (epochs the method needs to reach vanilla's
final FID): 114, 104 and 96 epochs. An evaluation every 8 epochs puts each in a different 8-epoch segment, and
the analysis interpolates the curve linearly between evaluations, so the three are distinguishable (every 24
epochs only 240 / N could come out: 2.0x or 2.5x). "Reaches" is read as "reaches and stays": the epoch from
which the curve stays at or below vanilla's final value (the paper's curves fall monotonically, where both
readings agree; a small scale's curves plateau and touch the target by noise early). Intermediate evaluations
(1-NFE only; the other samplers at the last step) run in the trainer on the EMA weights at that step; no extra
checkpoints are kept for them.

Both arms are the main ablation's runs of the same methods (trained once, `grids.shared`); main gives them
these evaluations.
"""

from __future__ import annotations

from .registry import NOT_AT_DIGITS, U_BAR, Finding, Metric, Reference, RunSpec, paper_method, register, shared

EPOCHS = 240
EVERY = 8


@register(
    name="convergence",
    question="how much faster?",
    metric=Metric("epochs until the 1-NFE metric reaches vanilla's final value", sampler="u", nfe=(1,),
                  kind="epochs_to_target"),
    unsupported=NOT_AT_DIGITS,
    finding=Finding("the full method reaches vanilla's final quality sooner (XL/2 2.5x, L/2 2.3x, M/2 2.1x)",
                    holds_if="speed-up = 240 / (the epoch from which full stays at or below vanilla's final metric, "
                             "interpolated) > 1",
                    comparison="better", tag="arm", treatment="full", control="vanilla"),
    reference=(Reference({"arm": "vanilla"}, U_BAR, label="vanilla"),),
    notes=(f"method: {paper_method('convergence')} at every scale (the paper's method for its speed-ups)",
           f"evaluation on the EMA weights every {EVERY} epochs, curve interpolated linearly; no extra checkpoints",
           "both arms are main's runs (method=vanilla, method=dtd-lu), trained once"),
)
def convergence(scale: str) -> list[RunSpec]:
    return [shared("main", f"method={method}", f"arm={arm}", {"arm": arm, "method": method})
            for arm, method in (("vanilla", "vanilla"), ("full", paper_method("convergence")))]
