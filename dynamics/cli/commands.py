"""The sub-commands, one function each: check the parsed arguments, call the library, print the outcome.

Their flags are declared in `parser.py`. A command imports what it uses (torch, the registry, the launcher)
inside its body, so each loads only its own.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..config import SCALES, ConfigError, apply_overrides, preset, preset_names
from .tables import print_plan, status_table


def fail(message: str) -> int:
    """Print a bad-input error as one line; the exit status 2 of argparse's own errors."""
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
        return fail("--out DIR is required to train (or pass --dry-run)")
    from ..launch import config_problems
    from ..train import train

    if problems := config_problems(cfg):
        return fail(problems[0])
    status = train(cfg, args.out, device=args.device, progress=not args.quiet)
    world = int(os.environ.get("WORLD_SIZE") or 1)  # under torchrun every rank prints its own line
    where = f"; rank {os.environ.get('RANK')} of {world}" if world > 1 else ""
    print(f"{status['state']}: {args.out} (step {status.get('step')}{where})")
    return 0 if status["state"] == "done" else 1


def cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..api import load_run
    from ..meanflow.sampling import generate

    if not args.out and not args.png:
        return fail("sample: give --out FILE.npy, --png FILE.png, or both")
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
    from ..metrics.grid import image_grid, toy_figure, write_png

    samplers = [("u", n) for n in args.png_nfe] + [("v", n) for n in args.png_nfe_v]
    if len(run.data_shape) == 1:
        from ..data import build_dataset

        data = build_dataset(run.config.data).reference(2000, run.config.train.seed)
        path = toy_figure(run.model, data, samplers, args.png, seed=args.seed)
    else:
        if run.data_shape[0] not in (1, 3):
            raise ConfigError(f"--png draws images with 1 or 3 channels; this run's data has shape {run.data_shape}")
        path = write_png(args.png, image_grid(run.model, run.data_shape, run.num_classes, samplers,
                                              per_class=args.per_class, seed=args.seed))
    blocks = ", ".join(f"{n}-NFE {m}" for m, n in samplers)
    print(f"wrote {path} (step {run.step}; left to right: {blocks})")


def _launch(studies: list, args: argparse.Namespace) -> dict[str, str] | None:
    """`dynamics run` / `reproduce`: the dry-run table (None), or the launch's final states."""
    from ..launch import default_jobs, launch, prepare

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

    from .. import pieces

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
    from ..launch import plan, recorded_overrides

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
    from ..analysis.report import write_report
    from ..results import load_results

    studies = _studies(args.study, args.register)
    root = Path(args.results)
    if not root.is_dir():
        return fail(f"--results {root}: no such directory (a results root written by `dynamics run`)")
    runs = load_results(root, scale=args.scale)
    if runs.empty:
        return fail(f"--results {root}: no runs at scale {args.scale} under {root / args.scale} "
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
    from ..analysis.report import write_report

    studies = _studies("all", args.register)
    final = _launch(studies, args)
    if final is None:
        return 0
    from ..affinity import AffinityError
    from ..launch import default_jobs
    from ..study_tas import study_affinity

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
    from ..metrics.paper_fid import run_fid

    value = run_fid(args.run_dir, vae=args.vae, ref=args.ref, inception=args.inception, nfe=args.nfe,
                    mode=args.mode, num=args.num, batch=args.batch, device=args.device, epoch=args.epoch)
    print(f"FID ({args.num} samples, {args.nfe}-NFE {args.mode}): {value:.3f}")
    return 0


def cmd_tas(args: argparse.Namespace) -> int:
    """Task affinity (TAS, docs/design.md) of one run, of a preset's fresh init, or of every init of a study."""
    from experiments.registry import get_study

    from ..affinity import affinity_matrix, describe, task_affinity
    from ..results import atomic_write_bytes
    from ..study_tas import DEFAULT_VARIANT, study_affinity

    _register(args.register)
    settings = dict(method=args.method, batches=args.batches, samples=args.samples, optimizer=args.optimizer,
                    lr=args.lr, recompute_target=not args.no_recompute_target,
                    recompute_weight=args.recompute_weight, train_window=args.train_window, batch_size=args.batch_size,
                    device=args.device, progress=not args.quiet)
    note = ("rows: the task stepped on (source); columns: the task whose loss is measured (target); the "
            "accumulated TAS and the cosine are symmetric")
    if args.study:
        bad = [a for a in args.targets if "=" not in a]
        if bad or args.preset or args.tasks or args.out or args.epoch is not None:
            return fail("--study takes its tasks and runs from the registry and writes "
                         "<results>/<scale>/<study>/tas.csv; drop RUN_DIR, --preset, --tasks, --out and --epoch "
                         "(key=value overrides, as for `dynamics run`, are allowed)")
        if not args.scale:
            return fail(f"--study {args.study} needs --scale (one of {', '.join(SCALES)})")
        frame = study_affinity(get_study(args.study), args.scale, args.results, args.seeds,
                               overrides=args.targets, **settings)
        print(f"{describe(frame)}; {note}")
        default = frame[frame["variant"] == DEFAULT_VARIANT]
        for init, part in default.groupby("init", sort=False):
            print(f"\ninit {init} ({DEFAULT_VARIANT}; mean over {part['seed'].nunique()} seeds):")
            print(affinity_matrix(part, "value").to_string(float_format=lambda v: f"{v:+.4f}"))
        print("(the robustness checks, lookahead steps and per-batch cosine, are in tas.csv and the O3 report)")
        print(f"\nwrote {Path(args.results) / args.scale / args.study / 'tas.csv'}")
        return 0
    if args.preset:
        source = apply_overrides(preset(args.preset), args.targets)
    elif len(args.targets) == 1:
        source = args.targets[0]
    else:
        return fail("give one RUN_DIR, or --preset NAME [key=value ...], or --study NAME --scale S")
    frame = task_affinity(source, args.tasks or "v,u", epoch=args.epoch, seed=args.seed, **settings)
    print(f"{describe(frame)}; {note}")
    print(affinity_matrix(frame).to_string(float_format=lambda v: f"{v:+.4f}"))
    if args.out:
        atomic_write_bytes(Path(args.out), frame.assign(**frame.attrs).to_csv(index=False).encode())
        print(f"wrote {args.out}")
    return 0
