"""The GPU path checked in one command: trainer, JVP step cost, torch.distributed, FID plumbing, cost model.

    make gpu-check                                   # in the venv; CUDA if present, else CPU with tiny sizes
    PYTHONPATH=. python3 benchmarks/gpu_check.py     # a GPU machine's own python and torch, no venv
    python3 benchmarks/gpu_check.py --json out.json --calibrate   # CUDA: also write dynamics/measured_rates.json

Sections (each one's checks pass, fail or are skipped with the reason; the exit status is 1 if any failed):
1. train: the b4 preset (DiT-B/4, paper optimiser, model.time_scale=1, float32 as the preset) through the
   trainer's own loop on synthetic class-dependent latents written as real shards (dynamics.data.imagenet's
   format); loss finite and falling; the checkpoint kept `resume_steps` before the end, resumed in another run
   directory, ends in the same state as the uninterrupted run (CPU: bit for bit; CUDA: bit for bit with
   --deterministic, else within 0.1 x lr: atomics in the embedding and attention backward kernels reorder
   float sums); step time, peak memory (CUDA: max_memory_allocated; CPU: peak RSS) and img/s.
2. step_cost: MeanFlow step vs flow-matching step, time and peak memory, per JVP strategy and batch, with
   benchmarks/step_cost.py's machinery (CUDA: DiT-B/4 bf16 at batch 64 and 256); the JVP target of each
   strategy against a float64 torch.func.jvp reference on a small batch, in float32 and under the trainer's
   autocast (the target must be float32-accurate). `compiled` runs last and only if the measured time left
   in the budget covers compiling it (CUDA: 285 s in all, so the run stays under 5 minutes).
3. distributed: torch.distributed on one process (nccl on CUDA, gloo on CPU; the trainer's DYNAMICS_FORCE_DIST=1
   switch), one step through the gradient all-reduce, equal to the same step without it.
4. fid: the paper-FID plumbing end to end, with a randomly initialised Inception-v3 (torch-fidelity's
   architecture, weights saved to a file and read back as real ones would be) and a tiny random VAE decoder
   built here (no weights exist offline): EMA samples of run 1 decoded to a uint8 memmap, features, statistics,
   an ADM-style reference .npz written and read back, FID; self-FID must be ~0.
5. estimate: the B/4 GPU-hours `dynamics run ... --scale b4 --dry-run` prints, from the cost model's rate and
   where it comes from, next to the measured throughput; --calibrate (CUDA) writes the measured rate to
   dynamics/measured_rates.json, which the cost model then reads.

Optional dependencies are imported lazily: without torch-fidelity (and torchvision) section 4 is skipped,
without submitit section 5, each saying so. The sections run in the order 1, 3, 4, 5, 2, so the step-cost
table, the part that can stretch, spends what is left of the budget.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

START = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python3 benchmarks/gpu_check.py` from anywhere
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

GPU_BUDGET_S = 285.0  # the whole CUDA variant, start to end: under 5 minutes on one H100/H200
COMPILE_RESERVE_S = 30.0  # left unspent for writing the record and the table
COMPILE_PROBE_S = 120.0  # measuring `compiled`'s compile time (DiT-B/4 forward + JVP + backward) may take this


@dataclass
class Sizes:
    """Everything that differs between the CUDA variant and the CPU one."""

    device: str
    dit: str  # DiT size of the trained model
    patch: int  # 0: the size's own
    latent: tuple[int, int, int]
    classes: int
    samples: int  # synthetic latents in the shards
    shard_size: int
    batch: int
    train_steps: int
    resume_steps: int
    log_every: int
    bench_models: list[str]  # step_cost model names
    shares: list[float]
    strategies: list[str]
    pairs: int
    jvp_batch: int
    fid_samples: int
    fid_batch: int
    budget_s: float | None  # None: no budget (CPU)


def sizes_for(device: str) -> Sizes:
    from dynamics.meanflow.target import JVP_STRATEGIES

    if device == "cuda":
        return Sizes("cuda", "B/4", 0, (4, 32, 32), 1000, 8192, 2048, 256, 200, 10, 10, ["dit-b4"],
                     [0.25, 1.0], list(JVP_STRATEGIES), 10, 8, 256, 128, GPU_BUDGET_S)
    # CPU: a tiny DiT on 4x8x8 latents; `compiled` compiles for 5-40 s on CPU, so it is left to --strategies
    return Sizes("cpu", "tiny", 2, (4, 8, 8), 10, 256, 100, 16, 48, 4, 4, ["dit"], [0.25],
                 [s for s in JVP_STRATEGIES if s != "compiled"], 3, 4, 6, 6, None)


@dataclass
class Section:
    name: str
    status: str = "ok"  # ok | failed | skipped
    checks: dict[str, bool] = field(default_factory=dict)
    values: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def check(self, name: str, ok: bool, note: str = "") -> None:
        self.checks[name] = bool(ok)
        if not ok:
            self.status = "failed"
            if note:
                self.notes.append(f"{name}: {note}")


def elapsed() -> float:
    return time.perf_counter() - START


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def set_deterministic() -> None:
    """The flags under which CUDA training repeats bit for bit (at some cost in speed)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


# -- 1. train ------------------------------------------------------------------------------------------------

def write_synthetic_shards(out: Path, sz: Sizes, seed: int = 0) -> dict:
    """Learnable latents in the shard format: a pattern shared by all samples, one per class and noise (std about
    1 as scaled SD-VAE latents). The shared pattern is what a network learns first (its mean velocity), so the
    loss falls within a few hundred steps at the paper's learning rate."""
    from dynamics.data.imagenet import write_shards

    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(*sz.latent, generator=g)
    means = 0.5 * torch.randn(sz.classes, *sz.latent, generator=g)
    labels = torch.randint(0, sz.classes, (sz.samples,), generator=g)
    latents = shared + means[labels] + 0.3 * torch.randn(sz.samples, *sz.latent, generator=g)
    return write_shards(out, latents.half(), labels, sz.shard_size, vae="synthetic (gpu_check)",
                        num_classes=sz.classes)


def train_config(sz: Sizes, data: Path):
    """The b4 preset (paper DiT-B/4 config) with unscaled time, on the synthetic shards, `train_steps` long."""
    from dynamics.config import preset

    cfg = preset("b4")
    cfg.name = "gpu-check"
    cfg.data.path = str(data)
    cfg.model.size, cfg.model.patch_size, cfg.model.time_scale = sz.dit, sz.patch, 1.0
    tc = cfg.train
    tc.steps_per_epoch, tc.epochs, tc.batch_size = sz.train_steps, 1.0, sz.batch
    tc.log_every, tc.ckpt_every = sz.log_every, sz.train_steps
    tc.keep_epochs = [(sz.train_steps - sz.resume_steps) / sz.train_steps]
    if sz.device == "cpu":  # a tiny DiT at the paper's lr 1e-4 barely moves in 40 steps
        tc.threads, tc.lr = 1, 1e-3
    cfg.eval.every_epochs = 0  # FID runs through section 4, not the loop
    return cfg.validate()


def states_equal(a: dict, b: dict, tol: float) -> tuple[bool, float]:
    """(all tensors within tol, largest absolute difference) over model, EMA and optimizer state."""
    worst = 0.0
    for key in ("model", "ema"):
        for name, x in a[key].items():
            worst = max(worst, float((x.double() - b[key][name].double()).abs().max()) if x.numel() else 0.0)
    for i, s in a["optimizer"]["state"].items():
        for name, x in s.items():
            if torch.is_tensor(x):
                y = b["optimizer"]["state"][i][name]
                worst = max(worst, float((x.double() - y.double()).abs().max()))
    return worst <= tol, worst


def section_train(sz: Sizes, work: Path, deterministic: bool) -> Section:
    from dynamics.results import METRICS_FILE, checkpoint_path, read_jsonl
    from dynamics.train import Trainer

    sec = Section("train")
    index = write_synthetic_shards(work / "shards", sz)
    sec.values["shards"] = {"samples": index["num_samples"], "files": len(index["shards"])}
    cfg = train_config(sz, work / "shards")
    sec.values.update(model=f"DiT-{sz.dit}", batch=sz.batch, steps=sz.train_steps, time_scale=cfg.model.time_scale,
                      precision=cfg.train.precision, jvp=cfg.objective.jvp)
    if sz.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(cfg, work / "run", sz.device)
    sec.values["parameters_m"] = round(sum(p.numel() for p in trainer.model.parameters()) / 1e6, 2)
    status = trainer.run()
    sync(sz.device)
    peak = torch.cuda.max_memory_allocated() / 2**20 if sz.device == "cuda" else peak_rss_mb()
    rows = read_jsonl(work / "run" / METRICS_FILE)
    losses = [r["loss_v"] for r in rows]
    sec.check("run_done", status.get("state") == "done", f"status {status}")
    sec.check("loss_finite", all(np.isfinite([r["loss"] for r in rows])) and all(np.isfinite(losses)))
    k = max(1, len(losses) // 4)
    first, last = float(np.mean(losses[:k])), float(np.mean(losses[-k:]))
    sec.values.update(loss_v_first=round(first, 4), loss_v_last=round(last, 4))
    sec.check("loss_falling", last < 0.95 * first, f"v-loss {first:.4f} -> {last:.4f}")
    # steady-state speed: between the first logged step after warm-up and the kept checkpoint (a save)
    kept = sz.train_steps - sz.resume_steps
    timed = [r for r in rows if r["step"] <= kept]
    a, b = timed[min(1, len(timed) - 2)], timed[-1]
    steps_per_s = (b["step"] - a["step"]) / max(1e-9, b["time"] - a["time"])
    sec.values.update(step_ms=round(1e3 / steps_per_s, 2), steps_per_s=round(steps_per_s, 3),
                      img_per_s=round(steps_per_s * sz.batch, 1), peak_mb=round(peak, 1),
                      peak_kind="max_memory_allocated" if sz.device == "cuda" else "peak RSS of the process")
    # resume: the checkpoint kept at step `kept`, continued in a second run directory
    resumed_dir = work / "resumed"
    checkpoint_path(resumed_dir).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(checkpoint_path(work / "run", cfg.train.keep_epochs[0]), checkpoint_path(resumed_dir))
    again = Trainer(cfg, resumed_dir, sz.device)
    again.run()
    exact = sz.device == "cpu" or deterministic
    tol = 0.0 if exact else 0.1 * cfg.train.lr
    same, worst = states_equal(trainer.state_dict(), again.state_dict(), tol)
    sec.values.update(resume_from_step=kept, resume_max_abs_diff=worst, resume_tolerance=tol)
    loss_a = [r["loss"] for r in rows if r["step"] > kept]
    loss_b = [r["loss"] for r in read_jsonl(resumed_dir / METRICS_FILE) if r["step"] > kept]
    sec.check("resume_identical", same and len(loss_b) == len(loss_a)
              and (loss_a == loss_b if exact else np.allclose(loss_a, loss_b, rtol=1e-3)),
              f"max |diff| {worst:.3g} > {tol:g}")
    if not exact:
        sec.notes.append("CUDA without --deterministic: resume compared within 0.1 x lr (kernel nondeterminism); "
                         "--deterministic (use_deterministic_algorithms, CUBLAS_WORKSPACE_CONFIG=:4096:8, "
                         "cudnn.deterministic) makes it bit for bit")
    return sec


# -- 2. step cost ----------------------------------------------------------------------------------------------

def jvp_reference_errors(sz: Sizes, strategies: list[str]) -> dict:
    """Relative max error of each strategy's target against float64 torch.func.jvp, in float32 and under the
    trainer's autocast, on `jvp_batch` rows (the first quarter v rows)."""
    import step_cost
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from dynamics.meanflow import mean_flow_target
    from dynamics.meanflow.path import expand_like

    case = step_cost.cases(sz.bench_models, quick=sz.device == "cpu")[0]
    model, shape, classes = step_cost.build_case_model(case, quick=sz.device == "cpu")
    if hasattr(model, "t_embedder"):  # unscaled time, as the trained model
        model.t_embedder.time_scale = model.dt_embedder.time_scale = 1.0
    model = model.to(sz.device)
    n, n_v = sz.jvp_batch, sz.jvp_batch // 4
    g = torch.Generator().manual_seed(3)
    z, v = torch.randn(n, *shape, generator=g, dtype=torch.float64), torch.randn(n, *shape, generator=g,
                                                                                   dtype=torch.float64)
    t = 0.1 + 0.8 * torch.rand(n, generator=g, dtype=torch.float64)
    r = t * torch.rand(n, generator=g, dtype=torch.float64)
    r[:n_v] = t[:n_v]
    y = torch.randint(0, classes, (n,), generator=g).to(sz.device) if classes else None
    z, r, t, v = (a.to(sz.device) for a in (z, r, t, v))
    model64 = copy.deepcopy(model).double()
    with sdpa_kernel([SDPBackend.MATH]):
        _, dudt = torch.func.jvp(lambda z_, r_, t_: model64(z_, r_, t_, y), (z, r, t),
                                 (v, torch.zeros_like(r), torch.ones_like(t)))
    ref = v - expand_like(t - r, v) * dudt
    ref = ref.detach()
    scale = float(ref.abs().max())
    out = {}
    for strategy in strategies:
        errs = {}
        for mode, autocast in (("fp32", False), ("train", sz.device == "cuda")):
            with torch.autocast(sz.device, dtype=torch.bfloat16, enabled=autocast):
                _, tgt = mean_flow_target(model, z.float(), r.float(), t.float(), v.float(), y, n_v=n_v,
                                          strategy=strategy)
            errs[mode] = float((tgt.double() - ref).abs().max()) / scale
        out[strategy] = errs
    return out


def compile_fits(sz: Sizes, need_s: float) -> tuple[bool, str]:
    """Whether `need_s` more seconds fit what is left of the budget (always, without a budget)."""
    if sz.budget_s is None:
        return True, ""
    left = sz.budget_s - elapsed() - COMPILE_RESERVE_S
    return need_s <= left, f"needs ~{need_s:.0f} s, {left:.0f} s of the budget left"


def section_step_cost(sz: Sizes) -> Section:
    import step_cost

    from dynamics.config import ObjectiveConfig, preset

    sec = Section("step_cost")
    quick = sz.device == "cpu"
    sec.values["default_strategy"] = ObjectiveConfig().jvp
    sec.values["preset_strategy"] = {p: preset(p).objective.jvp for p in ("b4", "m2", "l2", "xl2")}
    eager = [s for s in sz.strategies if s != step_cost.COMPILED]
    errors = jvp_reference_errors(sz, eager)
    sec.values["jvp_rel_error"] = errors
    for strategy, errs in errors.items():
        sec.check(f"jvp_fp32_{strategy}", errs["fp32"] <= 1e-4, f"{errs['fp32']:.2e} > 1e-4")
        if sz.device == "cuda":
            sec.check(f"jvp_target_float32_{strategy}", errs["train"] <= 1e-3,
                      f"{errs['train']:.2e} under bf16 autocast: the target is not float32-accurate")
    rows: list[dict] = []
    skipped: list[str] = []
    compile_s = 0.0
    for case in step_cost.cases(sz.bench_models, quick):
        fm_peak = measure_peak(case, quick, "fm")
        for share in sz.shares:
            for strategy in eager:
                if sz.budget_s is not None and elapsed() > sz.budget_s - COMPILE_RESERVE_S:
                    skipped.append(f"{strategy} @{case.batch} r!=t {share}: budget spent ({elapsed():.0f} s)")
                    continue
                rows.append(cost_row(case, quick, strategy, share, fm_peak, sz.pairs))
    if step_cost.COMPILED in sz.strategies:
        # Compile time is measured once, on the first batch size (a warm-up MF step), if a compile can still fit;
        # then each batch size's rows run only if recompiling FM and MF there, and timing them, fit what is left.
        compiled_cases = step_cost.cases([m + "+compile" for m in sz.bench_models], quick)
        fits, why = compile_fits(sz, COMPILE_PROBE_S)
        if not fits:
            skipped.append(f"compiled: compile time not measured ({why})")
            compiled_cases = []
        for i, case in enumerate(compiled_cases):
            if i == 0:
                t0 = time.perf_counter()
                warm = step_cost.Stepper(case, quick, "mf", step_cost.COMPILED, sz.shares[0])
                warm.step()  # compiles the MF step at this batch layout
                sync(case.device)
                compile_s = time.perf_counter() - t0
                sec.values["compile_s"] = round(compile_s, 1)
                del warm
            need = (1.0 if i == 0 else 2.0) * compile_s + 20.0  # FM (and, past the first, MF) compile + steps
            fits, why = compile_fits(sz, need)
            if not fits:
                skipped.append(f"compiled @{case.batch}: compile took {compile_s:.0f} s; {why}")
                continue
            fm_peak = measure_peak(case, quick, "fm")
            rows.append(cost_row(case, quick, step_cost.COMPILED, sz.shares[0], fm_peak, sz.pairs))
    sec.values["rows"] = rows
    sec.values["goals"] = goals(rows)
    if skipped:
        sec.notes += [f"skipped {s}" for s in skipped]
    sec.check("all_finite", all(np.isfinite([r["fm_ms"], r["mf_ms"], r["mf_peak_mb"]]).all() for r in rows))
    return sec


# The performance goals at the largest batch (recorded, never asserted): time x at the default mix, time x
# in a u-only phase, peak memory x, and MeanFlow's share of flow matching's img/s.
GOALS = {"mix_time_x": 1.15, "u_only_time_x": 1.5, "mem_x": 1.1, "img_s_share": 0.85}


def goals(rows: list[dict]) -> dict:
    """Per strategy, at the largest batch measured: each goal's value and whether it is met."""
    if not rows:
        return {}
    big = max(r["batch"] for r in rows)
    out: dict[str, dict] = {}
    for r in rows:
        if r["batch"] != big:
            continue
        g = out.setdefault(r["strategy"], {"batch": big})
        if r["share_r_ne_t"] == 1.0:
            g["u_only_time_x"] = (r["time_ratio"], r["time_ratio"] <= GOALS["u_only_time_x"])
        else:
            g["mix_time_x"] = (r["time_ratio"], r["time_ratio"] <= GOALS["mix_time_x"])
            if r["mem_ratio"] is not None:
                g["mem_x"] = (r["mem_ratio"], r["mem_ratio"] <= GOALS["mem_x"])
            g["img_s_share"] = (r["throughput_ratio"], r["throughput_ratio"] >= GOALS["img_s_share"])
    return out


def measure_peak(case, quick: bool, kind: str, strategy: str = "", share: float = 0.0) -> float:
    """step_cost's peak memory above the steady state, in this process: on CUDA max_memory_allocated (exact); on
    CPU the peak RSS, which the allocator blurs at these tiny sizes (step_cost.py measures CPU memory properly, in
    fresh processes, which would cost seconds each here)."""
    import step_cost

    spec = {"case": asdict(case), "quick": quick, "kind": kind, "strategy": strategy, "share": share,
            "warmup": 2, "steps": 2}
    value = step_cost.memory_worker(spec)
    if case.device == "cuda":
        torch.cuda.empty_cache()
    return value


def cost_row(case, quick: bool, strategy: str, share: float, fm_peak: float, pairs: int) -> dict:
    import step_cost

    from dynamics.config import ObjectiveConfig

    fm_ms, mf_ms, ratio = step_cost.time_pair(case, quick, strategy, share, 2 if quick else 3, pairs)
    mf_peak = measure_peak(case, quick, "mf", strategy, share)
    if case.device == "cuda":
        torch.cuda.empty_cache()
    return {"model": case.label, "batch": case.batch, "strategy": strategy,
            "default": strategy == ObjectiveConfig().jvp, "share_r_ne_t": share, "fm_ms": round(fm_ms, 3),
            "mf_ms": round(mf_ms, 3), "time_ratio": round(ratio, 3), "fm_peak_mb": round(fm_peak, 2),
            "mf_peak_mb": round(mf_peak, 2),
            "mem_ratio": round(mf_peak / fm_peak, 3) if fm_peak > 0 else None,
            "throughput_ratio": round(fm_ms / mf_ms, 3)}


# -- 3. distributed --------------------------------------------------------------------------------------------

def section_distributed(sz: Sizes, work: Path) -> Section:
    import torch.distributed as dist

    from dynamics import distributed
    from dynamics import train as train_mod

    sec = Section("distributed")
    cfg = train_config(sz, work / "shards")
    cfg.train.steps_per_epoch, cfg.train.keep_epochs = 2, []
    calls = []
    original = distributed.wrap_model

    def counting(model, device):
        calls.append(1)  # the model is wrapped in DDP once, at the first step
        return original(model, device)

    plain = train_mod.Trainer(cfg, work / "dist-plain", sz.device)
    plain.train_step()
    os.environ[train_mod.FORCE_DIST_ENV] = "1"
    distributed.wrap_model = counting
    try:
        forced = train_mod.Trainer(cfg, work / "dist-forced", sz.device)
        sec.values.update(backend=dist.get_backend(), world_size=dist.get_world_size())
        forced.train_step()
        sync(sz.device)
    finally:
        distributed.wrap_model = original
        os.environ.pop(train_mod.FORCE_DIST_ENV, None)
        if dist.is_initialized():
            dist.destroy_process_group()
    sec.check("backend", sec.values["backend"] == ("nccl" if sz.device == "cuda" else "gloo"))
    sec.check("all_reduce_called", calls == [1], f"calls {calls}")
    same, worst = states_equal(plain.state_dict(), forced.state_dict(), 0.0 if sz.device == "cpu" else 1e-5)
    sec.values["max_abs_diff_vs_plain"] = worst
    sec.check("same_step_as_without", same, f"max |diff| {worst:.3g}")
    return sec


# -- 4. FID ----------------------------------------------------------------------------------------------------

class TinyDecoder(torch.nn.Module):
    """A random VAE-decoder stand-in: latents [N, 4, h, w] (scaled as SD-VAE's) -> images in [-1, 1] at 8x the
    size, with diffusers' `decode(z).sample` interface."""

    def __init__(self, channels: int = 4):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(channels, 16, 3, padding=1), torch.nn.SiLU(), torch.nn.Upsample(scale_factor=2),
            torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.SiLU(), torch.nn.Upsample(scale_factor=4),
            torch.nn.Conv2d(16, 3, 3, padding=1), torch.nn.Tanh())

    def decode(self, z: torch.Tensor):
        return type("DecoderOutput", (), {"sample": self.net(z.float())})()


def random_inception_weights(path: Path) -> None:
    """torch-fidelity's Inception-v3 (inception-v3-compat) with random weights, saved where real ones would be."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class RandomInception(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, *args, **kwargs):
            if state_dict:  # the empty dict below: keep the random initialisation
                return super().load_state_dict(state_dict, *args, **kwargs)
            return None

    empty = path.with_suffix(".empty")
    torch.save({}, empty)
    torch.manual_seed(0)
    model = RandomInception("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    for m in model.modules():  # variance-preserving init, so the 2048-d features neither vanish nor blow up
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    torch.save(model.state_dict(), path)


def section_fid(sz: Sizes, work: Path) -> Section:
    sec = Section("fid")
    try:
        import torch_fidelity  # noqa: F401
    except ImportError as exc:
        sec.status = "skipped"
        sec.notes.append(f"torch-fidelity not importable ({exc}); carry its wheel (see docs/performance.md)")
        return sec
    from dynamics.config import RunConfig
    from dynamics.data.imagenet import SCALE_FACTOR
    from dynamics.metrics.fid import (
        ImageDataset,
        feature_statistics,
        inception_features,
        inception_fid,
        load_reference_stats,
    )
    from dynamics.metrics.paper_fid import write_images
    from dynamics.models import build_model
    from dynamics.results import checkpoint_path

    device = torch.device(sz.device)
    state = torch.load(checkpoint_path(work / "run"), map_location=device, weights_only=False)
    cfg = RunConfig.from_dict(state["config"])
    model = build_model(cfg.model, sz.latent, sz.classes).to(device)
    model.load_state_dict(state["ema"])
    model.eval()
    decoder = TinyDecoder(sz.latent[0]).to(device)

    def decode(latents: torch.Tensor) -> torch.Tensor:
        return decoder.decode(latents / SCALE_FACTOR).sample

    weights = work / "inception_random.pth"
    random_inception_weights(weights)
    t0 = time.perf_counter()
    with torch.no_grad():
        images = write_images(model, decode, work / "fid_u1.u8", sz.fid_samples, 1, "u", sz.classes, sz.latent,
                              sz.fid_batch, device)
    sec.values["decode_s"] = round(time.perf_counter() - t0, 2)
    sec.values["images"] = [len(images), *images[0].shape]
    shape = (len(images), *images[0].shape)
    reread = ImageDataset(np.memmap(work / "fid_u1.u8", dtype=np.uint8, mode="r", shape=shape))
    sec.check("memmap_readback", len(reread) == sz.fid_samples and torch.equal(reread[len(reread) - 1],
                                                                               images[len(images) - 1]))
    t0 = time.perf_counter()
    features = inception_features(images, str(weights), batch_size=sz.fid_batch, cuda=sz.device == "cuda")
    sec.values["features_s"] = round(time.perf_counter() - t0, 2)
    sec.check("features_shape", tuple(features.shape) == (sz.fid_samples, 2048), f"{tuple(features.shape)}")
    sec.check("features_finite", bool(torch.isfinite(features).all()))
    mu, sigma = feature_statistics(features)
    ref = work / "ref_stats.npz"
    np.savez(ref, mu=mu.astype(np.float32), sigma=sigma)  # ADM's reference layout: mu [2048], sigma [2048, 2048]
    mu_r, sigma_r = load_reference_stats(ref)
    sec.check("reference_readback", mu_r.shape == (2048,) and np.array_equal(sigma_r, sigma)
              and np.allclose(mu_r, mu, rtol=1e-6, atol=1e-6))
    # the whole of `dynamics fid`'s metric on the memmap against the images' own statistics: FID ~ 0
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "not 50,000 samples": expected here
        fid = inception_fid(images, ref, weights, batch_size=sz.fid_batch, cuda=sz.device == "cuda")
    tol = (1e-4 if sz.device == "cuda" else 1e-6) * max(1.0, float(np.trace(sigma)))
    sec.values.update(self_fid=fid, self_fid_tolerance=tol, trace_sigma=float(np.trace(sigma)))
    sec.check("self_fid_zero", bool(np.isfinite(fid)) and abs(fid) <= tol, f"{fid:.3g} > {tol:.3g}")
    sec.notes.append("random Inception and decoder: the values check the plumbing, not image quality")
    return sec


# -- 5. estimate -----------------------------------------------------------------------------------------------

def section_estimate(sz: Sizes, train: Section, calibrate: bool, rates_file: Path | None) -> Section:
    sec = Section("estimate")
    try:
        from dynamics import launch
    except ImportError as exc:
        sec.status = "skipped"
        sec.notes.append(f"dynamics.launch not importable ({exc}); carry submitit's wheel (see docs/performance.md)")
        return sec
    from dynamics.config import preset

    cfg = preset("b4")
    rate = launch.step_rate("b4", rates_file)
    hours = launch.estimate_seconds(cfg, 0) / 3600
    sec.values.update(model_rate_steps_per_s=round(rate.steps_per_s, 3), model_device=rate.device,
                      model_origin=rate.origin, model_source=rate.source, b4_run_gpu_hours=round(hours, 1),
                      b4_run_steps=cfg.total_steps())
    measured = train.values.get("steps_per_s")
    if measured:
        sec.values["measured_steps_per_s"] = measured
        sec.values["measured_img_per_s"] = train.values["img_per_s"]
        if sz.device == "cuda":
            sec.values["b4_run_gpu_hours_at_measured"] = round(hours * rate.steps_per_s / measured, 1)
        else:
            sec.notes.append("CPU tiny DiT: the measured rate is not comparable with the B/4 GPU figure")
    if calibrate:
        if sz.device != "cuda" or not measured:
            sec.check("calibrate", False, "--calibrate needs the CUDA variant's measured B/4 rate")
        else:
            path = write_rates(rates_file or launch.MEASURED_RATES_FILE, measured, train.values["img_per_s"],
                               sz.batch, device_name())
            again = launch.step_rate("b4", path)
            sec.values["calibrated_file"] = str(path)
            sec.check("calibrate", abs(again.steps_per_s - measured) < 1e-9, "cost model did not read it back")
    return sec


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"


def write_rates(path: Path, steps_per_s: float, img_per_s: float, batch: int, device: str) -> Path:
    """Record the measured B/4 rate for the cost model (dynamics.launch.step_rate), keeping other scales."""
    path = Path(path)
    data = json.loads(path.read_text()) if path.exists() else {}
    data["b4"] = {"steps_per_s": steps_per_s, "img_per_s": img_per_s, "batch": batch, "device": f"1 {device}",
                  "measured": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "cuda": torch.version.cuda,
                  "by": "benchmarks/gpu_check.py (b4 preset, time_scale 1, default mix, the trainer's loop)"}
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


# -- the run and the table -------------------------------------------------------------------------------------

def run_section(name: str, fn: Callable[[], Section], record: dict) -> Section:
    t0 = time.perf_counter()
    try:
        sec = fn()
    except Exception as exc:  # one broken section must not hide the others' results
        sec = Section(name, status="failed", notes=[f"{type(exc).__name__}: {exc}"])
        sec.values["traceback"] = traceback.format_exc(limit=8)
    sec.seconds = round(time.perf_counter() - t0, 2)
    record["sections"][name] = asdict(sec)
    print_section(sec)
    return sec


def print_section(sec: Section) -> None:
    checks = ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in sec.checks.items())
    print(f"\n== {sec.name}: {sec.status.upper()} ({sec.seconds:.1f} s){'  ' + checks if checks else ''}",
          flush=True)
    for key, value in sec.values.items():
        if key not in ("rows", "traceback", "goals"):
            print(f"   {key}: {value}")
    for row in sec.values.get("rows", []):
        if row is sec.values["rows"][0]:
            print(f"   {'model':16s} {'strategy':9s} {'r!=t':>5s} {'FM ms':>9s} {'MF ms':>9s} {'time x':>6s} "
                  f"{'FM MB':>9s} {'MF MB':>9s} {'mem x':>6s} {'img/s x':>7s}")
        name = row["strategy"] + ("*" if row["default"] else "")
        print(f"   {row['model']:16s} {name:9s} {row['share_r_ne_t']:5.2f} {row['fm_ms']:9.2f} {row['mf_ms']:9.2f} "
              f"{row['time_ratio']:6.2f} {row['fm_peak_mb']:9.1f} {row['mf_peak_mb']:9.1f} "
              f"{row['mem_ratio'] or float('nan'):6.2f} {row['throughput_ratio']:7.2f}")
    if sec.values.get("goals"):
        print("   goals (" + ", ".join(f"{k} {'<=' if k != 'img_s_share' else '>='} {v}" for k, v in GOALS.items())
              + "): " + "; ".join(f"{s} " + ", ".join(f"{k} {v[0]:.2f} {'met' if v[1] else 'MISSED'}"
                                                       for k, v in g.items() if k != "batch")
                                  for s, g in sec.values["goals"].items()))
    for note in sec.notes:
        print(f"   note: {note}")
    if "traceback" in sec.values:
        print(sec.values["traceback"])


def environment(sz: Sizes) -> dict:
    env = {"device": sz.device, "device_name": device_name(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "python": platform.python_version(), "budget_s": sz.budget_s}
    for mod in ("torch_fidelity", "submitit", "torchvision", "tqdm"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - missing or broken: say so
            env[mod] = None
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--json", type=Path, help="write the record here (default: gpu_check.json in --work)")
    parser.add_argument("--work", type=Path, help="scratch directory (default: a temporary one, removed)")
    parser.add_argument("--sections", default="train,distributed,fid,estimate,step_cost",
                        help="comma-separated subset, in this order (train is needed by fid and estimate)")
    parser.add_argument("--strategies", help="comma-separated JVP strategies for step_cost (default: the variant's)")
    parser.add_argument("--deterministic", action="store_true",
                        help="CUDA: deterministic kernels, so the resume check is bit for bit")
    parser.add_argument("--calibrate", action="store_true",
                        help="CUDA: write the measured B/4 rate to dynamics/measured_rates.json for the cost model")
    parser.add_argument("--rates-file", type=Path, help=argparse.SUPPRESS)  # tests: another rates file
    args = parser.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    if args.deterministic:
        set_deterministic()
    sz = sizes_for(device)
    if args.strategies:
        from dynamics.meanflow.target import JVP_STRATEGIES

        sz.strategies = [s for s in args.strategies.split(",") if s]
        bad = sorted(set(sz.strategies) - set(JVP_STRATEGIES))
        if bad:
            parser.error(f"--strategies: unknown {bad}; choose from {', '.join(JVP_STRATEGIES)}")
    wanted = [s for s in args.sections.split(",") if s]
    order = ["train", "distributed", "fid", "estimate", "step_cost"]
    if set(wanted) - set(order):
        parser.error(f"--sections: unknown {sorted(set(wanted) - set(order))}; choose from {', '.join(order)}")
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    if device == "cpu":
        torch.set_num_threads(1)
    record: dict = {"environment": environment(sz), "sizes": asdict(sz), "sections": {}}
    print(f"gpu_check on {device} ({record['environment']['device_name']}), torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}; budget {sz.budget_s or 'none'} s; work dir {work}")
    train = Section("train", status="skipped", notes=["not requested"])
    for name in order:
        if name not in wanted:
            continue
        if name == "fid" and not (work / "run" / "checkpoints").is_dir():
            record["sections"][name] = asdict(Section(name, "skipped", notes=["needs the run trained by `train`"]))
            continue
        fn: Callable[[], Section] = {
            "train": lambda: section_train(sz, work, args.deterministic),
            "distributed": lambda: section_distributed(sz, work),
            "fid": lambda: section_fid(sz, work),
            "estimate": lambda train=train: section_estimate(sz, train, args.calibrate, args.rates_file),
            "step_cost": lambda: section_step_cost(sz),
        }[name]
        if name == "distributed" and not (work / "shards" / "index.json").exists():
            write_synthetic_shards(work / "shards", sz)
        sec = run_section(name, fn, record)
        if name == "train":
            train = sec
    record["total_s"] = round(elapsed(), 1)
    statuses = {k: v["status"] for k, v in record["sections"].items()}
    record["ok"] = all(s != "failed" for s in statuses.values())
    over = sz.budget_s is not None and record["total_s"] > sz.budget_s + COMPILE_RESERVE_S
    print(f"\n== total {record['total_s']} s" + (f" (over the {sz.budget_s:.0f} s budget)" if over else "")
          + ": " + ", ".join(f"{k} {v}" for k, v in statuses.items()))
    out = args.json or work / "gpu_check.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"record: {out}")
    if args.work is None and args.json is not None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
