"""The tables the CLI prints: a launch's plan (a dry run) and a study's status."""

from __future__ import annotations


def _describe_deps(run, by_uid: dict) -> str:
    """The runs `run` waits for; a parent it continues shows the epoch (`v-pretrain@5ep`)."""
    if not run.spec.depends_on:
        return "-"
    ref = run.spec.parent
    return ",".join(by_uid[p].spec.key + (f"@{ref.epoch:g}ep" if ref and ref.key == by_uid[p].spec.key else "")
                    for p in run.parents)


def print_plan(job, jobs: int) -> None:
    """A dry run: per study its runs (hash, state, action, steps, estimated time, what they wait for), the
    cost, pre-flight warnings and, for SLURM, the sbatch header and the arrays it would submit."""
    from ..launch import CLUSTER_SCALES, TO_EXECUTE, cost_summary, estimate_seconds, sbatch_preview, slurm_waves

    runs, by_uid = job.runs, job.by_uid
    for name, why in job.unsupported.items():
        print(f"{name}: no runs at scale {job.scale}: {why}")
    width = max([len(r.spec.key) for r in runs] + [8])
    for study in job.studies:
        mine = [r for r in runs if r.study == study.name]
        print(f"{study.name}: {study.question}  [{len(mine)} runs]")
        for note in study.notes:
            print(f"  note: {note}")
        if not mine:
            continue
        print(f"  {'run':<{width}}  {'hash':<12}  {'state':<11}  {'action':<8}  {'steps':>9}  {'est.':>9}  after")
        for r in mine:
            seconds = estimate_seconds(r.config, r.start_step) if r.action in TO_EXECUTE else 0.0
            est = f"{seconds / 3600:,.1f}h" if r.config.scale in CLUSTER_SCALES else f"{seconds / 60:.2f}m"
            print(f"  {r.spec.key:<{width}}  {r.spec.hash:<12}  {r.state:<11}  {r.action:<8}  "
                  f"{r.total_steps - r.start_step:>9,}  {est:>9}  {_describe_deps(r, by_uid)}"
                  + (f"  ({r.note})" if r.note else ""))
    print(f"total: {cost_summary(runs, jobs)}")
    for problem in job.problems:
        print(f"warning: {problem}; the jobs would fail at start")
    if job.executor == "slurm":
        print("sbatch script header (submitit's, as each array gets it, plus --array and --dependency):")
        for line in sbatch_preview(job.profile):
            print(f"  {line}")
        for line in slurm_waves(job.todo, by_uid, job.profile):
            print(f"  {line}")


def status_table(runs: list) -> dict[str, int]:
    """One line per run with its state and progress; returns the count per state."""
    import time

    from ..results import METRICS_FILE, last_jsonl_row, read_status

    width = max([len(r.spec.key) for r in runs] + [8])
    counts: dict[str, int] = {}
    now = time.time()
    print(f"{'run':<{width}}  {'hash':<12}  {'state':<11}  {'progress':>22}  updated")
    for r in runs:
        status = read_status(r.run_dir)
        row = last_jsonl_row(r.run_dir / METRICS_FILE) or {}
        step = max(int(status.get("step", 0)), int(row.get("step", 0)))
        counts[r.state] = counts.get(r.state, 0) + 1
        updated = status.get("updated")
        age = "-" if updated is None else f"{max(0.0, now - updated) / 60:.1f} min ago"
        pct = 100.0 * step / r.total_steps if r.total_steps else 0.0
        extra = f"  {status['error']}" if status.get("error") else ""
        print(f"{r.spec.key:<{width}}  {r.spec.hash:<12}  {r.state:<11}  "
              f"{f'{step:,}/{r.total_steps:,} ({pct:.0f}%)':>22}  {age}{extra}")
    order = ("done", "running", "queued", "requeued", "interrupted", "failed", "diverged", "pending")
    print("  ".join(f"{k}: {counts[k]}" for k in order if k in counts) or "no runs")
    return counts
