"""The command line's parser: shared flags mean the same on every command; overrides may stand anywhere."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dynamics.cli import build_parser, main


@pytest.mark.parametrize("argv", [
    ["train"], ["studies"], ["run", "main", "--scale", "smoke"], ["status", "main", "--scale", "smoke"],
    ["analyze", "main", "--scale", "smoke"], ["reproduce"], ["tas", "run_dir"],
])
def test_register_is_repeatable_on_every_command_that_imports_user_modules(argv):
    args = build_parser().parse_args([*argv, "--register", "a", "--register", "b"])
    assert args.register == ["a", "b"]


@pytest.mark.parametrize("command", ["run", "reproduce"])
def test_the_launch_flags_are_the_same_on_run_and_reproduce(command):
    argv = [command, *(["all"] if command == "run" else []), "a.b=1", "--scale", "smoke", "--executor", "slurm",
            "--profile", "p.toml", "--jobs", "3", "--dry-run", "--quiet", "--seeds", "2", "--results", "r"]
    args = build_parser().parse_args(argv)
    assert (args.executor, args.profile, args.jobs, args.dry_run, args.quiet) == ("slurm", "p.toml", 3, True, True)
    assert (args.scale, args.seeds, args.results, args.overrides) == ("smoke", 2, "r", ["a.b=1"])


def test_defaults_of_the_shared_flags():
    run = build_parser().parse_args(["run", "main", "--scale", "cpu"])
    assert (run.executor, run.jobs, run.seeds, run.results, run.quiet, run.register) == \
        ("local", None, None, "results", False, None)
    assert build_parser().parse_args(["reproduce"]).scale == "cpu"
    assert build_parser().parse_args(["tas", "run_dir"]).scale is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["status", "main"])  # --scale is required for a study's grid


def test_overrides_may_stand_among_the_options(capsys):
    assert main(["train", "train.lr=0.002", "--preset", "smoke", "--dry-run", "train.seed=3"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["train"]["lr"] == 0.002 and cfg["train"]["seed"] == 3
    with pytest.raises(SystemExit):
        main(["train", "--preset", "smoke", "--dry-run", "--bogus"])


def test_python_dash_m_runs_the_command_line():
    out = subprocess.run([sys.executable, "-m", "dynamics.cli", "presets"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.split()[:3] == ["smoke", "cpu", "digits"]
