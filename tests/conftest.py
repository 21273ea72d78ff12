"""Shared fixtures and how the suite runs in parallel (`make test`: pytest-xdist, 2 workers, --dist loadgroup).

`slurm_cluster`: a real single-node SLURM with accounting, started once per test session by slurm/start.sh (which
installs the Debian packages if missing) and stopped at the end by slurm/stop.sh, unless it was already running
before the session. Skipped, with the reason, only when not root or when the packages cannot be installed; any
other failure to start is a test error.

`o1_local_store`: o1-v-first at smoke scale through the local executor, trained once per test run and read by
test_launch.py and test_slurm.py (whichever worker asks first trains it; the other waits for it).

`kill_after`: run a Trainer and stop it as a kill -9 would, right after a given step's checkpoint.

Parallel runs: the tests of one file run on one worker (they share module fixtures: a trained run, a cluster, a
results store), and so do the files that use the real SLURM (GROUP), except the files in SPREAD, whose tests are
independent; the slowest files start first."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STATE = Path(os.environ.get("DYNAMICS_SLURM_STATE", "/var/lib/dynamics-slurm"))

SLOW_FIRST = ("test_slurm.py", "test_slurm_distributed.py", "test_notebooks.py", "test_launch.py",
              "test_jvp_strategies.py", "test_digits.py", "test_train.py", "test_gpu_check.py",
              "test_layering.py")  # slowest first (pytest --durations)
SPREAD = ("test_jvp_strategies.py",)  # independent tests, several torch.compile ones: split over the workers
# the files on the real SLURM share one worker: `slurm_cluster` is started and stopped once, not twice at once
GROUP = {"test_slurm_distributed.py": "test_slurm.py"}
WORKER = os.environ.get("PYTEST_XDIST_WORKER")


def pytest_configure(config: pytest.Config) -> None:
    if WORKER:  # two workers on two cores: one torch thread each (and in the processes they start)
        import torch

        torch.set_num_threads(1)
        os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file keeps its own order
    for item in items:
        if WORKER and item.path.name not in SPREAD:
            item.add_marker(pytest.mark.xdist_group(GROUP.get(item.path.name, item.path.name)))


def pytest_collection_finish(session: pytest.Session) -> None:
    """The files' groups must reach xdist's scheduler: without them two workers would start SLURM at once.
    (pytest 9 stores node ids where pytest-xdist 3.8 cannot add the group, hence pytest < 9 in the dev extra.)"""
    if WORKER and session.config.getvalue("loadgroup"):
        lost = [i.nodeid for i in session.items if any(i.iter_markers("xdist_group")) and "@" not in i.nodeid]
        if lost:
            raise pytest.UsageError(f"pytest-xdist dropped the test groups (e.g. {lost[0]}): pytest "
                                    f"{pytest.__version__} with this pytest-xdist cannot run `--dist loadgroup`")


def shared_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> tuple:
    """(directory, what `build` returned, as JSON): built once per test run and shared by the xdist workers; the
    first to take the lock builds it (a failed build leaves no record: the next one builds it again). Readers
    must not change the directory."""
    base = tmp_path_factory.getbasetemp()
    base = base.parent if WORKER else base  # the workers' temporary directories share this parent
    target, record = base / name, base / f"{name}.json"
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.exists():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            record.write_text(json.dumps(build(target)))
    return target, json.loads(record.read_text())


@pytest.fixture(scope="session")
def o1_local_store(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(results root, what the launch returned): o1-v-first at smoke scale, local executor, 2 subprocesses."""
    from dynamics.launch import launch
    from experiments.registry import get_study

    return shared_once(tmp_path_factory, "o1-local", lambda root: launch(
        [get_study("o1-v-first")], "smoke", executor="local", root=root, jobs=2, progress=False))


def _running_already() -> bool:
    try:
        pid = int((STATE / "slurmctld.pid").read_text())
        os.kill(pid, 0)
        return True
    except (OSError, ValueError):
        return False


@pytest.fixture(scope="session")
def slurm_cluster() -> Path:
    """The profile (slurm/local.toml) of a running single-node SLURM."""
    if os.geteuid() != 0:
        pytest.skip("the real-SLURM tests need root: slurm/start.sh starts munged, mariadbd, slurmdbd, slurmctld, "
                    "slurmd (run `sudo slurm/start.sh` once, or run the tests as root)")
    before = _running_already()
    start = subprocess.run([str(REPO / "slurm" / "start.sh")], capture_output=True, text=True, timeout=900)
    if start.returncode != 0:
        reason = start.stderr.strip().splitlines()[-1] if start.stderr.strip() else f"exit {start.returncode}"
        if "apt-get install" in reason:
            pytest.skip(f"SLURM packages cannot be installed here: {reason}")
        pytest.fail(f"slurm/start.sh failed: {reason}")
    yield REPO / "slurm" / "local.toml"
    if not before:
        subprocess.run([str(REPO / "slurm" / "stop.sh")], capture_output=True, timeout=300)


class Killed(BaseException):
    """Stands for a kill -9 (a BaseException, so no `except Exception` in the trainer records it)."""


@pytest.fixture
def kill_after():
    """`kill_after(trainer, step)`: run the Trainer and end the process's work as a kill -9 would, right after
    the checkpoint of `step` is on disk (status.json still says "running"; nothing after it is written)."""

    def run_until_killed(trainer, step: int) -> None:
        save = trainer.checkpoints.save

        def save_then_die(state: dict) -> None:
            save(state)
            if state["step"] >= step:
                raise Killed

        trainer.checkpoints.save = save_then_die
        with pytest.raises(Killed):
            trainer.run()
        del trainer.checkpoints.save  # the instance attribute: the class's save again

    return run_until_killed
