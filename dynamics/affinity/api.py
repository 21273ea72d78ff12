"""`task_affinity`: a method's affinity between tasks, averaged over batches (or sample sets), on the weights of a
run, a config's fresh init or a model."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ..config import RunConfig
from ..meanflow.tasks import TaskSpec
from ..progress import progress as progress_bar
from ..rng import stream_seed
from ..train import Diverged
from .batch import trainable
from .frames import long_frame
from .methods import METHODS, Settings
from .methods.accumulated import samples_for
from .methods.lookahead import OPTIMIZERS
from .sources import resolve_source
from .tasks import AffinityError, Task, resolve_tasks

DEFAULT_METHOD = "accumulated"  # the authors' TAS (Go et al. 2023)
DEFAULT_BATCHES = 16  # batches a per-batch method (lookahead, cosine) averages over
DEFAULT_SETS = 1  # sample sets of a sample-set method: one matrix per checkpoint, as the authors
DATA_KEY = 2**31 - 1  # the "tas" stream key of a sample-set method's data rows (batch keys count from 0)


def _check(method: str, optimizer: str, batches: int, train_window: int, lr: float | None,
           samples: int | None) -> None:
    if method not in METHODS:
        raise AffinityError(f"method={method!r} is not allowed; choose one of {', '.join(METHODS)}")
    if optimizer not in OPTIMIZERS:
        raise AffinityError(f"optimizer={optimizer!r} is not allowed; choose one of {', '.join(OPTIMIZERS)}")
    if batches < 1:
        raise AffinityError(f"batches={batches} must be >= 1")
    if train_window < 0:
        raise AffinityError(f"train_window={train_window} must be >= 0")
    if lr is not None and not lr > 0:
        raise AffinityError(f"lr={lr} must be > 0")
    if samples is not None and samples < 1:
        raise AffinityError(f"samples={samples} must be >= 1")


@contextmanager
def _strict_float32() -> Iterator[None]:
    """float32 matmuls and convolutions without TF32, restored afterwards."""
    matmul, cudnn = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.allow_tf32 = cudnn


def affinity_values(source: str | Path | RunConfig | nn.Module, tasks: Sequence[Task | TaskSpec | str] | str,
                    method: str = DEFAULT_METHOD, batches: int | None = None, *, cfg: RunConfig | None = None,
                    epoch: float | None = None, optimizer: str = "sgd", lr: float | None = None,
                    recompute_target: bool = True, recompute_weight: bool = False, train_window: int = 0,
                    batch_size: int | None = None, samples: int | None = None, seed: int = 0,
                    device: str | torch.device | None = None,
                    progress: bool = False) -> tuple[list[str], np.ndarray, dict]:
    """The task names, every batch's (or sample set's) matrix, (batches, n, n), and the settings; the
    arguments are task_affinity's."""
    measure = METHODS.get(method)
    if batches is None:
        batches = DEFAULT_BATCHES if measure is None or measure.per_batch else DEFAULT_SETS
    _check(method, optimizer, batches, train_window, lr, samples)
    trainer, described = resolve_source(source, cfg, epoch, device)
    run_cfg = trainer.cfg
    resolved = resolve_tasks(run_cfg, tasks, trainer.num_classes)
    needed = train_window * (batches - 1)
    if needed and trainer.step + needed > trainer.total_steps:
        raise AffinityError(f"train_window={train_window}: {needed} training steps from step {trainer.step} run "
                            f"past the run's {trainer.total_steps} steps; measure an earlier --epoch or use 0")
    bs = batch_size or run_cfg.train.batch_size
    n_samples = None if measure.per_batch else samples or samples_for(run_cfg.scale)
    settings = Settings(lr=lr if lr is not None else run_cfg.train.lr,
                        params=sum(p.numel() for p in trainable(trainer.model)), grad_clip=run_cfg.train.grad_clip,
                        optimizer=optimizer, run_optimizer=trainer.opt, recompute_target=recompute_target,
                        recompute_weight=recompute_weight, samples=n_samples, chunk=bs)
    start_step = trainer.step
    values: list[Tensor] = []
    unit = "batch" if measure.per_batch else "set"
    with _strict_float32(), progress_bar(batches, desc=f"TAS {method}", unit=unit, enabled=progress) as bar:
        for k in range(batches):
            if k > 0:
                for _ in range(train_window):
                    try:
                        trainer.train_step()
                    except Diverged:
                        raise AffinityError(f"train_window: the loss went non-finite at step {trainer.step}") from None
            if measure.per_batch:  # the run's next training batches
                data_step = trainer.step if train_window else start_step + k
                x, y = trainer.dataset.batch(data_step, bs, run_cfg.train.seed)
            else:  # set k: rows [k N, (k + 1) N) of a data stream fixed by `seed`, the same at every checkpoint
                x, y = trainer.dataset.batch(k, n_samples, stream_seed(seed, "tas", DATA_KEY))
            x = x.to(trainer.device).float()
            y = y.to(trainer.device) if y is not None else None
            values.append(measure.matrix(trainer.model, resolved, x, y, stream_seed(seed, "tas", k), trainer.step,
                                         settings))
            bar.update(1)
    attrs = {"weights": described, "step": start_step, "method": method, "batches": batches,
             "batch_size": bs, "seed": seed, "train_window": train_window, **measure.attrs(settings)}
    return [t.name for t in resolved], torch.stack(values).numpy(), attrs


def task_affinity(source: str | Path | RunConfig | nn.Module, tasks: Sequence[Task | TaskSpec | str] | str,
                  method: str = DEFAULT_METHOD, batches: int | None = None, *, cfg: RunConfig | None = None,
                  epoch: float | None = None, optimizer: str = "sgd", lr: float | None = None,
                  recompute_target: bool = True, recompute_weight: bool = False, train_window: int = 0,
                  batch_size: int | None = None, samples: int | None = None, seed: int = 0,
                  device: str | torch.device | None = None, progress: bool = False) -> pd.DataFrame:
    """TAS between `tasks`, long format: source, target, method, mean, std, n (settings in `.attrs`).

    source: a run directory (raw weights and optimiser of checkpoints/last.pt, or of `epoch`), a RunConfig
    (a fresh init with cfg.train.seed, empty optimiser state) or an nn.Module (its weights under `cfg`, empty
    optimiser state). tasks: Task objects, TaskSpecs or task strings (`v,u[0.1,0.3]`). method: `accumulated`
    (the authors' TAS, over `samples` rows: default the scale's N, 1,000 at paper scale; batches = disjoint
    sample sets, default 1), `lookahead` or `cosine` (batches of `batch_size` rows, default 16). batch_size:
    the chunk the accumulated method back-propagates at once. See the package docstring for the choices."""
    names, values, attrs = affinity_values(
        source, tasks, method, batches, cfg=cfg, epoch=epoch, optimizer=optimizer, lr=lr,
        recompute_target=recompute_target, recompute_weight=recompute_weight, train_window=train_window,
        batch_size=batch_size, samples=samples, seed=seed, device=device, progress=progress)
    frame = long_frame(names, values, method)
    frame.attrs = attrs
    return frame
