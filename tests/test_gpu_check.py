"""`make gpu-check`'s CPU variant runs and passes its checks; the cost model reads the rates it calibrates; the
trainer's forced single-process torch.distributed goes through the all-reduce."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from dynamics import launch
from dynamics.cli import main as cli_main
from dynamics.config import preset

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_cpu_variant_runs_every_section_and_passes(tmp_path):
    """The script as a user runs it (`python3 benchmarks/gpu_check.py`, project on PYTHONPATH), tiny CPU sizes."""
    out = tmp_path / "record.json"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--json", str(out),
                           "--work", str(tmp_path / "work")], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["ok"] and record["environment"]["device"] == "cpu"
    sections = record["sections"]
    assert list(sections) == ["train", "distributed", "fid", "estimate", "step_cost"]
    assert {name: s["status"] for name, s in sections.items()} == dict.fromkeys(sections, "ok")
    train = sections["train"]
    assert train["checks"] == {"run_done": True, "loss_finite": True, "loss_falling": True, "resume_identical": True}
    assert train["values"]["resume_max_abs_diff"] == 0.0 and train["values"]["time_scale"] == 1.0
    assert train["values"]["img_per_s"] > 0 and train["values"]["peak_mb"] > 0
    assert train["values"]["loss_v_last"] < train["values"]["loss_v_first"]
    dist = sections["distributed"]
    assert dist["values"]["backend"] == "gloo" and dist["values"]["world_size"] == 1
    assert dist["checks"]["all_reduce_called"] and dist["values"]["max_abs_diff_vs_plain"] == 0.0
    fid = sections["fid"]
    assert fid["values"]["images"] == [6, 3, 64, 64] and fid["values"]["trace_sigma"] > 1e-3
    assert all(fid["checks"].values()) and abs(fid["values"]["self_fid"]) <= fid["values"]["self_fid_tolerance"]
    estimate = sections["estimate"]["values"]
    assert estimate["b4_run_steps"] == preset("b4").total_steps() and estimate["b4_run_gpu_hours"] > 0
    assert estimate["model_origin"].startswith(("built-in", "measured"))
    cost = sections["step_cost"]
    strategies = {r["strategy"] for r in cost["values"]["rows"]}
    assert strategies == {"rows", "fused", "full"}  # `compiled` is left to --strategies on CPU
    assert all(e["fp32"] <= 1e-4 for e in cost["values"]["jvp_rel_error"].values())
    row = cost["values"]["rows"][0]
    assert {"fm_ms", "mf_ms", "time_ratio", "fm_peak_mb", "mf_peak_mb", "throughput_ratio"} <= set(row)
    assert set(cost["values"]["goals"]) == strategies and "mix_time_x" in cost["values"]["goals"]["rows"]
    assert "== step_cost: OK" in proc.stdout and "strategy" in proc.stdout  # the readable table


def test_calibrated_rates_feed_the_cost_model(tmp_path, monkeypatch):
    gpu_check = load_gpu_check()
    rates = tmp_path / "measured_rates.json"
    monkeypatch.setattr(launch.cost, "MEASURED_RATES_FILE", rates)  # the cost model reads it there
    cfg = preset("b4")
    builtin = launch.estimate_seconds(cfg, 0)
    assert launch.step_rate("b4").origin.startswith("built-in")
    gpu_check.write_rates(rates, 7.0, 7.0 * 256, 256, "NVIDIA H100 80GB HBM3")
    b4, m2 = launch.step_rate("b4"), launch.step_rate("m2")
    assert b4.steps_per_s == 7.0 and "gpu_check.py --calibrate" in b4.origin and "H100" in b4.device
    assert m2.steps_per_s == pytest.approx(7.0 * 5.56 / 53.8)  # scaled from the measured B/4 by GFLOPs
    assert launch.estimate_seconds(cfg, 0) == pytest.approx(builtin * 3.5 / 7.0)
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli_main(["run", "main", "--scale", "b4", "--dry-run", "--results", str(tmp_path / "results")])
    assert code == 0 and "measured by benchmarks/gpu_check.py --calibrate (measured_rates.json)" in out.getvalue()
    rates.write_text("[1, 2]")
    with pytest.raises(launch.ConfigError, match="not a measured-rates file"):
        launch.step_rate("b4")


def test_forced_distributed_all_reduces_at_world_size_one(tmp_path, monkeypatch):
    """DYNAMICS_FORCE_DIST=1: the trainer starts gloo on one process and trains through DDP; same step as without."""
    import torch.distributed as dist

    from dynamics import distributed
    from dynamics import train as train_mod

    cfg = preset("smoke")
    cfg.train.steps_per_epoch, cfg.train.epochs = 2, 1.0
    plain = train_mod.Trainer(cfg, tmp_path / "a", "cpu")
    plain.train_step()
    calls = []
    original = distributed.wrap_model
    monkeypatch.setattr(distributed, "wrap_model", lambda m, d: (calls.append(1), original(m, d))[1])
    monkeypatch.setenv(train_mod.FORCE_DIST_ENV, "1")
    try:
        forced = train_mod.Trainer(cfg, tmp_path / "b", "cpu")
        assert dist.is_initialized() and dist.get_world_size() == 1 and forced.dist.initialized
        forced.train_step()
    finally:
        dist.destroy_process_group()
    assert calls == [1]
    for a, b in zip(plain.model.parameters(), forced.model.parameters()):
        assert a.equal(b)
