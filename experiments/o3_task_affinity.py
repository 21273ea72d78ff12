"""O3: which warm-up suits large dt?

Task affinity between the v task and each dt-bin u task, under three inits: random (no run), 40 epochs of
v-only training, and 40 epochs of u-only training on dt in [0.1, 0.3]. This study trains the two warm-ups and
declares the tasks; TAS itself is computed from their final checkpoints by `dynamics tas`.
"""

from __future__ import annotations

from .o2_interval_bins import BINS
from .registry import (
    CONSTANT_LR_NOTE,
    SMALL_DT_V_BAR,
    V_BAR,
    Finding,
    Metric,
    Reference,
    RunSpec,
    TaskSpec,
    base_config,
    bin_label,
    dt_bin,
    register,
    u_only,
    v_only,
)

WARMUP_EPOCHS = 40
SMALL_BIN = (0.1, 0.3)
TASKS = (TaskSpec("v", "v"),) + tuple(TaskSpec(f"u{bin_label(lo, hi)}", "u", dt_bin(lo, hi)) for lo, hi in BINS)


@register(
    name="o3-task-affinity",
    question="which warm-up suits large dt?",
    metric=Metric("TAS matrix between the v task and the dt-bin u tasks", sampler="", nfe=(), kind="tas",
                  lower_is_better=False),
    finding=Finding("both warm-ups beat random; the small-dt warm-up has the highest affinity to large-dt bins",
                    holds_if="TAS to the large-dt bins: u-small init > v-only init > random init",
                    comparison="best", tag="init", treatment="u-small", control="random"),
    reference=(Reference({"init": "v-only"}, V_BAR, "v", 32, label="v-only warm-up"),
               Reference({"init": "u-small"}, SMALL_DT_V_BAR, "v", 32, label="small-dt warm-up")),
    notes=(CONSTANT_LR_NOTE, "the random init is not a run: TAS starts from a freshly initialised model"),
    tasks=TASKS,
    task_inits={"random": None, "v-only": "init=v-only", "u-small": f"init=u{bin_label(*SMALL_BIN)}"},
)
def o3_task_affinity(scale: str) -> list[RunSpec]:
    v_warm = base_config(scale, shared_prefix=True)
    v_warm.phases = [v_only(WARMUP_EPOCHS)]
    u_warm = base_config(scale, shared_prefix=True)
    u_warm.phases = [u_only(WARMUP_EPOCHS, dt_bin(*SMALL_BIN))]
    return [
        RunSpec("init=v-only", v_warm, tags={"init": "v-only"}),
        RunSpec(f"init=u{bin_label(*SMALL_BIN)}", u_warm, tags={"init": "u-small", "bin": bin_label(*SMALL_BIN)}),
    ]
