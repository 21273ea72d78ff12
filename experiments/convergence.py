"""How much faster? Vanilla vs the full method with an evaluation (and a kept checkpoint) every 24 epochs.

At paper scale FID is computed from the kept checkpoints; at small scales the eval curve is in eval.jsonl.
"""

from __future__ import annotations

from .registry import U_BAR, Finding, Metric, Reference, RunSpec, base_config, full_method, joint, register

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
    reference=(Reference({"arm": "vanilla"}, U_BAR, label="vanilla"),),
    notes=("full method: minsnr-lu at b4, dtd-lu at every other scale",
           f"evaluation and a kept checkpoint every {EVERY} epochs"),
)
def convergence(scale: str) -> list[RunSpec]:
    runs = []
    for arm, method in (("vanilla", "vanilla"), ("full", full_method(scale))):
        cfg = base_config(scale, method)
        cfg.phases = [joint(EPOCHS)]
        cfg.eval.every_epochs = float(EVERY)
        cfg.train.keep_epochs = [float(e) for e in range(EVERY, EPOCHS + 1, EVERY)]
        runs.append(RunSpec(f"arm={arm}", cfg, tags={"arm": arm, "method": method}))
    return runs
