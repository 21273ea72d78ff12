"""The trainer on two CPU ranks (gloo) is the same run as one process with the same global batch.

One two-rank job (`job`, shared by the tests) runs every scenario in one process group: an uninterrupted
`smoke-dtd-lu` run, the same run stopped on rank 1 and resumed, a rank that cannot see the checkpoint, a NaN on
rank 1 only, a class-conditional digits run with CFG, and the `fused` and `full` JVP strategies. The tests
read what each rank recorded; the torchrun test launches the CLI itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dynamics.config import ConfigError, apply_overrides, preset
from dynamics.meanflow.loss import Draw
from dynamics.results import checkpoint_path, read_status
from dynamics.train import Trainer, objective_generator, train

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["train.log_every=1", "train.threads=1", "eval.every_epochs=1", "eval.num_samples=128"]
DIGITS = ["model.width=32", "model.depth=1", "train.batch_size=16", "train.steps_per_epoch=3", "train.epochs=1",
          "train.log_every=1", "train.threads=1", "eval.every_epochs=0", "eval.num_samples=16", "eval.nfe=[1]",
          "eval.nfe_v=[]", "eval.metrics=[]"]
STOP_AT, NAN_AT = 7, 3
GUARD_S = 120


def smoke_cfg(*extra: str):
    return apply_overrides(preset("smoke-dtd-lu"), [*SMOKE, *extra])


def digits_cfg():
    return apply_overrides(preset("digits"), DIGITS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _digest(module: torch.nn.Module) -> str:
    h = hashlib.sha1()
    for v in module.state_dict().values():
        h.update(v.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def _file_digest(path: Path) -> str | None:
    return hashlib.sha1(path.read_bytes()).hexdigest() if path.exists() else None


def _worker(rank: int, port: int, out: str) -> None:
    """Rank `rank` of 2: every scenario in turn, in one process group; writes what it saw to rank{rank}.json."""
    out = Path(out)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    seen: dict = {"trace": {}, "status": {}, "errors": {}}
    real_step, real_loss_on, real_load = Trainer.train_step, Trainer.loss_on, Trainer.restore
    hooks: dict = {}

    def step(self):
        stats = real_step(self)
        if stats is not None:
            seen["trace"].setdefault(hooks["name"], []).append(
                [self.step, _digest(self.model), _digest(self.ema), getattr(self.v_time, "stage", None)])
            if self.step == 1:  # the DDP-averaged gradient of step 0 (zeroed only at the next step)
                torch.save([p.grad.clone() for p in self.model.parameters()], out / f"{hooks['name']}_grad{rank}.pt")
        if hooks.get("after_step"):
            hooks["after_step"](self)
        return stats

    def loss_on(self, objective, x, d, gen=None):
        res = real_loss_on(self, objective, x, d, gen)
        if hooks.get("nan_at") == self.step and rank == 1:
            res.loss = res.loss * float("nan")
        return res

    def restore(self):
        if hooks.get("blind") and rank == 1:
            self.checkpoints.load_latest = lambda: None  # this rank cannot see last.pt
        return real_load(self)

    Trainer.train_step, Trainer.loss_on, Trainer.restore = step, loss_on, restore

    def run(name: str, cfg, run_dir: str, stop: threading.Event | None = None, **hook) -> None:
        hooks.clear()
        hooks.update(name=name, **hook)
        try:
            seen["status"][name] = train(cfg, out / run_dir, device="cpu", stop=stop)
        except Exception as exc:  # noqa: BLE001 - recorded for the test to judge
            seen["errors"][name] = f"{type(exc).__name__}: {exc}"

    run("whole", smoke_cfg(), "whole")
    stop = threading.Event()
    run("stopped", smoke_cfg(), "stopped", stop,
        after_step=lambda t: stop.set() if rank == 1 and t.step == STOP_AT else None)
    dist.barrier()
    if rank == 0:
        shutil.copytree(out / "stopped", out / "stopped_copy")
        before = {f: _file_digest(out / "stopped" / f) for f in ("checkpoints/last.pt", "metrics.jsonl")}
    dist.barrier()
    run("blind", smoke_cfg(), "stopped", blind=True)
    if rank == 0:
        seen["unchanged"] = before == {f: _file_digest(out / "stopped" / f) for f in before}
    run("resumed", smoke_cfg(), "stopped")
    run("nan", smoke_cfg(), "nan", nan_at=NAN_AT)
    run("digits", digits_cfg(), "digits")
    for strategy in ("fused", "full"):
        run(strategy, apply_overrides(preset("smoke"), ["train.steps_per_epoch=1", "train.epochs=1",
                                                         "eval.every_epochs=0", "eval.num_samples=16",
                                                         "train.threads=1", f"objective.jvp={strategy}"]), strategy)
    (out / f"rank{rank}.json").write_text(json.dumps(seen, default=str))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    out = tmp_path_factory.mktemp("two_ranks")
    ctx = mp.start_processes(_worker, args=(_free_port(), str(out)), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 4 * GUARD_S
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the two-rank job hung")
    ranks = [json.loads((out / f"rank{k}.json").read_text()) for k in range(2)]
    return out, ranks


def _one_process_step0(cfg, tmp: Path) -> tuple[dict, list[torch.Tensor]]:
    """One process fed both ranks' rows and draws of step 0: its (losses, gradient)."""
    trainer = Trainer(cfg, tmp, "cpu")
    objective = trainer.objective(0)
    parts = []
    for k in range(2):
        x, y = trainer.dataset.batch(0, cfg.train.batch_size, cfg.train.seed, k, 2)
        parts.append((x, objective.draw(x, y, objective_generator(cfg.train.seed, 0, k, trainer.device))))
    x = torch.cat([p[0] for p in parts])
    cat = [torch.cat([getattr(p[1], f) for p in parts]) if getattr(parts[0][1], f) is not None else None
           for f in ("t", "r", "e", "y")]
    out = trainer.loss_on(objective, x, Draw(*cat, n_v=None))
    out.loss.backward()
    if cfg.train.grad_clip > 0:  # the ranks clip the all-reduced gradient: the same norm as one process's
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), cfg.train.grad_clip)
    losses = {"loss": float(out.loss.detach()), "loss_v": float(out.loss_v), "loss_u": float(out.loss_u)}
    return losses, [p.grad for p in trainer.model.parameters()]


@pytest.mark.parametrize("name", ["whole", "digits", "fused", "full"])
def test_two_ranks_are_one_process_with_the_global_batch(job, name, tmp_path):
    out, ranks = job
    assert name not in ranks[0]["errors"] and name not in ranks[1]["errors"], ranks[0]["errors"]
    trace0, trace1 = ranks[0]["trace"][name], ranks[1]["trace"][name]
    assert trace0 == trace1  # the same params, EMA and DTD stage on both ranks after every step
    if name == "whole":
        stages = {row[3] for row in trace0}
        assert len(stages) > 2  # DTD moved: the shared stage is a real check
    cfg = {"whole": smoke_cfg(), "digits": digits_cfg()}.get(name) or apply_overrides(
        preset("smoke"), ["train.steps_per_epoch=1", "train.epochs=1", "eval.every_epochs=0",
                          "eval.num_samples=16", "train.threads=1", f"objective.jvp={name}"])
    losses, grads = _one_process_step0(cfg, tmp_path / "one")
    for k in range(2):
        for g, ref in zip(torch.load(out / f"{name}_grad{k}.pt"), grads):
            torch.testing.assert_close(g, ref, atol=1e-6, rtol=1e-5)
    row = json.loads((out / name / "metrics.jsonl").read_text().splitlines()[0])
    assert row["step"] == 1
    for key, value in losses.items():  # the logged losses are the global batch's
        assert row[key] == pytest.approx(value, rel=1e-6, abs=1e-7)


def _same_checkpoint(a: Path, b: Path) -> None:
    sa, sb = (torch.load(checkpoint_path(p), weights_only=False) for p in (a, b))
    assert sa["step"] == sb["step"] and sa["v_time"] == sb["v_time"]
    for part in ("model", "ema"):
        assert all(torch.equal(sa[part][k], sb[part][k]) for k in sa[part])
    assert not any(k.startswith("module.") for k in sa["model"])


def test_stop_on_one_rank_stops_both_at_one_step_and_resumes_exactly(job):
    out, ranks = job
    s0, s1 = ranks[0]["status"]["stopped"], ranks[1]["status"]["stopped"]
    assert s0["state"] == s1["state"] == "interrupted" and s0["step"] == s1["step"] >= STOP_AT
    assert torch.load(checkpoint_path(out / "stopped_copy"), weights_only=False)["step"] == s0["step"]
    assert ranks[0]["status"]["resumed"]["state"] == "done"
    _same_checkpoint(out / "stopped", out / "whole")  # DTD's stage included


def test_nan_on_one_rank_ends_both_as_diverged_at_its_step(job):
    out, ranks = job
    for k in range(2):
        status = ranks[k]["status"]["nan"]
        assert status["state"] == "diverged" and status["step"] == status["diverged_step"] == NAN_AT
    assert read_status(out / "nan")["state"] == "diverged"


def test_a_rank_that_cannot_see_the_checkpoint_fails_all_in_one_line(job):
    out, ranks = job
    for k in range(2):
        error = ranks[k]["errors"]["blind"]
        assert "disagree" in error and "rank 1 at step 0" in error and "\n" not in error
    assert ranks[0]["unchanged"]  # no checkpoint, no metrics row written


def test_resuming_at_another_world_size_is_refused_in_one_line(job):
    out, _ = job
    with pytest.raises(ConfigError, match=r"written by 2 rank\(s\) and this job has 1") as info:
        train(smoke_cfg(), out / "stopped_copy", device="cpu")
    assert "\n" not in str(info.value)


def _torchrun(run_dir: Path) -> subprocess.Popen:
    cmd = [str(ROOT / ".venv/bin/torchrun"), "--standalone", "--nproc-per-node=2",
           str(ROOT / ".venv/bin/dynamics"), "train", "--preset", "smoke-dtd-lu", "--out", str(run_dir),
           "--device", "cpu", "--quiet", *SMOKE,
           "eval.every_epochs=0.5", "eval.num_samples=1024"]  # evaluations on rank 0: time to kill it mid-run
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def test_torchrun_runs_one_job_and_resumes_exactly_after_a_sigkill(job, tmp_path):
    out, _ = job
    for attempt in range(3):  # a loaded machine can run past every checkpoint before a poll sees one: run again
        run_dir = tmp_path / f"run{attempt}"
        proc, killed = _torchrun(run_dir), False
        deadline = time.monotonic() + GUARD_S
        while time.monotonic() < deadline and proc.poll() is None:
            status = read_status(run_dir)
            if status.get("state") == "running" and 10 <= status.get("step", 0) < status["total_steps"]:
                os.kill(status["pid"], signal.SIGKILL)  # rank 0, the writer, mid-run
                killed = True
                break
            time.sleep(0.005)
        log, _ = proc.communicate(timeout=GUARD_S)
        if killed:
            break
    assert killed, f"no poll saw the run between step 10 and its end in 3 runs: {log}"
    assert proc.returncode != 0, log
    status = read_status(run_dir)
    assert status["state"] == "failed" and 10 <= status["step"] < 30, status
    again = _torchrun(run_dir)
    log, _ = again.communicate(timeout=GUARD_S)
    assert again.returncode == 0, log
    assert log.count("done:") == 2 and "rank 1 of 2" in log  # one run, two ranks
    _same_checkpoint(run_dir, out / "whole")
