"""Launching grids: local subprocesses, kill and resume, dependencies, SLURM parameters, the results store."""

import importlib
import io
import json
import os
import signal
import stat
import threading
import time
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
from submitit.slurm.slurm import _make_sbatch_string

from dynamics.cli import main as cli_main
from dynamics.config import ConfigError, InitConfig, RunConfig
from dynamics.launch import absolute_init, launch, load_profile, plan, readiness, slurm_parameters, slurm_time_left_s
from dynamics.results import (
    JOB_FILE,
    checkpoint_path,
    load_results,
    read_jsonl,
    read_status,
    write_status,
)
from dynamics.train import train
from experiments.registry import Finding, Metric, RunSpec, Study, base_config, get_study, joint, register

REPO = Path(__file__).resolve().parents[1]


def assert_same_weights(a: Path, b: Path) -> None:
    sa = torch.load(checkpoint_path(a), weights_only=False)
    sb = torch.load(checkpoint_path(b), weights_only=False)
    assert sa["step"] == sb["step"]
    for part in ("model", "ema"):
        assert sa[part].keys() == sb[part].keys()
        for k in sa[part]:
            assert torch.equal(sa[part][k], sb[part][k]), (part, k)
    for pid, state in sa["optimizer"]["state"].items():
        for k, v in state.items():
            assert torch.equal(v, sb["optimizer"]["state"][pid][k]), ("optimizer", pid, k)


@pytest.fixture(scope="module")
def o1_local(o1_local_store):
    """o1-v-first at smoke scale through the local executor (subprocesses, 2 at once): tests/conftest.py."""
    return o1_local_store


def test_local_grid_runs_and_rerun_trains_nothing(o1_local):
    root, final = o1_local
    assert len(final) == 6 and set(final.values()) == {"done"}
    study = get_study("o1-v-first")
    watched = list(root.rglob("metrics.jsonl")) + list(root.rglob("last.pt")) + list(root.rglob("status.json"))
    assert len(watched) == 18
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in watched}
    assert all(r.action == "skip" for r in plan([study], "smoke", root))
    assert launch([study], "smoke", executor="local", root=root, progress=False) == {}
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in watched} == before
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli_main(["status", "o1-v-first", "--scale", "smoke", "--results", str(root)]) == 0
    assert "done: 6" in out.getvalue() and "65/65 (100%)" in out.getvalue()


def test_fine_tunes_start_after_their_parent_checkpoint(o1_local):
    root, _ = o1_local
    runs = {r.spec.key: r for r in plan([get_study("o1-v-first")], "smoke", root)}
    parent = runs["v-pretrain/s0"]
    for e_v in (5, 10, 15, 20):
        child = runs[f"E_v={e_v}/s0"]
        ckpt = checkpoint_path(parent.run_dir, e_v)
        started = (child.run_dir / "config.json").stat().st_mtime_ns  # written when the trainer starts
        assert started >= ckpt.stat().st_mtime_ns
        first = read_jsonl(child.run_dir / "metrics.jsonl")[0]
        assert first["step"] == e_v + 5  # continued the parent's step counter (1 step per epoch, log every 5)
        assert json.loads((child.run_dir / "config.json").read_text())["init"]["run_dir"] == str(parent.run_dir)


def test_load_results(o1_local):
    root, _ = o1_local
    runs = load_results(root, study="o1-v-first", scale="smoke")
    assert len(runs) == 6 and set(runs.state) == {"done"}
    row = runs.set_index("key").loc["E_v=10/s0"]
    assert row.E_v == 10 and row.seed == 0 and row["train.lr_schedule"] == "constant" and row.progress == 1.0
    assert row["objective.beta"] == "none" and row["train.keep_epochs"] == ()
    evals = load_results(root, kind="evals")
    assert {"sw2", "energy"} <= set(evals.metric) and {"u", "v"} == set(evals.sampler)
    assert {"E_v", "objective.beta", "run_step", "value", "nfe"} <= set(evals.columns)
    assert load_results(root, study="nothing").empty


def _long_grid(scale: str) -> list[RunSpec]:
    cfg = base_config(scale)
    cfg.phases = [joint(800)]
    return [RunSpec("long", cfg)]


def wait_for(run_dir: Path, condition, timeout: float = 60.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = read_status(run_dir)
        if condition(status):
            return status
        time.sleep(0.005)
    raise AssertionError(f"timed out; status {read_status(run_dir)}")


def test_preempted_and_killed_run_resumes_to_the_same_parameters(tmp_path):
    study = register(Study("test-kill", "q", Metric("m"), Finding("c", "h", "trend", "x"), _long_grid,
                           module=__name__))
    root = tmp_path / "store"
    run = plan([study], "smoke", root)[0]
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(
        launch([study], "smoke", executor="local", root=root, jobs=1, progress=False)))
    worker.start()
    first = wait_for(run.run_dir, lambda s: s.get("state") == "running" and s.get("step", 0) >= 40)
    # preemption: submitit catches USR2, calls RunJob.checkpoint() and requeues the job, which resumes
    os.kill(first["pid"], signal.SIGUSR2)
    second = wait_for(run.run_dir, lambda s: s.get("pid") not in (None, first["pid"]) and s.get("step", 0) >= 300)
    os.kill(second["pid"], signal.SIGKILL)  # a hard kill of the real training subprocess
    worker.join(60)
    assert result[run.uid] == "interrupted"
    killed_at = torch.load(checkpoint_path(run.run_dir), weights_only=False)["step"]
    assert 300 <= killed_at < 800
    assert plan([study], "smoke", root)[0].action == "resume"

    assert launch([study], "smoke", executor="local", root=root, progress=False)[run.uid] == "done"
    rows = read_jsonl(run.run_dir / "metrics.jsonl")
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)) and steps[-1] == 800
    starts = {r["start_step"] for r in rows}  # where each process started
    assert len(starts) == 3 and 0 in starts and killed_at in starts  # first job, its requeue, the resubmission

    train(absolute_init(run.config.to_dict(), root), tmp_path / "uninterrupted")
    assert_same_weights(run.run_dir, tmp_path / "uninterrupted")


def test_debug_executor_and_exact_prefix_inheritance(tmp_path):
    """A fine-tune from the parent's epoch-5 checkpoint equals one run of the same phases from scratch."""
    study = get_study("o1-v-first")
    final = launch([study], "smoke", executor="debug", root=tmp_path, progress=False)
    assert set(final.values()) == {"done"}
    child = next(r for r in plan([study], "smoke", tmp_path) if r.spec.key == "E_v=5/s0")
    scratch = RunConfig.from_dict(child.config.to_dict())
    scratch.init = InitConfig()
    train(scratch, tmp_path / "scratch")
    assert_same_weights(child.run_dir, tmp_path / "scratch")


def test_children_wait_for_the_checkpoint_they_need(tmp_path):
    study = get_study("o1-v-first")
    runs = plan([study], "smoke", tmp_path)
    by_uid = {r.uid: r for r in runs}
    parent, e5, e10 = (by_uid[f"o1-v-first:{k}/s0"] for k in ("v-pretrain", "E_v=5", "E_v=10"))
    assert readiness(e5, by_uid, {parent.uid}).state == "wait"
    ckpt = checkpoint_path(parent.run_dir, 5)
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")
    assert readiness(e5, by_uid, {parent.uid}).state == "ready"
    assert readiness(e10, by_uid, {parent.uid}).state == "wait"
    assert readiness(e10, by_uid, set()).state == "blocked"  # the parent ended without epoch 10
    assert readiness(e10, by_uid, {parent.uid}).waits_on == (parent.uid,)
    assert readiness(e10, by_uid, set()).blocked_by == parent.uid
    own = checkpoint_path(e10.run_dir)  # a child with its own checkpoint resumes from it: no parent needed
    own.parent.mkdir(parents=True)
    own.write_bytes(b"")
    assert readiness(e10, by_uid, set()).state == "ready"
    own.unlink()

    write_status(parent.run_dir, "failed", step=7, total_steps=20, error="boom")
    actions = {r.spec.key: r.action for r in plan([study], "smoke", tmp_path)}
    assert actions["v-pretrain/s0"] == "keep" and actions["E_v=10/s0"] == "blocked"
    assert actions["E_v=5/s0"] == "run" and actions["E_v=0/s0"] == "run"
    actions = {r.spec.key: r.action for r in plan([study], "smoke", tmp_path, rerun_failed=True)}
    assert actions["v-pretrain/s0"] == "rerun" and actions["E_v=10/s0"] == "run"
    write_status(parent.run_dir, "diverged", step=7, total_steps=20)
    assert plan([study], "smoke", tmp_path, rerun_failed=True)[0].action == "restart"


PROFILE = """
[slurm]
partition = "gpu"
gpus_per_node = 8
cpus_per_task = 10
mem = "480G"
time_min = 1440
account = "proj42"
qos = "high"
constraint = "h100"
setup = ["module load cuda/12.4"]
extra_sbatch = { "mail-type" = "FAIL" }
max_num_timeout = 10

[scale.smoke]
gpus_per_node = 2
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """sbatch/srun/squeue stand-ins: sbatch keeps each script it is given and answers with a job id."""
    bindir, scripts = tmp_path / "bin", tmp_path / "sbatch"
    bindir.mkdir()
    scripts.mkdir()
    tools = {
        "sbatch": (f'n=$(ls {scripts} | wc -l)\ncp "$1" {scripts}/$((n + 1)).sh\n'
                   'echo "Submitted batch job $((1001 + n))"\n'),
        "srun": "exit 0\n",
        "squeue": f"cat {tmp_path}/queue 2>/dev/null\nexit 0\n",
    }
    for name, body in tools.items():
        path = bindir / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    (tmp_path / "cluster.toml").write_text(PROFILE)
    return tmp_path


@pytest.mark.parametrize("printed, left", [
    ("1:00|1:25", -25),  # what a real squeue prints once a lowered limit (scontrol) is behind the job; %L: INVALID
    ("1-02:00:00|59:59", 26 * 3600 - 3599),
    ("5:00|0:07", 293),
    ("UNLIMITED|12:00", None),
    ("", None),  # the job has left the queue
])
def test_slurm_time_left_is_limit_minus_time_used(fake_slurm, printed, left):
    """A USR2 is read as a time-out from the time left; past the limit it must be negative, not unknown (a
    time-out read as a preemption does not count against max_num_timeout)."""
    (fake_slurm / "queue").write_text(printed + "\n")
    assert slurm_time_left_s("77") == left


def test_slurm_arrays_dependencies_and_profile(fake_slurm):
    profile_path = fake_slurm / "cluster.toml"
    profile = load_profile(profile_path, "smoke")
    sbatch, executor_kwargs = slurm_parameters(profile)
    assert executor_kwargs == {"max_num_timeout": 10}
    assert sbatch["gpus_per_node"] == 2 and sbatch["ntasks_per_node"] == 2  # scale override, one rank per GPU
    expected = ["#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=2", "#SBATCH --ntasks-per-node=2",
                "#SBATCH --cpus-per-task=10", "#SBATCH --mem=480G", "#SBATCH --time=1440",
                "#SBATCH --account=proj42", "#SBATCH --qos=high", "#SBATCH --constraint=h100",
                "#SBATCH --mail-type=FAIL", "module load cuda/12.4"]
    reference = _make_sbatch_string(command="python -m x", folder=str(fake_slurm / "f"), **sbatch)
    assert all(line in reference.splitlines() for line in expected)

    root = fake_slurm / "store"
    study = get_study("o1-v-first")
    final = launch([study], "smoke", executor="slurm", root=root, profile=profile_path, progress=False)
    assert len(final) == 6
    scripts = sorted((fake_slurm / "sbatch").glob("*.sh"))
    assert len(scripts) == 2  # wave 0 (parent + E_v=0), wave 1 (the four fine-tunes)
    first, second = (s.read_text().splitlines() for s in scripts)
    assert all(line in first and line in second for line in expected)
    assert any(line.startswith("#SBATCH --array=0-1%") for line in first)
    assert any(line.startswith("#SBATCH --array=0-3%") for line in second)
    assert not any("--dependency" in line for line in first)
    runs = {r.spec.key: r for r in plan([study], "smoke", root)}
    parent_job = json.loads((runs["v-pretrain/s0"].run_dir / JOB_FILE).read_text())["job_id"]
    assert parent_job == "1001_0" and final["o1-v-first:v-pretrain/s0"] == "submitted 1001_0"
    assert f"#SBATCH --dependency=afterok:{parent_job}" in second
    assert "#SBATCH --kill-on-invalid-dep=yes" in second

    # queued jobs are not submitted twice; once they left the queue without running, they are resubmitted
    (fake_slurm / "queue").write_text("\n".join(f"1001_{i}" for i in range(2)) + "\n" +
                                      "\n".join(f"1002_{i}" for i in range(4)) + "\n")
    assert {r.action for r in plan([study], "smoke", root)} == {"busy"}
    assert launch([study], "smoke", executor="slurm", root=root, profile=profile_path, progress=False) == {}
    assert len(list((fake_slurm / "sbatch").glob("*.sh"))) == 2
    (fake_slurm / "queue").write_text("")
    assert {r.action for r in plan([study], "smoke", root)} == {"run"}


def test_profile_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[slurm]\npartition = "gpu"\ngpus = 8\n')
    with pytest.raises(ConfigError, match="unknown key 'gpus'"):
        load_profile(bad)
    with pytest.raises(ConfigError, match="no such file"):
        load_profile(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="needs --profile"):
        launch([get_study("main")], "b4", executor="slurm", root=tmp_path)


def test_dry_run_prints_gpu_hours_with_the_example_profile(tmp_path):
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli_main(["run", "main", "--scale", "b4", "--executor", "slurm", "--profile",
                         str(REPO / "slurm" / "example.toml"), "--dry-run", "--results", str(tmp_path)])
    text = out.getvalue()
    assert code == 0 and "GPU-hours" in text and "6 of 6 runs to train" in text
    assert "method=minsnr-lu/s0" in text and "--partition=" in text and "wave 0: main: array of 6" in text
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


def test_job_with_two_tasks_trains_with_torch_distributed(tmp_path):
    """Two tasks in one submitit job: torch.distributed from submitit's environment (gloo on CPU)."""
    import submitit

    from dynamics.launch import RunJob

    cfg = base_config("smoke")
    cfg.phases = [joint(20)]
    executor = submitit.LocalExecutor(folder=tmp_path / ".submitit")
    executor.update_parameters(timeout_min=5, tasks_per_node=2, gpus_per_node=0)
    job = executor.submit(RunJob(1), cfg.to_dict(), str(tmp_path / "run"), str(tmp_path))
    results = job.results()
    assert len(results) == 2 and results[0]["state"] == "done"
    assert read_status(tmp_path / "run")["state"] == "done"


def test_shared_runs_train_once_and_read_as_each_studys(tmp_path):
    """v-quality's arms are main's runs: planned together they train once. A study run alone trains its shared
    run in the owner's directory (with the owner's identity) and reads it through its own entry (keys, tags)."""
    from experiments.registry import shared

    studies = [get_study("main"), get_study("v-quality"), get_study("convergence"), get_study("k-schedule")]
    runs = plan(studies, "smoke", tmp_path, seeds=1)
    trained = [r for r in runs if r.action == "run"]
    assert len({r.run_dir for r in trained}) == len(trained) == 6 + 2  # main's 6, k-schedule's k = 0.5 and 2
    assert {r.uid for r in runs if r.action == "shared"} == {
        "v-quality:arm=vanilla/s0", "v-quality:arm=full/s0", "convergence:arm=vanilla/s0",
        "convergence:arm=full/s0", "k-schedule:k=1/s0"}

    def owner_grid(scale):
        cfg = base_config(scale)
        cfg.phases = [joint(3)]
        return [RunSpec("a", cfg, tags={"x": 1})]

    find = Finding("c", "h", "trend", "x")
    owner = register(Study("share-owner", "q", Metric("m"), find, owner_grid))
    user = register(Study("share-user", "q", Metric("m"), find,
                          lambda scale: [shared("share-owner", "a", "b", {"y": 2})]))
    final = launch([user], "smoke", executor="debug", root=tmp_path, seeds=1, progress=False)
    assert final == {"share-user:b/s0": "done"}
    mine = load_results(tmp_path, study="share-owner")
    assert list(mine["key"]) == ["a/s0"] and mine["x"].tolist() == [1] and list(mine["state"]) == ["done"]
    theirs = load_results(tmp_path, study="share-user", kind="evals")
    assert set(theirs["key"]) == {"b/s0"} and set(theirs["y"]) == {2} and set(theirs["state"]) == {"done"}
    assert theirs["hash"].iloc[0] == mine["hash"].iloc[0]
    again = {r.uid: r.action for r in plan([owner, user], "smoke", tmp_path, seeds=1)}
    assert again == {"share-owner:a/s0": "skip", "share-user:b/s0": "shared"}


def test_squeue_that_fails_is_asked_again_and_never_read_as_an_empty_queue(tmp_path, monkeypatch):
    """A busy controller answers "Socket timed out": read as "nothing queued", a second job would be submitted
    for a run that has one. squeue is asked again; one that never answers is an error, not an empty queue."""
    plan_mod = importlib.import_module("dynamics.launch.plan")  # the module (the package exports plan())
    calls = tmp_path / "calls"
    fake = tmp_path / "squeue"
    fake.write_text("#!/bin/sh\necho x >> " + str(calls) + "\nn=$(wc -l < " + str(calls) + ")\n"
                    "if [ \"$n\" -le \"$FAILS\" ]; then\n"
                    "  echo 'slurm_load_jobs error: Socket timed out' >&2; exit 1\nfi\n"
                    "echo '12_0 RUNNING'\necho '12_1 REQUEUED'\necho '12_2 COMPLETED'\necho '13_0 RUNNING'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(plan_mod.time, "sleep", lambda s: None)
    monkeypatch.setenv("FAILS", "2")
    assert plan_mod.squeue_states(["12_0", "12_1", "12_2"]) == {"12_0": "RUNNING", "12_1": "REQUEUED"}
    assert len(calls.read_text().splitlines()) == 3
    calls.unlink()
    monkeypatch.setenv("FAILS", "99")
    with pytest.raises(RuntimeError, match="squeue did not answer after 5 tries .*Socket timed out"):
        plan_mod.squeue_states(["12_0"])
