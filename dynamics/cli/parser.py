"""The `dynamics` argument parser: one sub-command per library entry point.

Arguments several commands share are declared once, as argparse parent parsers (`_Shared`), so a flag means
the same and is spelled the same everywhere; each command adds only what is its own.
"""

from __future__ import annotations

import argparse

from ..config import EXECUTORS, SAMPLING_MODES, SCALES, TAS_METHODS, TAS_OPTIMIZERS
from . import commands

OVERRIDES_HELP = "key=value applied to every run, e.g. data.path=/datasets/latents"


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def _group() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


class _Shared:
    """The shared argument groups; built per parser, since argparse shares a parent's action objects."""

    def __init__(self) -> None:
        self.register = _group()
        self.register.add_argument("--register", action="append", metavar="MODULE",
                                   help="import a module that registers studies and/or curriculum pieces (repeatable)")
        self.quiet = _group()
        self.quiet.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
        self.device = _group()
        self.device.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
        self.epoch = _group()
        self.epoch.add_argument("--epoch", type=float, default=None,
                                help="a kept epoch checkpoint (default: the last)")
        self.sampler = _group()  # how samples are drawn from a trained run
        self.sampler.add_argument("--nfe", type=int, default=1)
        self.sampler.add_argument("--mode", choices=SAMPLING_MODES, default="u",
                                  help="u: few-step with u; v: Euler with u(z,t,t)")
        self.results = _group()  # where a study's runs live
        self.results.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default: the scale's)")
        self.results.add_argument("--results", default="results", help="results root (default: results)")
        self.study = _group()  # a study grid at a scale: run, status, analyze
        self.study.add_argument("study", help="a study name (see `dynamics studies`), a comma-separated list, or all")
        self.study.add_argument("--scale", required=True, choices=SCALES)
        self.overrides = _group()
        self.overrides.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
        self.launch = _group()  # how a grid's runs are executed: run, reproduce
        self.launch.add_argument("--executor", default="local", choices=EXECUTORS)
        self.launch.add_argument("--profile", help="SLURM cluster profile, e.g. slurm/example.toml")
        self.launch.add_argument("--jobs", type=int, default=None, help="local: runs at once (default: one per core)")
        self.launch.add_argument("--dry-run", action="store_true",
                                 help="print the runs, dependencies and estimated cost")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dynamics", description="MeanFlow training-dynamics toolkit")
    sub = parser.add_subparsers(dest="command", required=True)
    g = _Shared()

    p = sub.add_parser("train", help="train one run from a preset with key=value overrides",
                       parents=[g.register, g.quiet, g.device])
    p.add_argument("--preset", default="cpu", help="<scale>[-<method>], e.g. cpu, cpu-dtd-lu, b4-minsnr-lu")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. train.lr=1e-3 objective.beta=progressive")
    p.add_argument("--out", help="run directory (resumed if it holds a checkpoint)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and stop")
    p.set_defaults(func=commands.cmd_train)

    p = sub.add_parser("sample", help="samples of a run's EMA model: a .npy file (--out) and/or a PNG grid (--png)",
                       parents=[g.sampler])
    p.add_argument("run_dir")
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--label", type=int, default=-1, help="class label (default: random classes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="samples as .npy (--num, --nfe, --mode, --label)")
    p.add_argument("--png", help="a picture: per class a row, per sampler a block of --per-class samples")
    p.add_argument("--png-nfe", type=_int_list, default=[1, 2], help="u samplers of the picture (default 1,2)")
    p.add_argument("--png-nfe-v", type=_int_list, default=[32], help="v Euler samplers of the picture (default 32)")
    p.add_argument("--per-class", type=int, default=10, help="samples per class and sampler in the picture")
    p.set_defaults(func=commands.cmd_sample)

    p = sub.add_parser("presets", help="list the presets")
    p.set_defaults(func=commands.cmd_presets)

    p = sub.add_parser("studies", help="list the registered studies with their run counts per scale",
                       parents=[g.register])
    p.set_defaults(func=commands.cmd_studies)

    p = sub.add_parser("run", help="run a study grid (skips finished runs, resumes interrupted ones)",
                       parents=[g.study, g.results, g.register, g.overrides, g.launch, g.quiet])
    p.add_argument("--rerun-failed", action="store_true", help="run failed (resume) and diverged (restart) runs")
    p.set_defaults(func=commands.cmd_run)

    p = sub.add_parser("status", help="state and progress of every run of a study",
                       parents=[g.study, g.results, g.register, g.overrides])
    p.set_defaults(func=commands.cmd_status)

    p = sub.add_parser("analyze", help="tables, figures and a report with a verdict per finding",
                       parents=[g.study, g.results, g.register, g.overrides])
    p.set_defaults(func=commands.cmd_analyze)

    p = sub.add_parser("reproduce", help="run every study at a scale, then write the report",
                       parents=[g.results, g.register, g.overrides, g.launch, g.quiet])
    p.add_argument("--scale", default="cpu", choices=SCALES)
    p.set_defaults(func=commands.cmd_reproduce)

    p = sub.add_parser("fid", help="FID-50K of a paper-scale run (SD-VAE decode, Inception, ADM reference)",
                       parents=[g.sampler, g.epoch, g.device])
    p.add_argument("run_dir")
    p.add_argument("--vae", required=True, help="local directory of stabilityai/sd-vae-ft-mse")
    p.add_argument("--ref", required=True, help="ADM reference statistics, e.g. VIRTUAL_imagenet256_labeled.npz")
    p.add_argument("--inception", default=None, help="local Inception weights (torch-fidelity's file)")
    p.add_argument("--num", type=int, default=50_000)
    p.add_argument("--batch", type=int, default=250)
    p.set_defaults(func=commands.cmd_fid)

    p = sub.add_parser("tas", help="task affinity scores (TAS) of a run, a preset's fresh init, or a study's inits",
                       parents=[g.results, g.register, g.quiet, g.epoch, g.device])
    p.add_argument("targets", nargs="*", metavar="RUN_DIR | key=value",
                   help="a run directory, or with --preset the preset's key=value overrides")
    p.add_argument("--preset", help="a fresh init of this preset (train.seed=N picks the init)")
    p.add_argument("--study", help="every init of a study with TAS tasks (o3-task-affinity), with --scale, "
                                   "--seeds and --results")
    p.add_argument("--scale", choices=SCALES, help="with --study")
    p.add_argument("--tasks", help="comma-separated: v, u, both, u[a,b] (default: v,u)")
    p.add_argument("--method", default=TAS_METHODS[0], choices=TAS_METHODS,
                   help="accumulated (default): the authors' TAS, the cosine between the tasks' gradients "
                        "accumulated over N samples; lookahead (TAG's step) and cosine (per batch) are checks")
    p.add_argument("--samples", type=int, default=None, metavar="N",
                   help="accumulated: the N samples (default: the scale's, 1000 at paper scale)")
    p.add_argument("--batches", type=int, default=None,
                   help="lookahead/cosine: batches averaged over (default 16; with --study at digits scale 8); "
                        "accumulated: disjoint N-sample sets (default 1)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="rows per batch (accumulated: per backward chunk); default: the run's train.batch_size")
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
    p.add_argument("--seed", type=int, default=0, help="seed of the TAS draws (t, r, noise)")
    p.add_argument("--out", help="write the long-format TAS table to this CSV")
    p.set_defaults(func=commands.cmd_tas)
    return parser
