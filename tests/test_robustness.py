"""What needs no cluster: one writer per run directory, crash-safe checkpoints, failures recorded wherever they
happen, and bad input refused in one line with nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import dynamics.results as results
from dynamics.cli import main as cli_main
from dynamics.config import ConfigError, RunConfig, apply_overrides
from dynamics.results import RunLockedError, checkpoint_path, read_jsonl, read_status, run_lock
from dynamics.train import PREV_CKPT, Trainer, train
from experiments.registry import base_config, joint

REPO = Path(__file__).resolve().parents[1]


def small(steps: int = 60, ckpt_every: int = 20) -> RunConfig:
    cfg = base_config("smoke")
    cfg.phases = [joint(steps)]
    cfg.train.ckpt_every = ckpt_every
    cfg.train.threads = 1
    return cfg


def same_state(a: Path, b: Path) -> None:
    sa, sb = (torch.load(checkpoint_path(p), weights_only=False) for p in (a, b))
    assert sa["step"] == sb["step"]
    for part in ("model", "ema"):
        assert all(torch.equal(sa[part][k], sb[part][k]) for k in sa[part]), part


def hold_lock(run_dir: Path) -> subprocess.Popen:
    """Another process that holds the run directory's lock until it is killed."""
    code = ("import sys, time\nfrom dynamics.results import run_lock\n"
            "with run_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_trainer_waits_then_gives_up_changing_nothing(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    holder = hold_lock(run_dir)
    try:
        monkeypatch.setattr(results, "LOCK_WAIT_S", 0.5)
        start = time.monotonic()
        with pytest.raises(RunLockedError, match="being trained by another process"):
            train(small(), run_dir)
        assert time.monotonic() - start >= 0.5
        assert [p.name for p in run_dir.iterdir()] == [".lock"]  # no status, no config, no metrics
        code = cli_main(["train", "--preset", "smoke", "--out", str(run_dir), "--quiet"])
        assert code == 2 and [p.name for p in run_dir.iterdir()] == [".lock"]
    finally:
        holder.kill()  # kill -9: the OS releases the lock
        holder.wait()
    assert train(small(), run_dir)["state"] == "done"


def test_a_dying_holder_hands_the_lock_over_within_the_wait(tmp_path):
    run_dir = tmp_path / "run"
    holder = hold_lock(run_dir)
    subprocess.Popen(["sh", "-c", f"sleep 0.5; kill -KILL {holder.pid}"])
    start = time.monotonic()
    with run_lock(run_dir, wait_s=30):
        waited = time.monotonic() - start
    holder.wait()
    assert 0.3 < waited < 10


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch, kill_after):
    run_dir = tmp_path / "run"
    kill_after(Trainer(small(), run_dir), 40)
    assert torch.load(checkpoint_path(run_dir), weights_only=False)["step"] == 40

    real_save = torch.save

    def dies_halfway(obj, f, *args, **kwargs):
        real_save({"step": -1, "junk": torch.zeros(1000)}, f)
        f.truncate(100)
        raise KeyboardInterrupt  # the process is interrupted mid-write

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        results.atomic_torch_save(checkpoint_path(run_dir), {"step": 41})
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(checkpoint_path(run_dir), weights_only=False)["step"] == 40
    assert not list(run_dir.rglob("*.tmp"))


def test_unreadable_last_checkpoint_falls_back_to_the_previous_good_one(tmp_path, kill_after):
    run_dir = tmp_path / "run"
    kill_after(Trainer(small(), run_dir), 40)
    last = checkpoint_path(run_dir)
    assert torch.load(last.with_name(PREV_CKPT), weights_only=False)["step"] == 20
    last.write_bytes(last.read_bytes()[:len(last.read_bytes()) // 2])  # a torn file (no atomic rename)
    (last.parent / ".last.pt.x1y2.tmp").write_bytes(b"half a checkpoint")  # what a kill -9 mid-write leaves
    assert train(small(), run_dir)["state"] == "done"
    steps = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and steps[-1] == 60
    train(small(), tmp_path / "uninterrupted")
    same_state(run_dir, tmp_path / "uninterrupted")


def test_failure_while_building_is_recorded(tmp_path):
    latents = tmp_path / "latents"
    latents.mkdir()
    (latents / "index.json").write_text("{not json")
    cfg = apply_overrides(small(), ["data.name=imagenet_latents", f"data.path={latents}", "model.name=dit",
                                    'eval.metrics=["fid"]'])
    with pytest.raises(ValueError, match="index.json"):
        train(cfg, tmp_path / "run")
    status = read_status(tmp_path / "run")
    assert status["state"] == "failed" and "index.json" in status["error"]


def test_eval_metric_the_data_cannot_give_is_refused():
    with pytest.raises(ConfigError, match="fid cannot be computed on data.name=moons"):
        apply_overrides(small(), ['eval.metrics=["fid"]'])
    with pytest.raises(ConfigError, match="unknown metric 'fdd'"):
        apply_overrides(small(), ['eval.metrics=["fdd"]'])


BAD_PROFILE = '[slurm]\npartition = "debug"\ngpus = 2\n'


@pytest.mark.parametrize("argv, message", [
    (["run", "main", "--scale", "smoke", "train.bogus=1"], "unknown key 'train.bogus'"),
    (["run", "main", "--scale", "smoke", "train.epochs=ten"], "train.epochs"),
    (["train", "--preset", "smoke", "--out", "{root}/x", "phases=[{\"epochs\": 2, \"terms\": \"u\", \"sampler\": "
      "{\"kind\": \"dt_bin\", \"dt_min\": 0.3, \"dt_max\": 0.3}}]"], "empty dt bin"),
    (["train", "--preset", "smoke", "--out", "{root}/x", "phases=[{\"epochs\": 2, \"terms\": \"u\", \"sampler\": "
      "{\"kind\": \"dt_bin\", \"dt_min\": 0.3, \"dt_max\": 1.5}}]"], "out of range"),
    (["train", "--preset", "smoke", "--out", "{root}/x", "train.epochs=-1"], "train.epochs=-1"),
    (["run", "no-such-study", "--scale", "smoke"], "no-such-study"),
    (["run", "main", "--scale", "b4", "data.path=/no/such/latents"], "data.path=/no/such/latents: no such"),
    (["train", "--preset", "b4", "--out", "{root}/x", "data.path=/no/such/latents"], "no such directory"),
    (["run", "main", "--scale", "smoke", "init.run_dir=/no/such/run"], "init.run_dir=/no/such/run: no checkpoint"),
    (["run", "main", "--scale", "smoke", "--executor", "slurm", "--profile", "{profile}"], "unknown key 'gpus'"),
    (["analyze", "all", "--scale", "cpu"], "no such directory"),
    (["analyze", "all", "--scale", "cpu", "--results", "{empty}"], "no runs at scale cpu"),
    (["train", "--preset", "smoke", "--out", "{root}/x", 'eval.metrics=["fid"]'], "fid cannot be computed"),
])
def test_bad_input_is_one_line_and_writes_nothing(argv, message, tmp_path, capsys):
    root, empty, profile = tmp_path / "results", tmp_path / "empty", tmp_path / "bad.toml"
    empty.mkdir()
    profile.write_text(BAD_PROFILE)
    argv = [a.replace("{root}", str(root)).replace("{empty}", str(empty)).replace("{profile}", str(profile))
            for a in argv]
    if argv[0] in ("run", "analyze") and "--results" not in argv:
        argv += ["--results", str(root)]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dynamics: error:") and message in err[0], err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


def test_unknown_scale_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["run", "main", "--scale", "huge"])
    assert exc.value.code == 2 and "invalid choice: 'huge'" in capsys.readouterr().err


def test_status_uses_the_overrides_the_run_recorded(tmp_path, capsys):
    from dynamics.launch import record_overrides
    from experiments.registry import get_study

    record_overrides(tmp_path, "smoke", [get_study("main")], ["train.lr=0.002"])
    assert json.loads((tmp_path / "smoke" / "main" / "overrides.json").read_text()) == ["train.lr=0.002"]
    assert cli_main(["status", "main", "--scale", "smoke", "--results", str(tmp_path)]) == 0
    assert "with the overrides `dynamics run` recorded: train.lr=0.002" in capsys.readouterr().out
    assert cli_main(["status", "main", "--scale", "smoke", "--results", str(tmp_path), "train.lr=0.001"]) == 0
    assert "used other overrides (train.lr=0.002)" in capsys.readouterr().out


def test_usr2_writes_a_checkpoint_at_the_step_it_arrives(tmp_path):
    """The trainer's stop request (what RunJob's USR2 handler sets) checkpoints at once, then resumes exactly."""
    import threading

    stop = threading.Event()
    cfg = small(200, ckpt_every=100)
    trainer = Trainer(cfg, tmp_path / "run")
    real_step = trainer.train_step

    def step_and_maybe_signal():
        out = real_step()
        if trainer.step == 37:
            stop.set()
        return out

    trainer.train_step = step_and_maybe_signal
    status = trainer.run(stop=stop)
    assert status["state"] == "interrupted" and status["step"] == 37
    assert torch.load(checkpoint_path(tmp_path / "run"), weights_only=False)["step"] == 37
    assert train(cfg, tmp_path / "run")["state"] == "done"
    train(cfg, tmp_path / "uninterrupted")
    same_state(tmp_path / "run", tmp_path / "uninterrupted")


def test_job_failing_before_its_trainer_starts_records_why(tmp_path):
    from dynamics.launch import RunJob

    with pytest.raises(ConfigError, match="bogus"):
        RunJob(1)({"train": {"bogus": 1}}, str(tmp_path / "run"), str(tmp_path))
    status = read_status(tmp_path / "run")
    assert status["state"] == "failed" and "bogus" in status["error"]


def test_allowed_values_are_checked_once_from_the_config_types():
    """Every Literal field, however deep (a phase's sampler), is checked by RunConfig.validate with its key."""
    from dynamics.config import ConfigError, PhaseConfig, RunConfig, SamplerConfig

    cfg = RunConfig(phases=[PhaseConfig(), PhaseConfig(sampler=SamplerConfig(kind="beta"))])
    with pytest.raises(ConfigError, match=r"phases.1.sampler.kind='beta' is not allowed; choose one of logit_normal, "
                                          r"uniform, dt_bin"):
        cfg.validate()
    with pytest.raises(ConfigError, match="train.precision='fp16' is not allowed"):
        RunConfig.from_dict({"train": {"precision": "fp16"}})  # also when read from a dict
