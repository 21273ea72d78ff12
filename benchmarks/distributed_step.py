"""The distributed step cost: one process vs two ranks at the same global batch.

Times the real trainer's step (Trainer.train_step: the batch, the draws, the DDP forward and backward with its
gradient all-reduce, the step's all-reduce of losses and flags, Adam and EMA) for
- one process on the whole global batch,
- one process on half of it (what one rank computes, with no communication),
- two ranks (gloo on CPU, nccl on CUDA when two GPUs are visible), each on its half.
The communication share is the part of the two-rank step the half-batch process does not spend:
(two_rank - half) / two_rank (all-reduces and waiting for the slower rank).

    .venv/bin/python benchmarks/distributed_step.py                   # smoke model, global batch 512, CPU
    .venv/bin/python benchmarks/distributed_step.py --preset cpu --batch 256 --steps 30
    .venv/bin/python benchmarks/distributed_step.py --device cuda --preset b4 --batch 64   # two GPUs, nccl

One thread per process on CPU, so two ranks use two cores and one process one core.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dynamics.config import apply_overrides, preset  # noqa: E402
from dynamics.train import Trainer  # noqa: E402


def config(args: argparse.Namespace, batch: int):
    overrides = [f"train.batch_size={batch}", "train.threads=1", "eval.every_epochs=0", "train.warmup_steps=0",
                 f"train.steps_per_epoch={args.steps + args.warmup}", "train.epochs=1"]
    return apply_overrides(preset(args.preset), overrides)


def time_steps(trainer: Trainer, args: argparse.Namespace) -> float:
    """Seconds per step over `steps` steps after `warmup` (the first builds DDP's buckets)."""
    for _ in range(args.warmup):
        trainer.train_step()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
    start = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_step()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
    return (time.perf_counter() - start) / args.steps


def rank_worker(rank: int, port: int, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(1)
    cuda = args.device == "cuda"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    with tempfile.TemporaryDirectory() as tmp:
        seconds = time_steps(Trainer(config(args, args.batch), tmp, device), args)
    if rank == 0:
        Path(out).write_text(json.dumps({"backend": dist.get_backend(), "two_rank_s": seconds}))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--batch", type=int, default=512, help="the global batch")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    if args.device == "cuda" and torch.cuda.device_count() < 2:
        sys.exit("distributed_step: --device cuda needs two visible GPUs")
    torch.set_num_threads(1)
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        one = time_steps(Trainer(config(args, args.batch), Path(tmp) / "one", device), args)
        half = time_steps(Trainer(config(args, args.batch // 2), Path(tmp) / "half", device), args)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        out = Path(tmp) / "two.json"
        mp.start_processes(rank_worker, args=(port, args, str(out)), nprocs=2, start_method="spawn")
        two = json.loads(out.read_text())
    result = {"preset": args.preset, "global_batch": args.batch, "device": args.device, "backend": two["backend"],
              "one_process_ms": round(1e3 * one, 2), "half_batch_ms": round(1e3 * half, 2),
              "two_rank_ms": round(1e3 * two["two_rank_s"], 2),
              "speedup": round(one / two["two_rank_s"], 2),
              "communication_share": round(max(0.0, two["two_rank_s"] - half) / two["two_rank_s"], 3)}
    print(f"{'one process':>14} {result['one_process_ms']:9.2f} ms/step (global batch {args.batch})")
    print(f"{'half batch':>14} {result['half_batch_ms']:9.2f} ms/step (one rank's compute)")
    print(f"{'two ranks':>14} {result['two_rank_ms']:9.2f} ms/step ({result['backend']}), speed-up "
          f"{result['speedup']}x, communication share {result['communication_share']:.0%}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
