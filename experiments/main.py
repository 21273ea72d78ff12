"""The main ablation: vanilla MeanFlow and the paper's components alone and combined, 240 epochs each.

Vanilla and the scale's full method are also the runs of v-quality and convergence (and the full method at
k = 1 is k-schedule's k = 1 run): those studies reference these runs instead of training copies, so the two
runs carry the union of their evaluations (32/64/128-NFE v, an evaluation every convergence.EVERY epochs and its
kept checkpoints).
"""

from __future__ import annotations

from dynamics.config import METHODS

from .convergence import EVERY
from .registry import Finding, Metric, RunSpec, base_config, full_method, joint, register
from .v_quality import NFE_V

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
)
def main(scale: str) -> list[RunSpec]:
    runs = []
    for method in METHODS:
        cfg = base_config(scale, method)
        cfg.phases = [joint(EPOCHS)]
        if method in ("vanilla", full_method(scale)):  # also v-quality's and convergence's runs
            cfg.eval.nfe_v = list(NFE_V)
            cfg.eval.every_epochs = float(EVERY)
            cfg.train.keep_epochs = [float(e) for e in range(EVERY, EPOCHS + 1, EVERY)]
        runs.append(RunSpec(f"method={method}", cfg, tags={"method": method}))
    return runs
