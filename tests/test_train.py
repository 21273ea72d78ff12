"""The trainer: exact resume, the closed-form Gaussian case, divergence, DDP, run directory, CLI."""

from __future__ import annotations

import io
import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dynamics.api import load_run
from dynamics.cli import main as cli_main
from dynamics.config import ConfigError, SamplerConfig, apply_overrides, preset
from dynamics.data.imagenet import write_shards
from dynamics.data.toy2d import gaussian_mean_flow
from dynamics.meanflow import MeanFlowLoss, build_sampler
from dynamics.meanflow.sampling import sample
from dynamics.models.mlp import MLP
from dynamics.progress import Progress
from dynamics.results import read_jsonl, read_status
from dynamics.train import Trainer, all_reduce_gradients, train


def _smoke(*overrides: str):
    return apply_overrides(preset("smoke"), ["train.threads=1", *overrides])


def _params(model: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resume_equals_uninterrupted_run(tmp_path, kill_after):
    cfg = _smoke("train.epochs=4", "train.ckpt_every=10")
    whole = Trainer(cfg, tmp_path / "whole")
    whole.run()
    kill_after(Trainer(cfg, tmp_path / "killed"), 20)
    assert read_status(tmp_path / "killed")["state"] == "running"
    resumed = Trainer(cfg, tmp_path / "killed")
    resumed.run()
    assert resumed.step == whole.step == 40
    for a, b in [(whole.model, resumed.model), (whole.ema, resumed.ema)]:
        pa, pb = _params(a), _params(b)
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    steps = [r["step"] for r in read_jsonl(tmp_path / "killed" / "metrics.jsonl")]
    assert steps == sorted(set(steps))  # no duplicated log rows after the resume
    assert read_status(tmp_path / "killed")["state"] == "done"


def test_gaussian_closed_form():
    """A short run on N(m, diag s^2): 1-NFE samples match the moments, u matches the exact mean flow."""
    torch.manual_seed(0)
    mean, scale = torch.tensor([1.0, -0.5]), torch.tensor([0.5, 0.25])
    model = MLP(width=128, depth=3)
    # uniform (t, r) with 75% u rows: the corner t = 1, r = 0 that 1-NFE sampling reads gets trained
    loss_fn = MeanFlowLoss(build_sampler(SamplerConfig(kind="uniform")), ratio_r_eq_t=0.25, adaptive_p=0.0)
    steps = 2000
    opt = torch.optim.Adam(model.parameters(), lr=5e-3, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        x = mean + scale * torch.randn(256, 2, generator=g)
        out = loss_fn(model, x, None, g, step)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        schedule.step()
    samples = sample(model, torch.randn(20000, 2, generator=g))
    assert torch.allclose(samples.mean(0), mean, atol=0.04)
    assert torch.allclose(samples.std(0), scale, atol=0.04)
    t = 0.05 + 0.95 * torch.rand(4000, generator=g)
    r = t * torch.rand(4000, generator=g)
    z = (1 - t[:, None]) * (mean + scale * torch.randn(4000, 2, generator=g)) + t[:, None] * torch.randn(4000, 2)
    with torch.no_grad():
        u = model(z, r, t)
    exact = gaussian_mean_flow(z, r, t, mean, scale)
    rel = ((u - exact).pow(2).sum(1).mean() / exact.pow(2).sum(1).mean()).item()
    assert rel < 0.01, rel


def test_gaussian_mean_flow_matches_integrated_ode():
    """u(z, r, t) = (z_t - z_r) / (t - r) with z_r from integrating the marginal velocity u(z, s, s)."""
    m, s = torch.tensor([1.0, -0.5]), torch.tensor([0.5, 0.25])
    z = torch.randn(50, 2, dtype=torch.float64)
    t, r = torch.full((50,), 0.9), torch.full((50,), 0.2)
    zs, steps = z.clone(), 2000
    for k in range(steps):  # RK2 from t down to r on v(z, s) = u(z, s, s)
        s_now = 0.9 - 0.7 * k / steps
        h = -0.7 / steps
        v1 = gaussian_mean_flow(zs, torch.full((50,), s_now), torch.full((50,), s_now), m, s).double()
        mid = zs + 0.5 * h * v1
        s_mid = torch.full((50,), s_now + 0.5 * h)
        zs = zs + h * gaussian_mean_flow(mid, s_mid, s_mid, m, s).double()
    u_ode = (z - zs) / 0.7
    assert torch.allclose(gaussian_mean_flow(z, r, t, m, s).double(), u_ode, atol=1e-4)


def test_nonfinite_loss_marks_run_diverged(tmp_path, monkeypatch):
    cfg = _smoke()
    trainer = Trainer(cfg, tmp_path / "run")
    real_batch = trainer.dataset.batch

    def poisoned(step, *args, **kwargs):
        x, y = real_batch(step, *args, **kwargs)
        return (x * float("nan"), y) if step == 7 else (x, y)

    monkeypatch.setattr(trainer.dataset, "batch", poisoned)
    status = trainer.run()
    assert status["state"] == "diverged"
    assert status["diverged_step"] == 7


def test_run_directory_contents(tmp_path):
    status = train(_smoke(), tmp_path / "run")
    assert status["state"] == "done" and status["step"] == 30
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["batch_size"] == 128
    metrics = read_jsonl(run / "metrics.jsonl")
    assert {"step", "epoch", "loss", "loss_v", "loss_u", "lr", "start_step", "time"} <= set(metrics[-1])
    evals = read_jsonl(run / "eval.jsonl")
    final = [r for r in evals if r["step"] == 30]
    assert {(r["sampler"], r["nfe"]) for r in final} == {("u", 1), ("u", 2), ("v", 8)}
    for r in final:
        assert {"step", "epoch", "metric", "nfe", "value", "floor", "ceiling"} <= set(r)
        assert r["floor"] < r["ceiling"]
    loaded = load_run(run)
    assert len(loaded.metrics) == len(metrics) and not loaded.model.training


def test_final_samplers_are_evaluated_at_the_last_step_only(tmp_path):
    """eval.final_nfe / final_nfe_v join the last evaluation only (convergence's 1-NFE curve, the rest at the end);
    the final values equal those of a run that evaluates every sampler throughout."""
    cheap = train(_smoke("eval.every_epochs=1", "eval.nfe=[1]", "eval.nfe_v=[]", "eval.final_nfe=[2]",
                         "eval.final_nfe_v=[8,16]"),
                  tmp_path / "cheap")
    full = train(_smoke("eval.every_epochs=1", "eval.nfe=[1,2]", "eval.nfe_v=[8,16]"), tmp_path / "full")
    assert cheap["state"] == full["state"] == "done"
    rows = read_jsonl(tmp_path / "cheap" / "eval.jsonl")
    by_step: dict[int, set] = {}
    for r in rows:
        by_step.setdefault(r["step"], set()).add((r["sampler"], r["nfe"]))
    last = max(by_step)
    assert len(by_step) > 2 and all(v == {("u", 1)} for s, v in by_step.items() if s != last)
    assert by_step[last] == {("u", 1), ("u", 2), ("v", 8), ("v", 16)}
    final = {(r["metric"], r["sampler"], r["nfe"]): r["value"] for r in rows if r["step"] == last}
    reference = {(r["metric"], r["sampler"], r["nfe"]): r["value"]
                 for r in read_jsonl(tmp_path / "full" / "eval.jsonl") if r["step"] == last}
    assert final == reference


class Clock:
    """A fake clock: `now` moves only when the test moves it."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_to_a_file_prints_a_line_per_5_percent_or_10_minutes():
    stream, clock = io.StringIO(), Clock()
    with Progress(10_000, desc="run", stream=stream, clock=clock) as bar:
        for _ in range(10_000):
            bar.update(1)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 20 and lines[-1].startswith("run: 10000/10000 steps (100%)")
    stream = io.StringIO()
    with Progress(10_000, initial=2_500, stream=stream, clock=clock) as bar:  # resumed; 5 s a step
        for _ in range(990):
            clock.now += 5.0
            bar.update(1)
    lines = [line.split(" steps")[0] for line in stream.getvalue().splitlines()]
    # every 120 steps (600 s), at the 30% mark (which restarts the 600 s), and at close
    assert lines == ["2620/10000", "2740/10000", "2860/10000", "2980/10000", "3000/10000", "3120/10000",
                     "3240/10000", "3360/10000", "3480/10000", "3490/10000"]
    assert stream.getvalue().splitlines()[-1] == "3490/10000 steps (35%), 0.2 steps/s, 1h22m elapsed, ~9h02m left"


def test_progress_on_a_terminal_is_a_tqdm_bar():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    with Progress(100, stream=stream) as bar:
        for _ in range(100):
            bar.update(1)
    assert "\r" in stream.getvalue() and "100/100" in stream.getvalue()


def test_train_piped_to_a_file_writes_a_bounded_number_of_progress_lines(tmp_path, capsys):
    status = train(_smoke("train.epochs=20"), tmp_path / "run", progress=True)  # 200 steps
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("smoke: ")]
    assert status["state"] == "done" and 1 <= len(lines) <= 21 and "\r" not in err
    assert lines[-1].startswith("smoke: 200/200 steps (100%)")


def test_sample_cli_writes_npy(tmp_path):
    train(_smoke(), tmp_path / "run")
    out = tmp_path / "s.npy"
    assert cli_main(["sample", str(tmp_path / "run"), "--nfe", "2", "--num", "100", "--out", str(out)]) == 0
    x = np.load(out)
    assert x.shape == (100, 2) and np.isfinite(x).all()


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="unknown key 'train.lrr'"):
        apply_overrides(preset("cpu"), ["train.lrr=1"])
    with pytest.raises(ConfigError, match="train.lr: expected a number"):
        apply_overrides(preset("cpu"), ["train.lr=fast"])
    with pytest.raises(ConfigError, match="objective.alpha='max'.*allowed: none, .*minsnr"):
        apply_overrides(preset("cpu"), ["objective.alpha=max"])
    with pytest.raises(ConfigError, match="unknown preset 'b5'"):
        preset("b5")


def test_cli_dry_run_prints_paper_config(capsys):
    assert cli_main(["train", "--preset", "b4", "--dry-run"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["train"]["batch_size"] == 256 and cfg["train"]["lr"] == 1e-4
    assert (cfg["train"]["adam_beta1"], cfg["train"]["adam_beta2"]) == (0.9, 0.95)
    assert cfg["train"]["ema_decay"] == 0.9999 and cfg["model"]["size"] == "B/4"
    assert cfg["objective"]["guidance"]["kappa"] == 0.5 and cfg["objective"]["sampler"]["mu"] == -0.4
    assert cli_main(["train", "--preset", "cpu", "train.lr=oops", "--dry-run"]) == 2
    assert "train.lr" in capsys.readouterr().err


def test_dit_b4_step_on_synthetic_latent_shards(tmp_path):
    g = torch.Generator().manual_seed(0)
    write_shards(tmp_path / "shards", torch.randn(8, 4, 32, 32, generator=g), torch.randint(0, 1000, (8,)),
                 shard_size=4)
    cfg = apply_overrides(preset("b4"), [
        f"data.path={tmp_path / 'shards'}", "train.batch_size=2", "train.steps_per_epoch=1", "train.epochs=1",
        "train.threads=2", "eval.metrics=[]"])
    trainer = Trainer(cfg, tmp_path / "run", device="cpu")
    before = _params(trainer.model)
    stats = trainer.train_step()
    assert np.isfinite(stats["loss"])
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


# -- DDP on CPU (gloo) --------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = MLP(width=32, depth=2)
    loss_fn = MeanFlowLoss(build_sampler(preset("cpu").objective.sampler))
    x, e, t, r = torch.load(os.path.join(out_dir, "batch.pt"))
    half = len(x) // world
    rows = slice(rank * half, (rank + 1) * half)
    # the same u/v layout on each half: 2 v rows then 2 u rows per rank
    loss_fn.loss(model, x[rows], e[rows], t[rows], r[rows], None, n_v=None).loss.backward()
    all_reduce_gradients(model, world)
    torch.save([p.grad for p in model.parameters()], os.path.join(out_dir, f"grad{rank}.pt"))
    dist.destroy_process_group()


def test_ddp_gradients_sync_and_match_one_process(tmp_path):
    g = torch.Generator().manual_seed(1)
    x, e = torch.randn(8, 2, generator=g), torch.randn(8, 2, generator=g)
    t = torch.rand(8, generator=g)
    r = torch.where(torch.arange(8) % 4 < 2, t, t * torch.rand(8, generator=g))
    torch.save((x, e, t, r), tmp_path / "batch.pt")
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    g0, g1 = torch.load(tmp_path / "grad0.pt"), torch.load(tmp_path / "grad1.pt")
    assert all(torch.equal(a, b) for a, b in zip(g0, g1))  # in sync
    torch.manual_seed(0)
    model = MLP(width=32, depth=2)
    loss_fn = MeanFlowLoss(build_sampler(preset("cpu").objective.sampler))
    loss_fn.loss(model, x, e, t, r, None, n_v=None).loss.backward()
    for a, p in zip(g0, model.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6, rtol=1e-5)
