"""The main ablation: vanilla MeanFlow and the paper's components alone and combined, 240 epochs each."""

from __future__ import annotations

from dynamics.config import METHODS

from .registry import U_BAR, Finding, Metric, Reference, RunSpec, base_config, joint, register

EPOCHS = 240


@register(
    name="main",
    question="do the components help?",
    metric=Metric("1- and 2-NFE distance of u samples (FID at paper scale)", sampler="u", nfe=(1, 2)),
    finding=Finding("each component improves on vanilla and the combinations are best "
                    "(B/4 1-NFE FID: 11.58, 10.57, 10.96, 10.98, 9.87, 10.20)",
                    holds_if="every method's metric is below vanilla's, and a +L_u combination is the best",
                    comparison="better", tag="method", treatment=tuple(m for m in METHODS if m != "vanilla"),
                    control="vanilla"),
    reference=(Reference({"method": "vanilla"}, U_BAR, label="vanilla"),),
)
def main(scale: str) -> list[RunSpec]:
    runs = []
    for method in METHODS:
        cfg = base_config(scale, method)
        cfg.phases = [joint(EPOCHS)]
        runs.append(RunSpec(f"method={method}", cfg, tags={"method": method}))
    return runs
