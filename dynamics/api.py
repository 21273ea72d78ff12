"""The small Python API for notebooks and users' own curricula (stable; documented in the README)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from .config import RunConfig
from .data import build_dataset
from .models import build_model
from .results import CONFIG_FILE, EVAL_FILE, METRICS_FILE, checkpoint_path, read_jsonl, read_status


@dataclass
class Run:
    path: Path
    config: RunConfig
    status: dict
    model: nn.Module  # EMA weights, eval mode
    data_shape: tuple[int, ...]
    num_classes: int
    step: int  # the training step of the loaded checkpoint

    @property
    def metrics(self) -> pd.DataFrame:
        return pd.DataFrame(read_jsonl(self.path / METRICS_FILE))

    @property
    def evals(self) -> pd.DataFrame:
        return pd.DataFrame(read_jsonl(self.path / EVAL_FILE))


def load_run(run_dir: str | Path, epoch: float | None = None, device: str = "cpu") -> Run:
    """A finished (or running) run: its config, status, EMA model (from the last or an epoch checkpoint)."""
    path = Path(run_dir)
    if not (path / CONFIG_FILE).exists():
        raise FileNotFoundError(f"{path} is not a run directory (no {CONFIG_FILE})")
    cfg = RunConfig.from_dict(json.loads((path / CONFIG_FILE).read_text()))
    ckpt = checkpoint_path(path, epoch)
    if not ckpt.exists():
        raise FileNotFoundError(f"{ckpt} does not exist: the run has no checkpoint yet")
    if cfg.data.name == "imagenet_latents":
        shape, num_classes = (4, 32, 32), 1000
    else:
        dataset = build_dataset(cfg.data)
        shape, num_classes = tuple(dataset.shape), dataset.num_classes
    model = build_model(cfg.model, shape, num_classes)
    state = torch.load(ckpt, map_location=device, weights_only=False)
    model.load_state_dict(state["ema"])
    return Run(path, cfg, read_status(path), model.to(device).eval(), shape, num_classes, int(state["step"]))
