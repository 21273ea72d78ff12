"""On a real single-node SLURM (the `slurm_cluster` fixture, tests/conftest.py): grids as job arrays, no double
submission, preemption / time-out / requeue / scancel / kill -9 ending bit-identical to an uninterrupted run,
failure at start recorded and kept, divergence recorded while the study goes on.

Everything is submitted at once by one module fixture, so the scenarios run concurrently on the one node;
the tests then inject the faults and check the outcomes."""

from __future__ import annotations

import io
import math
import os
import signal
import subprocess
import time
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
from waiting import wait_until

from dynamics.cli import main as cli_main
from dynamics.launch import absolute_init, launch, load_profile, plan, squeue_states
from dynamics.launch.job import slurm_duration_s
from dynamics.results import JOB_FILE, METRICS_FILE, checkpoint_path, last_jsonl_row, read_json, read_jsonl, read_status
from dynamics.train import train
from experiments.registry import Finding, Metric, RunSpec, Study, base_config, get_study, joint, register

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "slurm" / "local.toml"
SIGNAL_DELAY_S = load_profile(PROFILE)["signal_delay_s"]  # USR2 this long before the time limit
SLURM_TICK_S = 30  # slurmctld checks time limits, and sends that USR2, every 30 s

FAULTS = ("usr2", "timeout", "requeue", "scancel", "kill9")
FAULT_STEPS = 5000  # long enough that SLURM's time-limit signal (on a ~30 s tick) lands while the run trains
CKPT_EVERY = 200
FAULT_AT = 250  # inject each fault once the run is past its first checkpoint


def assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = (torch.load(checkpoint_path(p), weights_only=False) for p in (a, b))
    assert sa["step"] == sb["step"]
    for part in ("model", "ema"):
        assert sa[part].keys() == sb[part].keys()
        assert all(torch.equal(sa[part][k], sb[part][k]) for k in sa[part]), part
    for pid, state in sa["optimizer"]["state"].items():
        assert all(torch.equal(v, sb["optimizer"]["state"][pid][k]) for k, v in state.items()), ("optimizer", pid)


def _fault_grid(scale: str) -> list[RunSpec]:
    """Five runs with the same training maths (only the name differs): one uninterrupted reference fits all."""
    specs = []
    for fault in FAULTS:
        cfg = base_config(scale)
        cfg.phases = [joint(FAULT_STEPS)]
        cfg.train.ckpt_every = CKPT_EVERY
        cfg.train.log_every = 10
        specs.append(RunSpec(fault, cfg))
    return specs


def _start_fail_grid(corrupt: Path):
    def grid(scale: str) -> list[RunSpec]:
        cfg = base_config(scale)
        cfg.phases = [joint(20)]
        cfg.data.name, cfg.data.path = "imagenet_latents", str(corrupt)
        cfg.model.name, cfg.eval.metrics = "dit", ["fid"]
        return [RunSpec("corrupt-index", cfg)]
    return grid


def _diverge_grid(scale: str) -> list[RunSpec]:
    ok, nan = base_config(scale), base_config(scale)
    ok.phases = nan.phases = [joint(40)]
    nan.train.lr = 1e30  # the first Adam steps throw the weights to ~1e30: a non-finite loss within a few steps
    return [RunSpec("ok", ok), RunSpec("nan", nan)]


def _study(name: str, grid) -> Study:
    return register(Study(name, "q", Metric("m"), Finding("c", "h", "trend", "x"), grid, module=__name__))


def queued(ids: list[str]) -> dict[str, str]:
    return squeue_states(ids) or {}


def job_id(run_dir: Path) -> str:
    return str(read_json(run_dir / JOB_FILE)["job_id"])


def step_of(run_dir: Path) -> int:
    row = last_jsonl_row(run_dir / METRICS_FILE) or {}
    return max(int(row.get("step", 0)), int(read_status(run_dir).get("step", 0)))


def process_starts(run_dir: Path) -> list[int]:
    """The step each training process started from, in the order they ran (metrics.jsonl's start_step)."""
    starts = []
    for row in read_jsonl(run_dir / METRICS_FILE):
        start = row["start_step"]
        if not starts or start != starts[-1]:
            starts.append(start)
    return starts


def assert_one_writer(run_dir: Path, total: int, log_every: int) -> None:
    steps = [r["step"] for r in read_jsonl(run_dir / METRICS_FILE)]
    assert steps == list(range(log_every, total + 1, log_every)), "metrics rows duplicated, missing or out of order"


def submitit_log(root: Path, job: str) -> str:
    return "".join(p.read_text(errors="replace") for p in root.rglob(f"{job}_*_log.err"))


@pytest.fixture(scope="module")
def submitted(slurm_cluster, tmp_path_factory):
    """Every scenario submitted at once; then the same grids again while their tasks are queued."""
    root = tmp_path_factory.mktemp("slurm-store")
    corrupt = tmp_path_factory.mktemp("latents")
    (corrupt / "index.json").write_text('{"num_samples": 8, "shards": [')  # exists, so pre-flight passes
    studies = {"grid": get_study("o1-v-first"), "faults": _study("slurm-faults", _fault_grid),
               "fail": _study("slurm-start-fail", _start_fail_grid(corrupt)),
               "diverge": _study("slurm-diverge", _diverge_grid)}
    everything = list(studies.values())
    final = launch(everything, "smoke", executor="slurm", root=root, seeds=1, profile=slurm_cluster, progress=False)
    ids = sorted({v.split()[1] for v in final.values()})
    again = launch(everything, "smoke", executor="slurm", root=root, seeds=1, profile=slurm_cluster,
                   progress=False)
    return {"root": root, "studies": studies, "final": final, "ids": ids, "again": again,
            "runs": {r.uid: r for r in plan(everything, "smoke", root, seeds=1)}}


def _runs(sub: dict, study: str) -> dict:
    name = sub["studies"][study].name
    return {r.spec.key.split("/")[0]: r for r in sub["runs"].values() if r.study == name}


def _wait_out_of_queue(runs, timeout: float) -> None:
    ids = [job_id(r.run_dir) for r in runs]
    wait_until(lambda: not set(queued(ids)) & set(ids), timeout, f"jobs {ids} to leave the queue", poll=1.0)


def test_no_second_submission_while_queued(submitted):
    """Submitting the same grids while their tasks are queued submits nothing new (squeue -r sees each task)."""
    assert len(submitted["final"]) == 6 + 5 + 1 + 2
    assert submitted["again"] == {}
    for uid, verdict in submitted["final"].items():
        assert job_id(submitted["runs"][uid].run_dir) == verdict.split()[1]


class FaultWatch:
    """What the fault test reads while it waits, on every poll: the step each signalled run checkpointed at, the
    states `plan` showed for it afterwards, and, once submitit has told the time-out from a preemption, the
    time-out job's hour given back (before that, a restored limit would read as a preemption; after its requeue,
    a short limit would time the resumed job out again)."""

    def __init__(self, root: Path, runs: dict, jobs: dict[str, str], study: Study):
        self.root, self.runs, self.jobs, self.study = root, runs, jobs, study
        self.interrupted: dict[str, int] = {}
        self.seen: dict[str, set] = {"usr2": set(), "timeout": set()}
        self.limit_lowered = self.restored = False
        self._next = 0.0

    def poll(self) -> None:
        if time.time() < self._next:
            return
        self._next = time.time() + 0.2
        states = {r.spec.key.split("/")[0]: r.state for r in plan([self.study], "smoke", self.root, seeds=1)}
        for fault in self.seen:
            status = read_status(self.runs[fault].run_dir)
            if fault not in self.interrupted and status.get("state") == "interrupted":
                self.interrupted[fault] = int(status["step"])
            if fault in self.interrupted:
                self.seen[fault].add(states[fault])
        job = self.jobs["timeout"]
        if self.limit_lowered and not self.restored and "Caught signal SIGUSR2" in submitit_log(self.root, job):
            update = ["scontrol", "update", f"JobId={job}", "TimeLimit=60"]
            self.restored = subprocess.run(update, capture_output=True).returncode == 0

    def resumed(self) -> bool:
        self.poll()

        def back(f: str) -> bool:  # requeued, or already training past the step it stopped at
            return "requeued" in self.seen[f] or step_of(self.runs[f].run_dir) > self.interrupted[f] + 50

        return self.restored and all(f in self.interrupted and back(f) for f in self.seen)


def time_used_s(job: str) -> int:
    """Seconds the job has run, as SLURM counts it (squeue %M)."""
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%M"], capture_output=True, text=True, check=True)
    used = slurm_duration_s(out.stdout)
    assert used is not None, f"squeue -j {job}: {out.stdout!r}"
    return used


def limit_near(job: str) -> int:
    """A time limit (whole minutes, as SLURM keeps it) that leaves the job signal_delay_s +- 30 s: SLURM's next
    limit check (every 30 s) sends USR2, at least signal_delay_s - 60 s before the limit kills the job, whatever
    the job's age. A fixed 1-minute limit would kill a job older than a minute at the very check that signals it."""
    return math.ceil((time_used_s(job) + SIGNAL_DELAY_S - SLURM_TICK_S) / 60)


def test_preemption_timeout_requeue_cancel_kill_end_bit_identical(submitted, tmp_path):
    root, runs = submitted["root"], _runs(submitted, "faults")
    faults = submitted["studies"]["faults"]
    jobs = {f: job_id(runs[f].run_dir) for f in FAULTS}
    watch = FaultWatch(root, runs, jobs, faults)
    at: dict[str, int] = {}
    todo = list(FAULTS)
    deadline = time.time() + 900  # a deadline for a hung cluster only: on a loaded machine jobs may wait long
    while todo and time.time() < deadline:
        for fault in list(todo):
            run_dir = runs[fault].run_dir
            step = step_of(run_dir)
            # the time-out early (its signal comes at SLURM's next limit check, up to 30 s later), the others once
            # the run is past its first periodic checkpoint, which the killed ones resume from
            if step < (1 if fault == "timeout" else FAULT_AT) or read_status(run_dir).get("state") != "running":
                continue
            at[fault] = step
            if fault == "usr2":  # preemption, as SLURM signals it
                subprocess.run(["scancel", "-s", "USR2", jobs[fault]], check=True)
            elif fault == "timeout":  # the time limit is now near: SLURM sends USR2 signal_delay_s before it
                limit = limit_near(jobs[fault])
                subprocess.run(["scontrol", "update", f"JobId={jobs[fault]}", f"TimeLimit={limit}"], check=True)
                watch.limit_lowered = True
            elif fault == "requeue":
                subprocess.run(["scontrol", "requeue", jobs[fault]], check=True)
            elif fault == "scancel":
                subprocess.run(["scancel", jobs[fault]], check=True)
            else:
                os.kill(int(read_status(run_dir)["pid"]), signal.SIGKILL)
            todo.remove(fault)
        watch.poll()
        time.sleep(0.05)
    assert not todo, f"faults not injected (runs never got past step {FAULT_AT}): {todo}"

    # cancelled and killed: out of the queue, to resume from their last checkpoint once submitted again (the
    # others are in the queue, running or requeued, so a launch submits these two only)
    ids = [jobs["scancel"], jobs["kill9"]]
    wait_until(lambda: watch.poll() or not set(queued(ids)) & set(ids), 600, f"jobs {ids} to leave the queue")
    actions = {r.spec.key.split("/")[0]: r.action for r in plan([faults], "smoke", root, seeds=1)}
    assert actions["scancel"] == actions["kill9"] == "resume", actions
    final = launch([faults], "smoke", executor="slurm", root=root, seeds=1, profile=PROFILE, progress=False)
    queue = subprocess.run(["squeue", "-a", "-r", "-o", "%i %A %T %j"], capture_output=True, text=True).stdout
    assert sorted(k.split(":")[1].split("/")[0] for k in final) == ["kill9", "scancel"], (final, jobs, queue)

    wait_until(watch.resumed, 900, "the USR2 and time-out checkpoints and their requeue", poll=0.05)
    reference = tmp_path / "uninterrupted"
    train(absolute_init(runs["usr2"].config.to_dict(), root), reference)  # meanwhile, the uninterrupted run
    _wait_out_of_queue(runs.values(), 900)

    interrupted, seen = watch.interrupted, watch.seen
    for fault in FAULTS:
        run_dir = runs[fault].run_dir
        assert read_status(run_dir)["state"] == "done", (fault, read_status(run_dir))
        assert_one_writer(run_dir, FAULT_STEPS, 10)
        assert_same_weights(run_dir, reference)
        starts = process_starts(run_dir)
        assert len(starts) == 2 and starts[0] == 0, (fault, starts)
        if fault in ("usr2", "timeout"):  # checkpointed on the signal: resumed at the step it stopped
            assert starts[1] == interrupted[fault] >= at[fault], (fault, starts, interrupted, at)
        else:  # resumed from a periodic checkpoint written at or after the fault (the process keeps training
            # until SLURM's KillWait ends, so how far past the fault it got depends on the machine's speed)
            assert starts[1] % CKPT_EVERY == 0 and at[fault] - CKPT_EVERY <= starts[1] < FAULT_STEPS, (fault, starts)
    assert "requeued" in seen["usr2"] | seen["timeout"], seen  # waiting in the queue: not shown as running
    assert "this job is preempted" in submitit_log(root, jobs["usr2"])  # preemption does not use up time-outs
    assert "this job is timed-out" in submitit_log(root, jobs["timeout"])


def test_grid_equals_the_local_executor(submitted, o1_local_store):
    runs = _runs(submitted, "grid")
    _wait_out_of_queue(runs.values(), 600)
    study = submitted["studies"]["grid"]
    local_root, local = o1_local_store  # the same grid through the local executor (tests/conftest.py)
    assert set(local.values()) == {"done"}
    twins = {r.spec.key: r for r in plan([study], "smoke", local_root, seeds=1)}
    for run in runs.values():
        assert read_status(run.run_dir)["state"] == "done"
        assert_same_weights(run.run_dir, twins[run.spec.key].run_dir)
        assert read_jsonl(run.run_dir / METRICS_FILE) and \
            [r["loss"] for r in read_jsonl(run.run_dir / METRICS_FILE)] == \
            [r["loss"] for r in read_jsonl(twins[run.spec.key].run_dir / METRICS_FILE)]
    arrays = {job_id(r.run_dir).split("_")[0] for r in runs.values()}
    assert len(arrays) == 2  # one job array per dependency wave


def test_failure_at_start_is_shown_and_kept(submitted):
    run = _runs(submitted, "fail")["corrupt-index"]
    _wait_out_of_queue([run], 120)
    status = read_status(run.run_dir)
    assert status["state"] == "failed" and "index.json" in status["error"], status
    study, root = submitted["studies"]["fail"], submitted["root"]
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli_main(["status", study.name, "--scale", "smoke", "--seeds", "1", "--results", str(root)]) == 0
    assert "failed" in out.getvalue() and "index.json" in out.getvalue()
    before = job_id(run.run_dir)
    out = io.StringIO()
    with redirect_stdout(out):
        assert launch([study], "smoke", executor="slurm", root=root, seeds=1,
                      profile=PROFILE, progress=False) == {}
    assert "keep: slurm-start-fail/corrupt-index" in out.getvalue() and "index.json" in out.getvalue()
    assert job_id(run.run_dir) == before  # not resubmitted
    assert plan([study], "smoke", root, seeds=1, rerun_failed=True)[0].action == "rerun"


def test_divergence_is_recorded_and_the_study_goes_on(submitted):
    runs = _runs(submitted, "diverge")
    _wait_out_of_queue(runs.values(), 120)
    nan, ok = read_status(runs["nan"].run_dir), read_status(runs["ok"].run_dir)
    assert ok["state"] == "done"
    assert nan["state"] == "diverged" and 0 <= nan["diverged_step"] < 40
    out = io.StringIO()
    with redirect_stdout(out):
        cli_main(["analyze", submitted["studies"]["diverge"].name, "--scale", "smoke", "--results",
                  str(submitted["root"])])
    assert f"diverged: slurm-diverge/nan/s0 (non-finite loss at step {nan['step']})" in out.getvalue()
