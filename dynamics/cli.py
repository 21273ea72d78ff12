"""The `dynamics` command line. Each sub-command is a thin layer over the library."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import (
    EXECUTORS,
    SAMPLING_MODES,
    SCALES,
    TAS_METHODS,
    TAS_OPTIMIZERS,
    ConfigError,
    apply_overrides,
    preset,
    preset_names,
)


def _fail(message: str) -> int:
    print(f"dynamics: error: {message}", file=sys.stderr)
    return 2


def cmd_train(args: argparse.Namespace) -> int:
    _register(args.register)
    cfg = apply_overrides(preset(args.preset), args.overrides)
    if args.dry_run:
        print(cfg.to_json())
        print(f"# {cfg.total_steps()} steps over {cfg.total_epochs():g} epochs", file=sys.stderr)
        return 0
    if not args.out:
        return _fail("--out DIR is required to train (or pass --dry-run)")
    from .launch import config_problems
    from .train import train

    if problems := config_problems(cfg):
        return _fail(problems[0])
    status = train(cfg, args.out, device=args.device, progress=not args.quiet)
    print(f"{status['state']}: {args.out} (step {status.get('step')})")
    return 0 if status["state"] == "done" else 1


def cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from .api import load_run
    from .meanflow.sampling import generate

    if not args.out and not args.png:
        return _fail("sample: give --out FILE.npy, --png FILE.png, or both")
    run = load_run(args.run_dir)
    if args.png:
        _sample_png(run, args)
    if not args.out:
        return 0
    g = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(args.num, *run.data_shape, generator=g)
    labels = None
    if run.num_classes > 0:
        labels = torch.full((args.num,), args.label, dtype=torch.long) if args.label >= 0 else \
            torch.randint(0, run.num_classes, (args.num,), generator=g)
    x = generate(run.model, noise, args.nfe, args.mode, labels).numpy()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, x)
    print(f"wrote {x.shape} samples ({args.nfe}-NFE, {args.mode}) to {out}")
    return 0


def _sample_png(run, args: argparse.Namespace) -> None:
    """The run's picture: a grid per class and sampler (images) or scatter panels (toy 2-D)."""
    from .metrics.grid import image_grid, toy_figure, write_png

    samplers = [("u", n) for n in args.png_nfe] + [("v", n) for n in args.png_nfe_v]
    if len(run.data_shape) == 1:
        from .data import build_dataset

        data = build_dataset(run.config.data).reference(2000, run.config.train.seed)
        path = toy_figure(run.model, data, samplers, args.png, seed=args.seed)
    else:
        if run.data_shape[0] not in (1, 3):
            raise ConfigError(f"--png draws images with 1 or 3 channels; this run's data has shape {run.data_shape}")
        path = write_png(args.png, image_grid(run.model, run.data_shape, run.num_classes, samplers,
                                              per_class=args.per_class, seed=args.seed))
    blocks = ", ".join(f"{n}-NFE {m}" for m, n in samplers)
    print(f"wrote {path} (step {run.step}; left to right: {blocks})")


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


# ----------------------------------------------------------------------------------------------------
# tables: a launch's plan and a study's status


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
    from .launch import CLUSTER_SCALES, TO_EXECUTE, cost_summary, estimate_seconds, sbatch_preview, slurm_waves

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

    from .results import METRICS_FILE, last_jsonl_row, read_status

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


def _launch(studies: list, args: argparse.Namespace) -> dict[str, str] | None:
    """`dynamics run` / `reproduce`: the dry-run table (None), or the launch's final states."""
    from .launch import default_jobs, launch, prepare

    if args.dry_run:
        job = prepare(studies, args.scale, args.executor, args.results, args.seeds, args.profile,
                      getattr(args, "rerun_failed", False), args.overrides)
        print_plan(job, default_jobs(args.jobs))
        return None
    return launch(studies, args.scale, executor=args.executor, root=args.results, seeds=args.seeds, jobs=args.jobs,
                  profile=args.profile, rerun_failed=getattr(args, "rerun_failed", False),
                  progress=not args.quiet, overrides=args.overrides)


def cmd_presets(args: argparse.Namespace) -> int:
    print("\n".join(preset_names()))
    return 0


def _register(modules: list[str] | None) -> None:
    """`--register MODULE`: import a user's module, which registers studies (experiments.registry.register)
    and/or curriculum pieces (dynamics.pieces.register_piece); one that registers neither is an error."""
    from experiments.registry import RegistryError, register_from_module

    from . import pieces

    for module in modules or []:
        before = len(pieces._PIECES)
        pieces.import_modules([module])
        added = len(pieces._PIECES) > before or any(p.module == module for p in pieces._PIECES.values())
        try:
            register_from_module(module)
        except RegistryError:
            if not added:
                raise RegistryError(f"module {module!r} registered no study and no curriculum piece; decorate a "
                                    "grid function with @register(...) or a piece with @register_piece(...)") from None


def _studies(names: str, register: list[str]) -> list:
    """Studies named on the command line: one name, a comma-separated list, or "all"."""
    from experiments.registry import all_studies, get_study

    _register(register)
    if names == "all":
        return all_studies()
    return [get_study(n.strip()) for n in names.split(",") if n.strip()]


def cmd_studies(args: argparse.Namespace) -> int:
    studies = _studies("all", args.register)
    width = max(len(s.name) for s in studies)
    print(f"{'study':<{width}}  " + "  ".join(f"{sc:>6}" for sc in SCALES) + "  question")
    for study in studies:
        counts = ["-" if sc in study.unsupported else str(study.count(sc)) for sc in SCALES]
        print(f"{study.name:<{width}}  " + "  ".join(f"{c:>6}" for c in counts) + f"  {study.question}")
    print("runs per scale at each scale's default seeds ('-': the study has no runs there)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    final = _launch(_studies(args.study, args.register), args)
    if final is None:
        return 0
    bad = [uid for uid, state in final.items() if state != "done" and not state.startswith("submitted")]
    return 1 if bad else 0


def cmd_status(args: argparse.Namespace) -> int:
    from .launch import plan, recorded_overrides

    for study in _studies(args.study, args.register):
        overrides = args.overrides
        recorded = recorded_overrides(args.results, args.scale, study.name)
        if not overrides and recorded:
            overrides = recorded
        runs = plan([study], args.scale, args.results, args.seeds, overrides=overrides)
        print(f"{study.name} @ {args.scale}: {len(runs)} runs in {Path(args.results) / args.scale / study.name}")
        if overrides and overrides is recorded:
            print(f"  with the overrides `dynamics run` recorded: {' '.join(recorded)}")
        elif recorded is not None and sorted(recorded) != sorted(overrides or []):
            print(f"  note: `dynamics run` used other overrides ({' '.join(recorded) or 'none'}); this table "
                  "shows the grid of the ones given here")
        if scale_note := study.unsupported.get(args.scale):
            print(f"  no runs at this scale: {scale_note}")
            continue
        status_table(runs)
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from .analysis.report import write_report
    from .results import load_results

    studies = _studies(args.study, args.register)
    root = Path(args.results)
    if not root.is_dir():
        return _fail(f"--results {root}: no such directory (a results root written by `dynamics run`)")
    runs = load_results(root, scale=args.scale)
    if runs.empty:
        return _fail(f"--results {root}: no runs at scale {args.scale} under {root / args.scale} "
                     f"(run `dynamics run STUDY --scale {args.scale} --results {root}` first)")
    out = write_report(args.results, args.scale, studies)
    for row in runs[runs.state.isin(["diverged", "failed"])].itertuples():
        detail = f"non-finite loss at step {row.step}" if row.state == "diverged" else (row.error or "")
        print(f"{row.state}: {row.study}/{row.key} ({detail}) {row.run_dir}")
    print(f"wrote {out}")
    print((Path(args.results) / args.scale / "verdicts.csv").read_text())
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Every registered study at a scale, then the report: what `make reproduce` runs."""
    from .analysis.report import write_report

    studies = _studies("all", args.register)
    final = _launch(studies, args)
    if final is None:
        return 0
    from .affinity import AffinityError
    from .launch import default_jobs
    from .study_tas import study_affinity

    for study in studies:  # TAS studies (o3) are measured on their finished init runs
        if study.metric.kind == "tas" and args.scale not in study.unsupported:
            try:
                study_affinity(study, args.scale, args.results, args.seeds, overrides=args.overrides,
                               jobs=default_jobs(args.jobs) if args.executor != "slurm" else 1)
            except AffinityError as exc:
                print(f"dynamics: TAS for {study.name} skipped: {exc}", file=sys.stderr)
    out = write_report(args.results, args.scale, studies)
    print(f"report: {out}")
    print((Path(args.results) / args.scale / "verdicts.csv").read_text())
    unfinished = [uid for uid, state in final.items() if state != "done" and not state.startswith("submitted")]
    if unfinished:
        print(f"{len(unfinished)} runs did not finish; `dynamics status all --scale {args.scale}` lists them")
    return 1 if unfinished else 0


def cmd_fid(args: argparse.Namespace) -> int:
    from .metrics.paper_fid import run_fid

    value = run_fid(args.run_dir, vae=args.vae, ref=args.ref, inception=args.inception, nfe=args.nfe,
                    mode=args.mode, num=args.num, batch=args.batch, device=args.device, epoch=args.epoch)
    print(f"FID ({args.num} samples, {args.nfe}-NFE {args.mode}): {value:.3f}")
    return 0


def cmd_tas(args: argparse.Namespace) -> int:
    """Task affinity (TAS) of one run, of a preset's fresh init, or of every init of a study (DESIGN section 5)."""
    from experiments.registry import get_study

    from .affinity import DEFAULT_BATCHES, affinity_matrix, describe, task_affinity
    from .results import atomic_write_bytes
    from .study_tas import DEFAULT_VARIANT, study_affinity

    _register(args.register)
    settings = dict(method=args.method, batches=args.batches, optimizer=args.optimizer, lr=args.lr,
                    recompute_target=not args.no_recompute_target, recompute_weight=args.recompute_weight,
                    train_window=args.train_window,
                    batch_size=args.batch_size, device=args.device, progress=not args.quiet)
    note = "rows: the task stepped on (source); columns: the task whose loss is measured (target)"
    if args.study:
        bad = [a for a in args.targets if "=" not in a]
        if bad or args.preset or args.tasks or args.out or args.epoch is not None:
            return _fail("--study takes its tasks and runs from the registry and writes "
                         "<results>/<scale>/<study>/tas.csv; drop RUN_DIR, --preset, --tasks, --out and --epoch "
                         "(key=value overrides, as for `dynamics run`, are allowed)")
        if not args.scale:
            return _fail(f"--study {args.study} needs --scale (one of {', '.join(SCALES)})")
        frame = study_affinity(get_study(args.study), args.scale, args.results, args.seeds,
                               overrides=args.targets, **settings)
        print(f"{describe(frame)}; {note}")
        default = frame[(frame["variant"] == DEFAULT_VARIANT) & (frame["target_mode"] == "recomputed")]
        for init, part in default.groupby("init", sort=False):
            print(f"\ninit {init} ({DEFAULT_VARIANT}, target recomputed; mean over {part['seed'].nunique()} "
                  "seeds):")
            print(affinity_matrix(part, "value").to_string(float_format=lambda v: f"{v:+.4f}"))
        print("(every variant and the held-target matrices are in tas.csv and the O3 report)")
        print(f"\nwrote {Path(args.results) / args.scale / args.study / 'tas.csv'}")
        return 0
    if args.preset:
        source = apply_overrides(preset(args.preset), args.targets)
    elif len(args.targets) == 1:
        source = args.targets[0]
    else:
        return _fail("give one RUN_DIR, or --preset NAME [key=value ...], or --study NAME --scale S")
    if settings["batches"] is None:
        settings["batches"] = DEFAULT_BATCHES
    frame = task_affinity(source, args.tasks or "v,u", epoch=args.epoch, seed=args.seed, **settings)
    print(f"{describe(frame)}; {note}")
    print(affinity_matrix(frame).to_string(float_format=lambda v: f"{v:+.4f}"))
    if args.out:
        atomic_write_bytes(Path(args.out), frame.assign(**frame.attrs).to_csv(index=False).encode())
        print(f"wrote {args.out}")
    return 0


def _add_study_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="a study name (see `dynamics studies`), a comma-separated list, or all")
    p.add_argument("--scale", required=True, choices=SCALES)
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default: the scale's)")
    p.add_argument("--results", default="results", help="results root (default: results)")
    p.add_argument("--register", action="append", metavar="MODULE",
                   help="import a module that registers studies and/or curriculum pieces (repeatable)")
    p.add_argument("overrides", nargs="*", help="key=value applied to every run, e.g. data.path=/datasets/latents")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dynamics", description="MeanFlow training-dynamics toolkit")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one run from a preset with key=value overrides")
    p.add_argument("--preset", default="cpu", help="<scale>[-<method>], e.g. cpu, cpu-dtd-lu, b4-minsnr-lu")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. train.lr=1e-3 objective.beta=progressive")
    p.add_argument("--out", help="run directory (resumed if it holds a checkpoint)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and stop")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--register", action="append", metavar="MODULE",
                   help="import a module that registers curriculum pieces (repeatable; recorded in the config)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="samples of a run's EMA model: a .npy file (--out) and/or a PNG grid (--png)")
    p.add_argument("run_dir")
    p.add_argument("--nfe", type=int, default=1)
    p.add_argument("--mode", choices=SAMPLING_MODES, default="u", help="u: few-step with u; v: Euler with u(z,t,t)")
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--label", type=int, default=-1, help="class label (default: random classes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="samples as .npy (--num, --nfe, --mode, --label)")
    p.add_argument("--png", help="a picture: per class a row, per sampler a block of --per-class samples")
    p.add_argument("--png-nfe", type=_int_list, default=[1, 2], help="u samplers of the picture (default 1,2)")
    p.add_argument("--png-nfe-v", type=_int_list, default=[32], help="v Euler samplers of the picture (default 32)")
    p.add_argument("--per-class", type=int, default=10, help="samples per class and sampler in the picture")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("presets", help="list the presets")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("studies", help="list the registered studies with their run counts per scale")
    p.add_argument("--register", action="append", metavar="MODULE",
                   help="import a module of more studies or curriculum pieces")
    p.set_defaults(func=cmd_studies)

    p = sub.add_parser("run", help="run a study grid (skips finished runs, resumes interrupted ones)")
    _add_study_arguments(p)
    p.add_argument("--executor", default="local", choices=EXECUTORS)
    p.add_argument("--profile", help="SLURM cluster profile, e.g. slurm/example.toml")
    p.add_argument("--jobs", type=int, default=None, help="local: runs at once (default: one per core)")
    p.add_argument("--rerun-failed", action="store_true", help="run failed (resume) and diverged (restart) runs")
    p.add_argument("--dry-run", action="store_true", help="print the runs, dependencies and estimated cost")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="state and progress of every run of a study")
    _add_study_arguments(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("analyze", help="tables, figures and a report with a verdict per finding")
    _add_study_arguments(p)
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("reproduce", help="run every study at a scale, then write the report")
    p.add_argument("--scale", default="cpu", choices=SCALES)
    p.add_argument("--results", default="results", help="results root (default: results)")
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default: the scale's)")
    p.add_argument("--executor", default="local", choices=EXECUTORS)
    p.add_argument("--profile", help="SLURM cluster profile, e.g. slurm/example.toml")
    p.add_argument("--jobs", type=int, default=None, help="local: runs at once (default: one per core)")
    p.add_argument("--register", action="append", metavar="MODULE",
                   help="import a module of more studies or curriculum pieces")
    p.add_argument("--dry-run", action="store_true", help="print the runs and the estimated cost")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", help="key=value applied to every run, e.g. data.path=/datasets/latents")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("fid", help="FID-50K of a paper-scale run (SD-VAE decode, Inception, ADM reference)")
    p.add_argument("run_dir")
    p.add_argument("--vae", required=True, help="local directory of stabilityai/sd-vae-ft-mse")
    p.add_argument("--ref", required=True, help="ADM reference statistics, e.g. VIRTUAL_imagenet256_labeled.npz")
    p.add_argument("--inception", default=None, help="local Inception weights (torch-fidelity's file)")
    p.add_argument("--nfe", type=int, default=1)
    p.add_argument("--mode", choices=SAMPLING_MODES, default="u")
    p.add_argument("--num", type=int, default=50_000)
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--epoch", type=float, default=None, help="a kept epoch checkpoint (default: the last)")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_fid)

    p = sub.add_parser("tas", help="task affinity scores (TAS) of a run, a preset's fresh init, or a study's inits")
    p.add_argument("targets", nargs="*", metavar="RUN_DIR | key=value",
                   help="a run directory, or with --preset the preset's key=value overrides")
    p.add_argument("--preset", help="a fresh init of this preset (train.seed=N picks the init)")
    p.add_argument("--study", help="every init of a study with TAS tasks (o3-task-affinity), with --scale")
    p.add_argument("--scale", choices=SCALES, help="with --study")
    p.add_argument("--results", default="results", help="with --study: results root (default: results)")
    p.add_argument("--seeds", type=int, default=None, help="with --study: seeds 0..N-1 (default: the scale's)")
    p.add_argument("--tasks", help="comma-separated: v, u, both, u[a,b] (default: v,u)")
    p.add_argument("--method", default="lookahead", choices=TAS_METHODS)
    p.add_argument("--batches", type=int, default=None,
                   help="batches averaged over (default: 16; with --study at digits scale 8)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the run's train.batch_size")
    p.add_argument("--optimizer", default="sgd", choices=TAS_OPTIMIZERS,
                   help="lookahead step: a plain gradient step at lr (default), one of length lr*sqrt(#params), "
                        "or a copy of the run's Adam state (--study measures all of them)")
    p.add_argument("--lr", type=float, default=None, help="lookahead learning rate (default: the run's train.lr)")
    p.add_argument("--no-recompute-target", action="store_true",
                   help="keep the MeanFlow target computed at theta after the lookahead step")
    p.add_argument("--recompute-weight", action="store_true",
                   help="recompute the adaptive normaliser (D + c)^p after the lookahead step (default: keep theta's)")
    p.add_argument("--train-window", type=int, default=0, metavar="K",
                   help="K steps of the run's own training between measured batches (default 0: a snapshot)")
    p.add_argument("--epoch", type=float, default=None, help="a kept epoch checkpoint (default: the last)")
    p.add_argument("--seed", type=int, default=0, help="seed of the TAS draws (t, r, noise)")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda if available)")
    p.add_argument("--out", help="write the long-format TAS table to this CSV")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--register", action="append", metavar="MODULE",
                   help="import a module of studies or curriculum pieces (a run's own are imported from its config)")
    p.set_defaults(func=cmd_tas)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse, run the command, and turn any bad-input error of any command into one line (exit status 2)."""
    from experiments.registry import RegistryError

    from .affinity import AffinityError
    from .pieces import PieceError
    from .results import RunLockedError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may stand anywhere among the options
        if not hasattr(args, "overrides") or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        return args.func(args)
    except (ConfigError, RegistryError, PieceError, AffinityError, FileNotFoundError, RunLockedError) as exc:
        # every command's bad input ends here: one line naming the value and what is allowed
        return _fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
