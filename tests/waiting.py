"""Waiting for a state in the tests that drive real processes (SLURM jobs, torchrun ranks)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(condition: Callable[[], Any], timeout: float, what: str, poll: float = 0.1) -> Any:
    """Poll `condition` until it returns something truthy (returned). `timeout` is only a guard against a hang,
    far above the time the state takes on a loaded machine; the tests wait for states, never for times."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
