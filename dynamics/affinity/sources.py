"""Where the weights come from: a run directory (a checkpoint), a config (its fresh init) or a model."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from ..config import RunConfig
from ..results import CONFIG_FILE, checkpoint_path
from ..train import Trainer
from .tasks import AffinityError


def _trainer(cfg: RunConfig, run_dir: Path, device: str | torch.device | None) -> Trainer:
    """The run's trainer (model, optimiser, data, objective); it never evaluates or writes here, so its
    evaluation noise is kept tiny. The caller's global CPU RNG state is left untouched."""
    cfg = copy.deepcopy(cfg)
    cfg.eval.num_samples, cfg.eval.metrics = 2, []
    with torch.random.fork_rng(devices=[]):
        return Trainer(cfg, run_dir, device)


def trainer_from_run(run_dir: str | Path, epoch: float | None = None,
                     device: str | torch.device | None = None) -> Trainer:
    """A run's trainer at its last (or an epoch) checkpoint: raw weights, optimiser state, step, DTD stage."""
    path = Path(run_dir)
    if not (path / CONFIG_FILE).exists():
        raise FileNotFoundError(f"{path} is not a run directory (no {CONFIG_FILE})")
    ckpt = checkpoint_path(path, epoch)
    if not ckpt.exists():
        kept = sorted(p.name for p in ckpt.parent.glob("*.pt")) if ckpt.parent.exists() else []
        raise FileNotFoundError(f"{ckpt} does not exist; checkpoints there: {', '.join(kept) or 'none'}")
    trainer = _trainer(RunConfig.from_dict(json.loads((path / CONFIG_FILE).read_text())), path, device)
    with torch.random.fork_rng(devices=[]):
        trainer.load_state_dict(torch.load(ckpt, map_location=trainer.device, weights_only=False))
    return trainer


def trainer_from_config(cfg: RunConfig, device: str | torch.device | None = None) -> Trainer:
    """A fresh trainer of `cfg` (the random init a run with cfg.train.seed starts from, empty optimiser)."""
    return _trainer(cfg, Path(f"<fresh init of {cfg.name}, seed {cfg.train.seed}>"), device)


def resolve_source(source: str | Path | RunConfig | nn.Module, cfg: RunConfig | None, epoch: float | None,
                   device: str | torch.device | None) -> tuple[Trainer, str]:
    """The trainer holding the weights to measure, and a description of them."""
    if isinstance(source, (str, Path)):
        at = f" epoch {epoch:g}" if epoch is not None else ""
        return trainer_from_run(source, epoch, device), f"run {source}{at}"
    if isinstance(source, RunConfig):
        return trainer_from_config(source, device), f"fresh init of {source.name}, seed {source.train.seed}"
    if isinstance(source, nn.Module):
        if cfg is None:
            raise AffinityError("task_affinity(model, ...) needs cfg=RunConfig (its data, objective and optimiser)")
        trainer = trainer_from_config(cfg, device)
        trainer.model.load_state_dict(source.state_dict())
        return trainer, f"given model under {cfg.name}"
    raise AffinityError(f"task_affinity: source must be a run directory, a RunConfig or an nn.Module, "
                        f"not {type(source).__name__}")
