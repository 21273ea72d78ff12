"""The task-affinity finding (O3): which init gives the v task the highest affinity to the large-dt u tasks.

tas.csv (written by dynamics.study_tas) holds the TAS of every init, seed, variant and target mode. The verdict
is computed under each (variant, target mode); the headline is the authors' TAS (the accumulated-gradient
cosine), and the detail says whether the robustness checks (the lookahead steps, the per-batch cosine) agree.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .verdicts import Part, Verdict, judge, t_interval

LARGE_DT_TASKS = ("u[0.5,0.7]", "u[0.7,0.9]")
# The headline variant (dynamics.study_tas.DEFAULT_VARIANT; analysis reads results only, so it is named here);
# its target mode is `-` (no lookahead step). A tas.csv written before it was the default lacks it: its headline
# is the earlier default, named in the verdict's detail.
TAS_DEFAULT_VARIANT = "tas: accumulated-gradient cosine"
TAS_DEFAULT_MODE = "-"
LEGACY_DEFAULT = ("b: grad step of equal length", "recomputed")


def _one_setting(study, tas: pd.DataFrame) -> tuple[Verdict, pd.DataFrame]:
    """The verdict on one (variant, target mode): per init, the mean affinity between the v task and the large-dt
    u tasks (both directions); the treatment init against the runner-up, paired by seed."""
    f = study.finding
    pairs = tas[((tas["source"] == "v") & tas["target"].isin(LARGE_DT_TASKS))
                | ((tas["target"] == "v") & tas["source"].isin(LARGE_DT_TASKS))]
    per_seed = pairs.groupby(["init", "seed"])["value"].mean().unstack("init")
    table = per_seed.agg(["mean", "std", "count"]).T.reset_index()
    if f.treatment not in per_seed or per_seed.shape[1] < 2:
        return judge(study.name, f.claim, [], "inits missing"), table
    runner_up = per_seed.drop(columns=f.treatment).mean().idxmax()
    diff = (per_seed[f.treatment] - per_seed[runner_up]).dropna()
    mean, low, high = t_interval(diff.to_numpy())
    detail = f"TAS(v <-> large dt): {f.treatment} minus runner-up {runner_up}"
    return judge(study.name, f.claim, [Part(mean, low, high, len(diff))], detail), table


def tas_verdict(study, tas_csv: Path) -> tuple[Verdict, pd.DataFrame]:
    """The headline verdict and a table of every (variant, target mode)'s per-init affinities and verdict."""
    f = study.finding
    if not tas_csv.exists():
        return judge(study.name, f.claim, [], f"no {tas_csv.name}: run `dynamics tas --study {study.name} "
                     "--scale ...`"), pd.DataFrame()
    tas = pd.read_csv(tas_csv)
    tables, verdicts = [], {}
    for (variant, mode), part in tas.groupby(["variant", "target_mode"], sort=False):
        verdict, table = _one_setting(study, part)
        verdicts[(variant, mode)] = verdict
        tables.append(table.assign(variant=variant, target_mode=mode, verdict=verdict.verdict,
                                   effect=verdict.effect))
    key = next((k for k in ((TAS_DEFAULT_VARIANT, TAS_DEFAULT_MODE), LEGACY_DEFAULT) if k in verdicts),
               next(iter(verdicts)))
    head = verdicts[key]
    stale = "" if key[0] == TAS_DEFAULT_VARIANT else (
        f" (this tas.csv has no {TAS_DEFAULT_VARIANT!r}: re-run `dynamics tas --study {study.name}`)")
    kinds = {v.verdict.split(" (")[0] for v in verdicts.values()}
    depends = ("the finding does NOT depend on the measure (the robustness checks agree: the same verdict under "
               "every variant and target mode)"
               if len(kinds) == 1 else "the finding DEPENDS on the measure: " + "; ".join(
                   f"{variant} / target {mode}: {v.verdict} ({v.effect:+.3g})"
                   for (variant, mode), v in verdicts.items()))
    head.detail = f"{head.detail} [variant {key[0]}, target {key[1]}{stale}]. {depends}"
    return head, pd.concat(tables, ignore_index=True)
