"""Data parallel over torch.distributed, all in one place: who this process is, the process group a launcher
asks for, the DDP wrapper and which module a step's loss goes through (`DataParallel`), the ranks' agreement
on where the run starts (`start_together`) and their per-step agreement (`step_sync`).

N ranks train the same run as one process with the same global batch (docs/distributed.md): each rank takes
its slice of the global batch, the gradients are averaged by DistributedDataParallel, and once per step one
small all-reduce (`StepSync`) gives every rank the same global-batch losses, the same non-finite verdict and
the same stop flag, so stateful pieces (DTD) and the run's end are decided identically everywhere.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from .config import ConfigError

# Set to 1 to start torch.distributed on a single process (world size 1) when nothing else has: the
# trainer then goes through DDP as a multi-GPU job does (benchmarks/gpu_check.py).
FORCE_DIST_ENV = "DYNAMICS_FORCE_DIST"
# Seconds a collective may wait for the other ranks before the job fails (not part of the run's config).
TIMEOUT_ENV = "DYNAMICS_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600.0
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")  # torchrun's env://


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    initialized: bool = False  # a process group is up: the model is wrapped in DDP, even at world size 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), True)
    return DistInfo()


def timeout() -> timedelta:
    """The collective time-out: TIMEOUT_ENV seconds, 600 by default."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    return timedelta(seconds=seconds)


def init_single_process_group(device: torch.device) -> str:
    """torch.distributed on this process alone (rank 0 of 1): nccl on CUDA, gloo on CPU; returns the backend."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":  # nccl binds this process to one device
        torch.cuda.set_device(device.index if device.index is not None else torch.cuda.current_device())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                            timeout=timeout())
    return backend


def launched_world_size() -> int:
    """WORLD_SIZE when a launcher (torchrun) set all of LAUNCH_VARS, else 1."""
    if not all(os.environ.get(k) for k in LAUNCH_VARS):
        return 1
    return int(os.environ["WORLD_SIZE"])


def no_gpu_error(rank: int, count: int, local_rank: int) -> RuntimeError:
    """The one line a rank asked for CUDA fails with when it sees no GPU of its own (never a CPU fallback)."""
    return RuntimeError(f"rank {rank}: CUDA asked for but this process sees {count} GPU(s) for LOCAL_RANK "
                        f"{local_rank} (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
                        "not falling back to the CPU")


def init_from_env(device: str | torch.device | None) -> tuple[str | torch.device | None, bool]:
    """Join the process group a launcher described in LAUNCH_VARS (torchrun: env://), unless one is up or the
    job has one process. Returns (this rank's device, whether this call started the group). On CUDA the device
    is cuda:LOCAL_RANK and the backend nccl; on CPU gloo. A job asked for CUDA that sees no GPU fails here."""
    world = launched_world_size()
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return device, False
    local_rank = int(os.environ["LOCAL_RANK"])
    wants_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    if wants_cuda:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if local_rank >= count:
            raise no_gpu_error(int(os.environ["RANK"]), count, local_rank)
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if wants_cuda else "gloo", init_method="env://", timeout=timeout())
    return (device if wants_cuda else (device or "cpu")), True


def setup(device: torch.device, jvp: str) -> DistInfo:
    """This process's place in the job; starts a one-process group first when FORCE_DIST_ENV=1 asks for it.
    The `compiled` JVP strategy is refused with several ranks: torch.func.jvp under torch.compile does not
    trace through DDP."""
    if os.environ.get(FORCE_DIST_ENV) == "1" and not (dist.is_available() and dist.is_initialized()):
        init_single_process_group(device)
    info = dist_info()
    if info.world_size > 1 and jvp == "compiled":
        raise ConfigError("objective.jvp=compiled is refused with several ranks (torch.func.jvp under "
                          "torch.compile does not trace through DDP); use rows, fused or full")
    return info


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `model` for the graph-building forward and backward (bucketed
    all-reduce overlapped with the backward). The JVP runs on `model` itself, never through the wrapper."""
    ids = [device.index] if device.type == "cuda" and device.index is not None else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


class DataParallel:
    """Which module a step's loss goes through: the model, or DDP around it when a process group is up (built at
    the first step). Under DDP the graph-building forward goes through the wrapper and the `rows` strategy's JVP
    and guidance run on the model itself (the target is computed apart, under no_grad); the other strategies'
    JVP builds the graph, so it runs through it. bf16 autocast on CUDA when `precision` is auto or bf16."""

    def __init__(self, model: nn.Module, device: torch.device, info: DistInfo, precision: str):
        self.model, self.device, self.info = model, device, info
        self.bf16 = device.type == "cuda" and precision in ("auto", "bf16")
        self._ddp: nn.Module | None = None

    @property
    def ddp(self) -> nn.Module | None:
        """The DDP wrapper of the model when a process group is up, else None."""
        if self._ddp is None and self.info.initialized:
            self._ddp = wrap_model(self.model, self.device)
        return self._ddp

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def loss_at(self, objective, x: torch.Tensor, d, step: int, gen: torch.Generator | None = None):
        """The objective's loss (a LossOutput) for the draw `d` at `step`, through the right module."""
        with self.autocast():
            if self.ddp is None:
                return objective.loss_at(self.model, x, d, step, gen)
            target = self.model if objective.jvp_strategy == "rows" else None
            return objective.loss_at(self.ddp, x, d, step, gen, target_model=target)


def all_reduce_gradients(model: nn.Module, world_size: int) -> None:
    """Average gradients over ranks in one flat buffer (for a backward that did not go through DDP)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


@dataclass
class GlobalStep:
    """What every rank knows after a step's all-reduce: the global batch's losses and the shared flags."""

    nonfinite: bool
    stop: bool
    loss: float
    loss_v: float
    loss_u: float
    noise_ratio: float | None


def _ratio(total: float, count: float) -> float:
    return total / count if count > 0 else float("nan")


def step_sync(out, stop: bool, info: DistInfo, device: torch.device) -> GlobalStep:
    """One SUM all-reduce of [non-finite, stop, loss, sum D_v, n_v, sum D_u, n_u, sum noise ratio, n noisy]
    (float64). loss is a mean over equal-sized shards, so its global value is the mean of the ranks'; loss_v
    and loss_u are masked means, so they are summed and counted; on one rank the loss's own values are kept."""
    loss = out.loss.detach()
    nonfinite = not bool(torch.isfinite(loss))
    if info.world_size == 1:
        ratio = None if out.noise_ratio is None else float(out.noise_ratio)
        return GlobalStep(nonfinite, stop, float(loss), float(out.loss_v), float(out.loss_u), ratio)
    is_v = out.is_v
    D = out.D.double()
    n_v = is_v.sum().double()
    noisy = out.noise_ratio is not None
    vec = torch.stack([torch.tensor(float(nonfinite), dtype=torch.float64, device=D.device),
                       torch.tensor(float(stop), dtype=torch.float64, device=D.device),
                       loss.double(), (D * is_v).sum(), n_v, (D * ~is_v).sum(), (~is_v).sum().double(),
                       out.noise_ratio.double() * n_v if noisy else torch.zeros((), dtype=torch.float64,
                                                                                 device=D.device),
                       n_v if noisy else torch.zeros((), dtype=torch.float64, device=D.device)]).to(device)
    dist.all_reduce(vec, op=dist.ReduceOp.SUM)
    s = vec.tolist()
    return GlobalStep(s[0] > 0, s[1] > 0, s[2] / info.world_size, _ratio(s[3], s[4]), _ratio(s[5], s[6]),
                      _ratio(s[7], s[8]) if s[8] > 0 else None)


def state_digest(step: int, model: nn.Module, extra: dict) -> str:
    """A short fingerprint of what a rank starts from: the step, the model (two float64 sums per tensor) and
    `extra` (the v_time piece's state)."""
    with torch.no_grad():
        sums = [(float(p.double().sum()), float(p.double().abs().sum())) for p in model.state_dict().values()
                if p.is_floating_point()]
    return hashlib.sha1(repr((step, sums, sorted(extra.items()))).encode()).hexdigest()[:12]


def agree_on_start(info: DistInfo, step: int, digest: str, error: str | None, source: str) -> None:
    """Before the first step: every rank must hold the same step and model, and none may have failed to load
    it. Raises one line on every rank otherwise (before anything is written)."""
    if info.world_size <= 1:
        return
    views: list = [None] * info.world_size
    dist.all_gather_object(views, (step, digest, error))
    failed = [(k, e) for k, (_, _, e) in enumerate(views) if e]
    if failed:
        k, e = failed[0]
        raise RuntimeError(f"rank {k} could not start: {e}")
    if len({(s, d) for s, d, _ in views}) > 1:
        seen = ", ".join(f"rank {k} at step {s} (model {d})" for k, (s, d, _) in enumerate(views))
        raise RuntimeError(f"the ranks disagree on where the run starts: {seen}; every rank must read the same "
                           f"{source} (a results folder on a shared file system)")


def start_together(info: DistInfo, restore: Callable[[], bool],
                   start: Callable[[], tuple[int, nn.Module, dict]], source: str) -> bool:
    """restore() on this rank, then the ranks agree on the (step, model, v_time state) that `start` returns (a
    rank that could not read `source` fails them all, in one line, before anything is written); returns
    restore()'s answer. On one rank a failure is raised as it is."""
    error = None
    try:
        resumed = restore()
    except Exception as exc:
        if info.world_size == 1:
            raise
        resumed, error = False, f"{type(exc).__name__}: {exc}"
    if info.world_size > 1:  # one rank has nothing to agree with: no pass over the model
        step, model, extra = start()
        agree_on_start(info, step, state_digest(step, model, extra), error, source)
    return resumed


class Terminated(Exception):
    """SIGTERM on a rank of a multi-rank job (torchrun ends the others when one fails): recorded as "failed"."""


class sigterm_raises:  # noqa: N801 - used as a context manager, like contextlib's
    """In a multi-rank job, SIGTERM (torchrun ending the job after a rank died) raises Terminated, so the run is
    recorded "failed" instead of being left "running". Only where SIGTERM has its default action (submitit
    and other launchers keep their own handlers) and on the main thread."""

    def __init__(self, enabled: bool):
        self.enabled = (enabled and threading.current_thread() is threading.main_thread()
                        and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)

    def __enter__(self) -> None:
        if self.enabled:
            signal.signal(signal.SIGTERM, self._raise)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    @staticmethod
    def _raise(signum, frame) -> None:
        raise Terminated("SIGTERM: the job was ended (another rank failed, or it was cancelled)")
