"""Step cost of MeanFlow against flow matching: time and peak memory, per JVP strategy.

A flow-matching (FM) step: the model at z_t with r = t, target v, squared error, backward, Adam step.
A MeanFlow (MF) step: `MeanFlowLoss` with default settings (adaptive weight), backward, Adam step, at
a share of u rows (r != t) of 0.25 (the default mix) or 1.0 (a u-only phase). Same model, same batch.

Time: FM and MF steps alternate (order flipped every pair) after a warm-up; fm_ms and mf_ms are the
medians, ratio the median of the per-pair ratios (robust to the machine's load drifting).
Peak memory: every measurement in a fresh process. The baseline is the steady state after two warm-up
steps (model, batch, Adam's state, gradients, lazily loaded code and caches); peak_mb is the peak above
it over two more steps: what a step needs on top (activations, new gradients, temporaries). CPU: the
peak resident set (VmHWM, reset at the baseline) with glibc's mmap threshold pinned, so freed tensors
go back to the OS and RSS follows live memory. CUDA: torch.cuda.max_memory_allocated above
memory_allocated at the baseline.

Models: `mlp` (3x256, batch 1024, 2-D), `dit` (2.9M parameters: depth 4, hidden 192, 3 heads, patch 2
on 16x16x1, batch 64), `dit-b4` (CUDA only: DiT-B/4 on 32x32x4 latents, 1000 classes, bf16 autocast,
batch 64 and 256). A `+compile` suffix compiles both sides: FM runs torch.compile(model) and MF the
`compiled` strategy; the eager cases run the other strategies. Warm-up steps (and compilation) are
not timed.

    .venv/bin/python benchmarks/step_cost.py                      # every CPU case (about 10 minutes)
    .venv/bin/python benchmarks/step_cost.py --models dit --strategies rows,fused --json out.json
    .venv/bin/python benchmarks/step_cost.py --quick               # tiny sizes, a few steps (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from dynamics.config import ObjectiveConfig, SamplerConfig
from dynamics.meanflow import MeanFlowLoss, conditional_velocity, interpolate
from dynamics.meanflow.path import per_sample_sq_norm
from dynamics.meanflow.samplers import build_sampler
from dynamics.meanflow.target import JVP_STRATEGIES
from dynamics.models.dit import DiT, build_dit
from dynamics.models.mlp import MLP

SHARES = (0.25, 1.0)  # share of rows with r != t: the default mix, a u-only phase
COMPILED = "compiled"  # the strategy that compiles; it pairs with a compiled FM step


@dataclass
class Case:
    """One model at one batch size on one device, eager or compiled."""

    model: str  # mlp | dit | dit-b4
    batch: int
    device: str = "cpu"
    bf16: bool = False
    compile: bool = False

    @property
    def label(self) -> str:
        size = f"@{self.batch}" if self.model == "dit-b4" else ""
        return self.model + size + ("+compile" if self.compile else "")

    def runs(self, strategy: str) -> bool:
        return (strategy == COMPILED) == self.compile


def build_case_model(case: Case, quick: bool) -> tuple[nn.Module, tuple[int, ...], int]:
    """(model, shape of one sample, number of classes). The DiT's zero-initialised layers get small
    random values, so the output (and the tangent) is not identically zero."""
    torch.manual_seed(0)
    if case.model == "mlp":
        return MLP(data_dim=2, width=32 if quick else 256, depth=3), (2,), 0
    if case.model == "dit":
        size, depth, hidden, heads = (8, 1, 32, 2) if quick else (16, 4, 192, 3)
        model: nn.Module = DiT(input_size=size, in_channels=1, patch_size=2, hidden_size=hidden, depth=depth,
                               num_heads=heads)
        shape: tuple[int, ...] = (1, size, size)
        classes = 0
    else:
        model, shape, classes = build_dit("B/4", input_size=32, in_channels=4, num_classes=1000), (4, 32, 32), 1000
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.02)
    return model, shape, classes


def cases(models: list[str], quick: bool) -> list[Case]:
    out = []
    for name in models:
        model, compiled = name.removesuffix("+compile"), name.endswith("+compile")
        if model == "mlp":
            out.append(Case("mlp", 64 if quick else 1024, compile=compiled))
        elif model == "dit":
            out.append(Case("dit", 8 if quick else 64, compile=compiled))
        elif model == "dit-b4":
            if not torch.cuda.is_available():
                print(f"{name}: no CUDA device, skipped", file=sys.stderr)
                continue
            out += [Case("dit-b4", batch, "cuda", bf16=True, compile=compiled) for batch in (64, 256)]
        else:
            raise SystemExit(f"unknown model {name!r}; choose from mlp, dit, dit-b4 (each may end in +compile)")
    return out


class Stepper:
    """One model and its Adam optimizer, doing FM or MF training steps on a fixed batch."""

    def __init__(self, case: Case, quick: bool, kind: str, strategy: str = "", share: float = 0.0):
        self.case = case
        self.device = torch.device(case.device)
        model, shape, classes = build_case_model(case, quick)
        self.model = model.to(self.device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(case.batch, *shape, generator=g).to(self.device)
        self.y = torch.randint(0, classes, (case.batch,), generator=g).to(self.device) if classes else None
        self.gen = torch.Generator(device=self.device).manual_seed(2)
        self.sampler = build_sampler(SamplerConfig())
        self.fm_fn = torch.compile(self.model, dynamic=False) if case.compile else self.model
        self.mf = MeanFlowLoss(self.sampler, ratio_r_eq_t=1.0 - share, jvp_strategy=strategy) if kind == "mf" else None

    def fm_loss(self) -> Tensor:
        n = len(self.x)
        t, _ = self.sampler.sample(n, n, self.gen, self.device)
        e = torch.randn(self.x.shape, generator=self.gen, device=self.device)
        z, v = interpolate(self.x, e, t), conditional_velocity(self.x, e)
        return per_sample_sq_norm(self.fm_fn(z, t, t, self.y).float() - v).mean()

    def step(self) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.case.bf16):
            loss = self.fm_loss() if self.mf is None else self.mf(self.model, self.x, self.y, self.gen).loss
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def timed_step(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        self.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


def time_pair(case: Case, quick: bool, strategy: str, share: float, warmup: int, pairs: int
              ) -> tuple[float, float, float]:
    """(fm_ms, mf_ms, ratio) from alternating FM / MF steps on two copies of the same model."""
    fm = Stepper(case, quick, "fm")
    mf = Stepper(case, quick, "mf", strategy, share)
    for _ in range(warmup):
        fm.step()
        mf.step()
    fm_times, mf_times = [], []
    for i in range(pairs):
        first, second = (fm, mf) if i % 2 == 0 else (mf, fm)
        a, b = first.timed_step(), second.timed_step()
        fm_times.append(a if first is fm else b)
        mf_times.append(b if first is fm else a)
    ratio = statistics.median(m / f for f, m in zip(fm_times, mf_times))
    return 1e3 * statistics.median(fm_times), 1e3 * statistics.median(mf_times), ratio


# -- peak memory, one fresh process per measurement --------------------------------------------------

def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_worker(spec: dict) -> float:
    """Peak memory (MB) of `steps` steps of one kind above the steady state after `warmup` steps, in
    this (fresh) process."""
    case = Case(**spec["case"])
    stepper = Stepper(case, spec["quick"], spec["kind"], spec["strategy"], spec["share"])
    for _ in range(spec["warmup"]):
        stepper.step()
    if case.device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(spec["steps"]):
            stepper.step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    base = _status_kb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
        reset = True
    except OSError:  # then ru_maxrss, which may still hold a higher peak from before the baseline
        reset = False
    for _ in range(spec["steps"]):
        stepper.step()
    peak = _status_kb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(0, peak - base) / 1024


def peak_memory(case: Case, quick: bool, kind: str, strategy: str = "", share: float = 0.0,
                threads: int = 0, warmup: int = 2, steps: int = 2) -> float:
    spec = {"case": asdict(case), "quick": quick, "kind": kind, "strategy": strategy, "share": share,
            "warmup": warmup, "steps": steps, "threads": threads}
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, __file__, "--memory-worker", json.dumps(spec)], env=env,
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"memory worker failed for {spec}:\n{out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


# -- the table -----------------------------------------------------------------------------------------

def run(models: list[str], strategies: list[str], shares: list[float], quick: bool, threads: int) -> list[dict]:
    default = ObjectiveConfig().jvp
    warmup, pairs = (2, 3) if quick else (3, 15)
    records = []
    for case in cases(models, quick):
        chosen = [s for s in strategies if case.runs(s)]
        if not chosen:
            continue
        fm_peak = peak_memory(case, quick, "fm", threads=threads)
        for strategy in chosen:
            for share in shares:
                fm_ms, mf_ms, ratio = time_pair(case, quick, strategy, share, warmup, pairs)
                mf_peak = peak_memory(case, quick, "mf", strategy, share, threads)
                record = {"model": case.label, "strategy": strategy, "default": strategy == default,
                          "share_r_ne_t": share, "fm_ms": round(fm_ms, 3), "mf_ms": round(mf_ms, 3),
                          "ratio": round(ratio, 3), "fm_peak_mb": round(fm_peak, 2),
                          "mf_peak_mb": round(mf_peak, 2), "device": case.device}
                records.append(record)
                print_row(record)
    return records


def print_header() -> None:
    print(f"{'model':20s} {'strategy':9s} {'share':>5s} {'FM ms':>9s} {'MF ms':>9s} {'time x':>7s} "
          f"{'FM MB':>8s} {'MF MB':>8s} {'mem x':>6s}  device")


def print_row(rec: dict) -> None:
    mem = rec["mf_peak_mb"] / rec["fm_peak_mb"] if rec["fm_peak_mb"] > 0 else float("nan")
    name = rec["strategy"] + ("*" if rec["default"] else "")
    print(f"{rec['model']:20s} {name:9s} {rec['share_r_ne_t']:5.2f} {rec['fm_ms']:9.2f} {rec['mf_ms']:9.2f} "
          f"{rec['ratio']:7.2f} {rec['fm_peak_mb']:8.1f} {rec['mf_peak_mb']:8.1f} {mem:6.2f}  {rec['device']}",
          flush=True)


def main(argv: list[str] | None = None) -> None:
    models = "mlp,dit,mlp+compile,dit+compile" + (",dit-b4,dit-b4+compile" if torch.cuda.is_available() else "")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=models, help=f"comma-separated (default {models})")
    parser.add_argument("--strategies", default=",".join(JVP_STRATEGIES),
                        help=f"comma-separated JVP strategies from {', '.join(JVP_STRATEGIES)}")
    parser.add_argument("--shares", default=",".join(map(str, SHARES)),
                        help="comma-separated shares of rows with r != t (default: the mix and u-only)")
    parser.add_argument("--quick", action="store_true", help="tiny models and a few steps (tests)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--json", type=Path, help="write the records to this file")
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_worker:
        spec = json.loads(args.memory_worker)
        if spec["threads"]:
            torch.set_num_threads(spec["threads"])
        print(memory_worker(spec))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    strategies = [s for s in args.strategies.split(",") if s]
    unknown = sorted(set(strategies) - set(JVP_STRATEGIES))
    if unknown:
        raise SystemExit(f"unknown strategies {unknown}; choose from {', '.join(JVP_STRATEGIES)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; * = the default strategy "
          f"(objective.jvp); time x = median of per-pair MF/FM ratios; mem x = MF MB / FM MB")
    print_header()
    shares = [float(s) for s in args.shares.split(",") if s]
    records = run([m for m in args.models.split(",") if m], strategies, shares, args.quick, args.threads)
    if args.json:
        args.json.write_text(json.dumps(records, indent=2))
        print(f"wrote {len(records)} records to {args.json}")


if __name__ == "__main__":
    main()
