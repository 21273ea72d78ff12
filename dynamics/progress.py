"""Progress of a long loop: a live tqdm bar on a terminal, a few plain lines in a log file.

A tqdm bar redrawn in a file (a SLURM log, `dynamics train ... 2> log`) becomes one line per update,
megabytes per run. When the stream is not a terminal, `Progress` prints one short line each time another
5% of the work is done (`every`), and at least every 10 minutes while work goes on (`every_s`), so a
stalled or slow run still shows signs of life: at most 20 lines plus one per `every_s` seconds of the run,
and a last line when it closes.

    with progress(total=1000, initial=step, desc="cpu-joint", unit="step") as bar:
        for ...:
            bar.update(1)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

EVERY = 0.05  # a plain line per 5% of the total
EVERY_S = 600.0  # and at least one per 10 minutes of progress


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """A progress display with tqdm's small surface (`update`, `write`, `close`, a context manager)."""

    def __init__(self, total: int, initial: int = 0, desc: str = "", unit: str = "step", enabled: bool = True,
                 stream: TextIO | None = None, every: float = EVERY, every_s: float = EVERY_S,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.n, self.desc, self.unit = total, initial, desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self._bar = None
        if enabled and _is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.stream,
                             dynamic_ncols=True)
        self.every, self.every_s, self.clock = every, every_s, clock
        self._start_n, self._start_t = initial, clock()
        self._last_t, self._printed_n = self._start_t, initial
        self._next_n = self._next_mark(initial)

    def _next_mark(self, n: int) -> float:
        """The next multiple of `every` * total above n."""
        step = max(1.0, self.every * self.total)
        return (int(n / step) + 1) * step

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled:
            now = self.clock()
            if self.n >= self._next_n or now - self._last_t >= self.every_s:
                self._line(now)

    def _line(self, now: float) -> None:
        elapsed = now - self._start_t
        rate = (self.n - self._start_n) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.n}/{self.total} {self.unit}s ({100 * self.n / max(1, self.total):.0f}%)"]
        if rate > 0:
            parts.append(f"{rate:.3g} {self.unit}s/s")
            parts.append(f"{_duration(elapsed)} elapsed, ~{_duration((self.total - self.n) / rate)} left")
        prefix = f"{self.desc}: " if self.desc else ""
        print(prefix + ", ".join(parts), file=self.stream, flush=True)
        self._last_t, self._printed_n = now, self.n
        self._next_n = self._next_mark(self.n)

    def write(self, message: str) -> None:
        """A line of its own (on stdout), without breaking a live bar."""
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and self.n != self._printed_n:
            self._line(self.clock())
        self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress(total: int, initial: int = 0, desc: str = "", unit: str = "step", enabled: bool = True,
             stream: TextIO | None = None) -> Progress:
    """A `Progress` over `total` units on `stream` (stderr by default); `enabled=False` shows nothing."""
    return Progress(total, initial=initial, desc=desc, unit=unit, enabled=enabled, stream=stream)
