"""Several ranks through SLURM and submitit: a job of two tasks (slurm/local-ddp.toml: tasks_per_node = 2, gloo on
the CPU) on the real single-node SLURM that tests/conftest.py starts trains a `smoke-dtd-lu` run bit-identical to
the same run under torchrun with two ranks, through a USR2 sent mid-run that both ranks checkpoint at one step and
the requeued job resumes. Without a cluster: which GPU a task takes, a job given GPUs that sees none, the
profile keys of a multi-task job."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from waiting import wait_until

from dynamics.config import ConfigError, apply_overrides, preset
from dynamics.launch import launch, load_profile, plan, slurm_parameters, squeue_states
from dynamics.launch.job import task_device
from dynamics.launch.profile import wants_gpus
from dynamics.results import (
    CONFIG_FILE,
    JOB_FILE,
    METRICS_FILE,
    checkpoint_path,
    last_jsonl_row,
    read_json,
    read_jsonl,
    read_status,
)
from experiments.registry import Finding, Metric, RunSpec, Study, register

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "slurm" / "local-ddp.toml"
SMOKE = ["train.log_every=1", "train.threads=1", "eval.every_epochs=1", "eval.num_samples=128"]  # 30 steps
SIGNAL_AT = 3  # USR2 once the run is past this step
GUARD_S = 600  # for a hung cluster only: on a loaded machine jobs may wait long
STALE = {"MASTER_ADDR": "10.255.255.1", "MASTER_PORT": "1", "RANK": "5", "WORLD_SIZE": "9", "LOCAL_RANK": "3"}
CLOCK = ("time", "steps_per_s", "start_step")  # the metrics columns that differ between two identical runs


def smoke_cfg():
    return apply_overrides(preset("smoke-dtd-lu"), SMOKE)


def task_pids(job: str) -> list[int]:
    """The pids of the job's tasks (a job step, not the batch script), by global rank."""
    out = subprocess.run(["scontrol", "listpids", job], capture_output=True, text=True).stdout
    rows = [line.split() for line in out.splitlines()[1:]]
    return [int(r[0]) for r in sorted((r for r in rows if len(r) == 5 and r[2].isdigit() and r[4].isdigit()),
                                      key=lambda r: int(r[4]))]


def usr2_pending(pid: int) -> bool:
    text = Path(f"/proc/{pid}/status").read_text()
    masks = re.findall(r"^(?:SigPnd|ShdPnd):\s*([0-9a-f]+)$", text, re.M)
    return any(int(m, 16) & (1 << (signal.SIGUSR2 - 1)) for m in masks)


def last_step(run_dir: Path) -> int:
    return int((last_jsonl_row(run_dir / METRICS_FILE) or {}).get("step", 0))


def without_clock(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in CLOCK} for r in rows]


def torchrun(run_dir: Path) -> subprocess.Popen:
    cmd = [str(REPO / ".venv/bin/torchrun"), "--standalone", "--nproc-per-node=2", str(REPO / ".venv/bin/dynamics"),
           "train", "--preset", "smoke-dtd-lu", "--out", str(run_dir), "--device", "cpu", "--quiet", *SMOKE]
    env = {k: v for k, v in os.environ.items() if k not in STALE}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**env, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def preempted(slurm_cluster, tmp_path_factory):
    """A two-task SLURM job submitted from a shell that holds another job's rendezvous variables (sbatch passes
    them on), stopped mid-run by USR2 and requeued; meanwhile the same run under torchrun. The job's tasks are
    held (SIGSTOP) from a step >= SIGNAL_AT until the USR2 is pending in both, so the signal lands mid-run
    however loaded the machine is."""
    root = tmp_path_factory.mktemp("slurm-ddp")
    study = register(Study("slurm-ddp", "q", Metric("m"), Finding("c", "h", "trend", "x"),
                           lambda scale: [RunSpec("dtd", smoke_cfg())], module=__name__))
    with pytest.MonkeyPatch.context() as mp:
        for key, value in STALE.items():
            mp.setenv(key, value)
        final = launch([study], "smoke", executor="slurm", root=root, seeds=1, profile=PROFILE, progress=False)
    assert len(final) == 1, final
    run_dir = plan([study], "smoke", root, seeds=1)[0].run_dir
    job = str(read_json(run_dir / JOB_FILE)["job_id"])
    reference = root / "torchrun"
    proc = torchrun(reference)

    pids = wait_until(lambda: len(task_pids(job)) == 2 and task_pids(job), GUARD_S, f"job {job}'s two tasks", poll=0.02)
    wait_until(lambda: last_step(run_dir) >= SIGNAL_AT, GUARD_S, f"job {job} to pass step {SIGNAL_AT}", poll=0.02)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    held_at = last_step(run_dir)
    subprocess.run(["scancel", "-s", "USR2", job], check=True)
    wait_until(lambda: all(usr2_pending(p) for p in pids), GUARD_S, "the USR2 to reach both tasks", poll=0.02)
    for pid in pids:
        os.kill(pid, signal.SIGCONT)

    log, _ = proc.communicate(timeout=GUARD_S)
    assert proc.returncode == 0, log
    ended = ("done", "failed", "diverged")  # written by the requeued job
    wait_until(lambda: read_status(run_dir).get("state") in ended, GUARD_S, f"job {job}'s run to end", poll=0.5)
    wait_until(lambda: job not in (squeue_states([job]) or {}), GUARD_S, f"job {job} to leave the queue", poll=0.5)
    logs = {rank: (root / "smoke" / study.name / ".submitit" / job / f"{job}_{rank}_log.out").read_text()
            for rank in (0, 1)}
    return {"run_dir": run_dir, "reference": reference, "held_at": held_at, "logs": logs, "job": job}


def test_a_two_task_job_stopped_by_usr2_resumes_bit_identical_to_torchrun(preempted):
    run_dir, reference, logs = preempted["run_dir"], preempted["reference"], preempted["logs"]
    status = read_status(run_dir)
    assert status["state"] == "done" and status["step"] == 30, status
    # every rank logs its place, and where it stopped: both at one step S, the step the requeued job resumed
    stops = {rank: re.findall(r"rank \d of 2: interrupted at step (\d+)", text) for rank, text in logs.items()}
    assert len(stops[0]) == len(stops[1]) == 1 and stops[0] == stops[1], (stops, logs)
    stopped = int(stops[0][0])
    rows = read_jsonl(run_dir / METRICS_FILE)
    starts = list(dict.fromkeys(r["start_step"] for r in rows))
    assert starts == [0, stopped] and preempted["held_at"] <= stopped < 30, (starts, preempted["held_at"])
    for rank, text in logs.items():
        assert text.count(f"rank {rank} of 2 (local rank {rank} on ") == 2, text  # the job ran twice
        assert "gloo on cpu, collective time-out 120 s" in text and f"rank {rank} of 2: done at step 30" in text

    ours, theirs = (torch.load(checkpoint_path(p), weights_only=False) for p in (run_dir, reference))
    assert ours["step"] == theirs["step"] == 30 and ours["world_size"] == theirs["world_size"] == 2
    assert ours["v_time"] == theirs["v_time"]  # DTD's stage
    for part in ("model", "ema"):
        assert ours[part].keys() == theirs[part].keys()
        assert all(torch.equal(ours[part][k], theirs[part][k]) for k in ours[part]), part
    assert [r["step"] for r in rows] == list(range(1, 31))  # one writer: no row twice
    assert without_clock(rows) == without_clock(read_jsonl(reference / METRICS_FILE))
    a, b = read_json(run_dir / CONFIG_FILE), read_json(reference / CONFIG_FILE)
    assert {**a, "name": ""} == {**b, "name": ""}


@pytest.mark.parametrize(("cuda", "count", "local_rank", "expected"), [
    (True, 4, 1, "cuda:1"),   # every task sees the node's GPUs: the local_rank-th
    (True, 1, 3, "cuda:0"),   # SLURM bound one GPU to the task (--gpus-per-task, --gpu-bind): that one
    (None, 2, 1, "cuda:1"),
    (None, 0, 1, "cpu"),      # not given GPUs and none visible: gloo on the CPU
    (False, 4, 1, "cpu"),
])
def test_each_task_takes_its_own_gpu(monkeypatch, cuda, count, local_rank, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    assert task_device(cuda, local_rank, rank=local_rank) == torch.device(expected)


@pytest.mark.parametrize(("count", "local_rank"), [(0, 0), (2, 3)])
def test_a_task_given_gpus_that_sees_none_of_its_own_fails_in_one_line(monkeypatch, count, local_rank):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    with pytest.raises(RuntimeError, match=f"rank 7: CUDA asked for but this process sees {count} GPU") as info:
        task_device(True, local_rank, rank=7)
    assert "not falling back to the CPU" in str(info.value) and "\n" not in str(info.value)


def test_a_two_task_job_given_gpus_without_one_fails_and_records_why(tmp_path, monkeypatch):
    """Both tasks of a job that asked for GPUs and sees none fail before training, the run "failed" with why."""
    import submitit

    from dynamics.launch import RunJob

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the same on a machine with GPUs
    executor = submitit.LocalExecutor(folder=tmp_path / ".submitit")
    executor.update_parameters(timeout_min=5, tasks_per_node=2, gpus_per_node=0)
    job = executor.submit(RunJob(1, cuda=True), smoke_cfg().to_dict(), str(tmp_path / "run"), str(tmp_path))
    with pytest.raises(Exception, match="CUDA asked for but this process sees 0 GPU"):
        job.results()
    status = read_status(tmp_path / "run")
    assert status["state"] == "failed" and "not falling back to the CPU" in status["error"], status
    assert not (tmp_path / "run" / METRICS_FILE).exists()


def test_multi_task_profile_keys(tmp_path):
    profile = load_profile(PROFILE)
    sbatch, _ = slurm_parameters(profile)
    assert sbatch["ntasks_per_node"] == 2 and "--kill-on-bad-exit=1" in sbatch["srun_args"]
    assert profile["dist_timeout_s"] == 120 and not wants_gpus(profile)
    assert "srun_args" not in slurm_parameters({"gpus_per_node": 1})[0]  # one task: nothing to end
    assert slurm_parameters({"gpus_per_node": 8})[0]["ntasks_per_node"] == 8  # one rank per GPU by default
    assert wants_gpus({"gpus_per_task": 1}) and wants_gpus({"extra_sbatch": {"gres": "gpu:4"}})
    bad = tmp_path / "bad.toml"
    bad.write_text('[slurm]\ndist_timeout_s = "ten"\n')
    with pytest.raises(ConfigError, match="dist_timeout_s = 'ten'; give a number of seconds > 0"):
        load_profile(bad)
