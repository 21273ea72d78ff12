"""Shared fixtures. `slurm_cluster`: a real single-node SLURM with accounting, started once per test session by
slurm/start.sh (which installs the Debian packages if missing) and stopped at the end by slurm/stop.sh, unless
it was already running before the session. Skipped, with the reason, only when not root or when the packages
cannot be installed; any other failure to start is a test error."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STATE = Path(os.environ.get("DYNAMICS_SLURM_STATE", "/var/lib/dynamics-slurm"))


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
