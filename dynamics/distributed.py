"""Data parallel over torch.distributed, all in one place: who this process is, the gradient all-reduce and
the stop flag shared by the ranks.

The JVP cannot run through a DDP wrapper, so the model stays unwrapped and the trainer all-reduces the
gradients itself after the backward (`all_reduce_gradients`), as DDP would.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

# Set to 1 to start torch.distributed on a single process (world size 1) when nothing else has: the
# trainer then goes through the gradient all-reduce as a multi-GPU job does (benchmarks/gpu_check.py).
FORCE_DIST_ENV = "DYNAMICS_FORCE_DIST"


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    initialized: bool = False  # a process group is up: gradients are all-reduced, even at world size 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), True)
    return DistInfo()


def init_single_process_group(device: torch.device) -> str:
    """torch.distributed on this process alone (rank 0 of 1): nccl on CUDA, gloo on CPU; returns the backend."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":  # nccl binds this process to one device
        torch.cuda.set_device(device.index if device.index is not None else torch.cuda.current_device())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    return backend


def setup(device: torch.device) -> DistInfo:
    """This process's place in the job; starts a one-process group first when FORCE_DIST_ENV=1 asks for it."""
    if os.environ.get(FORCE_DIST_ENV) == "1" and not (dist.is_available() and dist.is_initialized()):
        init_single_process_group(device)
    return dist_info()


def all_reduce_gradients(model: nn.Module, world_size: int) -> None:
    """Average gradients over ranks in one flat buffer (what DDP would do, without its wrapper)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """Whether `flag` is set on any rank (a stop signal may reach one rank first)."""
    if info.world_size > 1:
        t = torch.tensor([float(flag)], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        flag = bool(t.item())
    return flag
