"""The `dynamics` command line. Each sub-command is a thin layer over the library."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import ConfigError, apply_overrides, preset, preset_names


def _fail(message: str) -> int:
    print(f"dynamics: error: {message}", file=sys.stderr)
    return 2


def cmd_train(args: argparse.Namespace) -> int:
    cfg = apply_overrides(preset(args.preset), args.overrides)
    if args.dry_run:
        print(cfg.to_json())
        print(f"# {cfg.total_steps()} steps over {cfg.total_epochs():g} epochs", file=sys.stderr)
        return 0
    if not args.out:
        return _fail("--out DIR is required to train (or pass --dry-run)")
    from .train import train

    status = train(cfg, args.out, device=args.device, progress=not args.quiet)
    print(f"{status['state']}: {args.out} (step {status.get('step')})")
    return 0 if status["state"] == "done" else 1


def cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from .api import load_run
    from .meanflow.sampling import generate

    run = load_run(args.run_dir)
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


def cmd_presets(args: argparse.Namespace) -> int:
    print("\n".join(preset_names()))
    return 0


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
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="write samples of a run's EMA model to a .npy file")
    p.add_argument("run_dir")
    p.add_argument("--nfe", type=int, default=1)
    p.add_argument("--mode", choices=("u", "v"), default="u", help="u: few-step with u; v: Euler with u(z,t,t)")
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--label", type=int, default=-1, help="class label (default: random classes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("presets", help="list the presets")
    p.set_defaults(func=cmd_presets)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError) as exc:
        return _fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
