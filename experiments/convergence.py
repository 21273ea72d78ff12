"""How much faster? Vanilla vs the full method with an evaluation (and a kept checkpoint) every 24 epochs.

At paper scale FID is computed from the kept checkpoints; at small scales the eval curve is in eval.jsonl.
Both arms are the main ablation's runs of the same methods (trained once, `registry.shared`); main gives them
these evaluations and checkpoints.
"""

from __future__ import annotations

from .registry import Finding, Metric, RunSpec, full_method, register, shared

EPOCHS = 240
EVERY = 24


@register(
    name="convergence",
    question="how much faster?",
    metric=Metric("epochs until the 1-NFE metric reaches vanilla's final value", sampler="u", nfe=(1,),
                  kind="epochs_to_target"),
    finding=Finding("the full method reaches vanilla's final quality sooner (XL/2 2.5x, L/2 2.3x, M/2 2.1x)",
                    holds_if="speed-up = 240 / (full's epochs to vanilla's final metric) > 1",
                    comparison="better", tag="arm", treatment="full", control="vanilla"),
    notes=("full method: minsnr-lu at b4, dtd-lu at every other scale",
           f"evaluation and a kept checkpoint every {EVERY} epochs",
           "both arms are main's runs (method=vanilla, method=<full>), trained once"),
)
def convergence(scale: str) -> list[RunSpec]:
    return [shared("main", f"method={method}", f"arm={arm}", {"arm": arm, "method": method})
            for arm, method in (("vanilla", "vanilla"), ("full", full_method(scale)))]
