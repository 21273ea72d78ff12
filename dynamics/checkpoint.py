"""A run's checkpoints: last.pt, the one before it (prev.pt), the kept epochs, and a parent run's to start from.

A run starts from its own latest checkpoint (a resume), else from the parent run's its config names
(`init`), else from scratch (`Checkpointer.load_start`).

Every checkpoint is written atomically (results.atomic_torch_save); prev.pt is a hard link to the last.pt
being replaced, so a last.pt that cannot be read (a torn copy, a file system without atomic rename) falls
back to the checkpoint before it instead of restarting the run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from .config import ConfigError, InitConfig
from .results import atomic_torch_save, checkpoint_path

PREV_CKPT = "prev.pt"
REQUIRED_KEYS = {"step", "model", "ema", "optimizer"}


class Checkpointer:
    """Writes (on the main rank only) and reads the checkpoints of the run in `run_dir`.

    `keep`: step -> epoch of the checkpoints kept beside last.pt (train.keep_epochs), the ones a child run
    or a TAS measurement starts from."""

    def __init__(self, run_dir: Path, device: torch.device, is_main: bool, keep: dict[int, float]):
        self.last = checkpoint_path(run_dir)
        self.prev = self.last.with_name(PREV_CKPT)
        self.run_dir, self.device, self.is_main, self.keep = run_dir, device, is_main, keep

    def due(self, step: int, every: int, total_steps: int) -> bool:
        return step % every == 0 or step == total_steps or step in self.keep

    def save(self, state: dict) -> None:
        if not self.is_main:
            return
        step = state["step"]
        if self.last.exists():  # keep the previous good checkpoint: a hard link, then last.pt is replaced atomically
            prev_tmp = self.last.with_name(f".{PREV_CKPT}.{os.getpid()}.tmp")
            prev_tmp.unlink(missing_ok=True)
            os.link(self.last, prev_tmp)
            os.replace(prev_tmp, self.prev)
        atomic_torch_save(self.last, state)
        if step in self.keep:
            atomic_torch_save(checkpoint_path(self.run_dir, self.keep[step]), state)

    def load_latest(self) -> dict | None:
        """last.pt, or prev.pt when last.pt is unreadable; None for a run that has none. An unreadable file is
        reported and skipped, never used."""
        for path in (self.last, self.prev):
            if not path.exists():
                continue
            try:
                state = torch.load(path, map_location=self.device, weights_only=False)
                if not isinstance(state, dict) or not REQUIRED_KEYS <= set(state):
                    raise ValueError("not a complete checkpoint")
                return state
            except Exception as exc:  # noqa: BLE001 - any unreadable file is skipped the same way
                print(f"dynamics: skipping unreadable checkpoint {path}: {type(exc).__name__}: {exc}",
                      file=sys.stderr)
        return None

    def load_start(self, world_size: int, init: InitConfig, total_steps: int) -> tuple[dict | None, bool]:
        """(the state this run starts from, whether it resumes its own): its latest checkpoint, else the parent
        run's named by `init`, else (None, False). A checkpoint written at another world size is refused: each
        rank's draws (t, r, noise) come from streams at (seed, step, rank), so the same global batch at another
        world size is another run."""
        state = self.load_latest()
        if state is not None:
            written = int(state.get("world_size", world_size))
            if written != world_size:
                raise ConfigError(f"resume: {self.last} (step {state['step']}) was written by {written} rank(s) "
                                  f"and this job has {world_size}; the per-rank draws depend on the world size, "
                                  f"so resume with {written} rank(s)")
            return state, True
        if not init.run_dir:
            return None, False
        state = self.load_parent(init.run_dir, init.epoch)
        if int(state["step"]) >= total_steps:
            raise ConfigError(f"init: the parent checkpoint is at step {int(state['step'])}, past this run's "
                              f"{total_steps} steps")
        return state, False

    def load_parent(self, run_dir: str | Path, epoch: float) -> dict:
        """The checkpoint of the parent run this run starts from (config `init.run_dir`, `init.epoch`)."""
        parent = checkpoint_path(Path(run_dir), epoch)
        if not parent.exists():
            raise FileNotFoundError(f"init.run_dir: no checkpoint {parent} (has the parent run finished "
                                    f"epoch {epoch:g}? keep it with train.keep_epochs)")
        return torch.load(parent, map_location=self.device, weights_only=False)
