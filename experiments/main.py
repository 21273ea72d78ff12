"""The main ablation: vanilla MeanFlow and the paper's components alone and combined, 240 epochs each.

Vanilla, MinSNR + L_u and DTD + L_u are also the runs of v-quality (vanilla vs MinSNR + L_u), convergence
(vanilla vs DTD + L_u) and k-schedule's k = 1 (DTD + L_u): those studies reference these runs instead of training
copies (`grids.shared`), so each carries the union of their evaluations (32/64/128-NFE v at the end; an EMA
evaluation every convergence.EVERY epochs) at the scales where those studies run (not at digits).
"""

from __future__ import annotations

from dynamics.config import METHODS
from dynamics.config.presets import ABLATIONS

from .convergence import EVERY
from .registry import (
    LONG_RUN_STEPS_PER_EPOCH,
    SMALL_SCALES_NA,
    U_BAR,
    ExtraFinding,
    Finding,
    Metric,
    Reference,
    RunSpec,
    base_config,
    get_study,
    joint,
    paper_method,
    register,
)
from .v_quality import NFE_V

EXTRA = (
    ExtraFinding("minsnr-gap-shrinks", "MinSNR's advantage over DTD shrinks from B/4 to M/2 and L/2",
                 "1-NFE(dtd) - 1-NFE(minsnr) is smaller at M/2 and at L/2 than at B/4 (relative to vanilla's value)",
                 kind="cross-scale-gap", tag="method",
                 params={"arms": ("dtd", "minsnr"), "scales": ("b4", "m2", "l2")}, not_applicable=SMALL_SCALES_NA),
    ExtraFinding("l2-method-matches-xl2", "L/2 with DTD + L_u is about XL/2 vanilla (3.47 vs 3.43 1-NFE FID)",
                 "|1-NFE(L/2 dtd-lu) - 1-NFE(XL/2 vanilla)| <= 5% of XL/2 vanilla's (the paper's gap is 1.2%)",
                 kind="cross-scale-match", tag="method",
                 params={"treatment": ("l2", "dtd-lu"), "control": ("xl2", "vanilla"), "margin": 0.05},
                 not_applicable=SMALL_SCALES_NA),
)

EPOCHS = 240
# Labelled ablations trained beside the paper's methods (outside the finding: the table shows them): DTD with the
# fixed pace against its counter rule, at cpu only (3 more runs of 2,400 steps)
ABLATION_ARMS = {"cpu": ABLATIONS}


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
    extra_findings=EXTRA,
)
def main(scale: str) -> list[RunSpec]:
    also = {"vanilla": ("v-quality", "convergence"), paper_method("v-quality"): ("v-quality",),
            paper_method("convergence"): ("convergence", "k-schedule")}
    runs = []
    for method in METHODS + ABLATION_ARMS.get(scale, ()):
        cfg = base_config(scale, method, steps_per_epoch=LONG_RUN_STEPS_PER_EPOCH)
        cfg.phases = [joint(EPOCHS)]
        studies = [s for s in also.get(method, ()) if scale not in get_study(s).unsupported]  # run at this scale
        if "v-quality" in studies:  # 32/64/128-NFE v at the end
            cfg.eval.nfe_v = list(NFE_V)
        if "convergence" in studies:  # the curve: 1-NFE EMA evaluations every EVERY epochs, the rest at the end
            cfg.eval.every_epochs = float(EVERY)
            cfg.eval.final_nfe, cfg.eval.final_nfe_v = [n for n in cfg.eval.nfe if n != 1], list(cfg.eval.nfe_v)
            cfg.eval.nfe, cfg.eval.nfe_v = [1], []
        runs.append(RunSpec(f"method={method}", cfg, tags={"method": method}))
    return runs
