"""Every JVP strategy computes the same MeanFlow target and the same gradients, and the step-cost
benchmark writes its records.

The reference is independent of the strategies: torch.func.jvp on a float64 copy of the model, with the
tangent (v, 0, 1) at (z, r, t). The strategies run in float32 and must agree to float32 precision.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from dynamics.config import ConfigError, ObjectiveConfig, SamplerConfig
from dynamics.meanflow import MeanFlowLoss, build_sampler, mean_flow_target
from dynamics.meanflow.path import expand_like
from dynamics.meanflow.target import JVP_STRATEGIES, _LinearJVP
from dynamics.models.dit import build_dit
from dynamics.models.mlp import MLP

N, N_V = 8, 3  # batch rows, of which the first N_V are v rows (r = t)
EAGER = [s for s in JVP_STRATEGIES if s != "compiled"]
# `compiled` spends 5-40 s per model compiling on CPU: marked slow (still run by `make test`).
ALL = EAGER + [pytest.param("compiled", marks=pytest.mark.slow)]


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return MLP(data_dim=2, width=32, depth=3)


def tiny_dit() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_dit("tiny", input_size=4, in_channels=1, num_classes=0, patch_size=2)
    with torch.no_grad():  # the zero-initialised layers would make u identically 0
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.1)
    return model


MODELS = {"mlp": (mlp, (2,)), "dit": (tiny_dit, (1, 4, 4))}


def batch(shape: tuple[int, ...], dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(N, *shape, generator=g, dtype=torch.float64)
    v = torch.randn(N, *shape, generator=g, dtype=torch.float64)
    t = 0.1 + 0.8 * torch.rand(N, generator=g, dtype=torch.float64)
    r = t * torch.rand(N, generator=g, dtype=torch.float64)
    r[:N_V] = t[:N_V]
    return tuple(a.to(dtype) for a in (z, r, t, v))


def reference(model: torch.nn.Module, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, u_tgt) in float64 by torch.func.jvp with the tangent (v, 0, 1)."""
    model64 = copy.deepcopy(model).double()
    z, r, t, v = batch(shape, torch.float64)
    with sdpa_kernel([SDPBackend.MATH]):  # the fused attention kernels have no forward-mode rule
        u, dudt = torch.func.jvp(lambda z_, r_, t_: model64(z_, r_, t_), (z, r, t),
                                 (v, torch.zeros_like(r), torch.ones_like(t)))
    return u, v - expand_like(t - r, v) * dudt


def close_to(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    """Float32 precision: max error <= 1e-4 of the largest value. The DiT's sinusoidal time features
    (t scaled by 1000) amplify float32 rounding ~1000-fold in d/dt; a plain float32 torch.func.jvp is
    2e-5 off there, a wrong tangent O(1)."""
    expected = expected.detach()
    return float((actual.detach().double() - expected).abs().max()) <= 1e-4 * max(1.0, float(expected.abs().max()))


@pytest.mark.parametrize("strategy", ALL)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_strategy_matches_float64_reference(name, strategy):
    make, shape = MODELS[name]
    model = make()
    u_ref, tgt_ref = reference(model, shape)
    u, u_tgt = mean_flow_target(model, *batch(shape), None, n_v=N_V, strategy=strategy)
    assert u.dtype == torch.float32 and u.requires_grad and not u_tgt.requires_grad
    assert close_to(u, u_ref) and close_to(u_tgt, tgt_ref)
    z, r, t, v = batch(shape)
    assert torch.equal(u_tgt[:N_V], v[:N_V])  # the v rows' target is v itself
    if strategy != "compiled":  # the edge layouts: u rows only (a u-only phase), v rows only
        u, u_tgt = mean_flow_target(model, z[N_V:], r[N_V:], t[N_V:], v[N_V:], None, n_v=0, strategy=strategy)
        assert close_to(u, u_ref[N_V:]) and close_to(u_tgt, tgt_ref[N_V:])
        u, u_tgt = mean_flow_target(model, z[:N_V], r[:N_V], t[:N_V], v[:N_V], None, n_v=N_V, strategy=strategy)
        assert close_to(u, u_ref[:N_V]) and torch.equal(u_tgt, v[:N_V])


@pytest.mark.parametrize("strategy", EAGER)
def test_rows_found_without_the_layout(strategy):
    """n_v=None: the u rows are found by r != t wherever they are, with the same result."""
    model = mlp()
    z, r, t, v = batch((2,))
    perm = torch.tensor([5, 0, 3, 7, 1, 2, 6, 4])
    u, u_tgt = mean_flow_target(model, z[perm], r[perm], t[perm], v[perm], None, n_v=None, strategy=strategy)
    u_ref, tgt_ref = reference(model, (2,))
    assert close_to(u, u_ref[perm]) and close_to(u_tgt, tgt_ref[perm])


def loss_gradients(model: torch.nn.Module, shape: tuple[int, ...], strategy: str) -> list[torch.Tensor]:
    model = copy.deepcopy(model).double()
    z, r, t, v = batch(shape, torch.float64)
    x = z - expand_like(t, z) * v  # the data point whose path through (z, t) has velocity v
    e = x + v
    loss_fn = MeanFlowLoss(build_sampler(SamplerConfig()), jvp_strategy=strategy)
    out = loss_fn.loss(model, x, e, t, r, None, n_v=N_V)
    return torch.autograd.grad(out.loss, list(model.parameters()))


@functools.cache
def full_gradients(name: str) -> list[torch.Tensor]:
    make, shape = MODELS[name]
    return loss_gradients(make(), shape, "full")


@pytest.mark.parametrize("strategy", [s for s in ALL if s != "full"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_loss_gradients_agree_across_strategies(name, strategy):
    """The gradients of MeanFlowLoss (adaptive weight) with the same randomness, against `full`."""
    make, shape = MODELS[name]
    expected = full_gradients(name)
    for g, g_ref in zip(loss_gradients(make(), shape, strategy), expected):
        assert torch.allclose(g, g_ref, rtol=1e-9, atol=1e-12)


def test_linear_rule_is_exact_for_every_tangent():
    """_LinearJVP against F.linear: tangents of the input, the weight and the bias, and the backward."""
    g = torch.Generator().manual_seed(3)
    args = [torch.randn(*s, generator=g, dtype=torch.float64) for s in ((5, 4), (3, 4), (3,))]
    tangents = [torch.randn_like(a) for a in args]
    for mask in ([1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]):
        tan = [d if m else torch.zeros_like(d) for d, m in zip(tangents, mask)]
        _, ours = torch.func.jvp(_LinearJVP.apply, tuple(args), tuple(tan))
        _, theirs = torch.func.jvp(F.linear, tuple(args), tuple(tan))
        assert torch.allclose(ours, theirs, atol=1e-12)
    leaves = [a.clone().requires_grad_() for a in args]
    assert torch.autograd.gradcheck(_LinearJVP.apply, tuple(leaves))


@pytest.mark.parametrize("strategy", EAGER)
def test_strategies_run_under_bf16_autocast(strategy):
    """The GPU path: under bf16 autocast the target is finite and the gradients reach float32 weights."""
    model = tiny_dit()
    z, r, t, v = batch((1, 4, 4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        u, u_tgt = mean_flow_target(model, z, r, t, v, None, n_v=N_V, strategy=strategy)
        loss = (u.float() - u_tgt.float()).square().mean()
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert torch.isfinite(u_tgt).all() and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_config_offers_every_strategy():
    import typing

    from dynamics.config import RunConfig

    allowed = typing.get_args(typing.get_type_hints(ObjectiveConfig)["jvp"])  # the Literal the config checks
    assert set(allowed) == set(JVP_STRATEGIES) and ObjectiveConfig().jvp in JVP_STRATEGIES
    for strategy in JVP_STRATEGIES:
        RunConfig(objective=ObjectiveConfig(jvp=strategy)).validate()
    with pytest.raises(ConfigError, match="objective.jvp='fd' is not allowed"):
        RunConfig(objective=ObjectiveConfig(jvp="fd")).validate()


def test_step_cost_quick_writes_records(tmp_path, capsys, monkeypatch):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "step_cost.py"
    spec = importlib.util.spec_from_file_location("step_cost", path)
    step_cost = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "step_cost", step_cost)  # dataclasses look their module up
    spec.loader.exec_module(step_cost)
    out = tmp_path / "records.json"
    step_cost.main(["--quick", "--models", "mlp", "--strategies", "rows", "--shares", "1", "--json", str(out)])
    records = json.loads(out.read_text())
    keys = {"model", "strategy", "default", "share_r_ne_t", "fm_ms", "mf_ms", "ratio", "fm_peak_mb",
            "mf_peak_mb", "device"}
    assert [r["share_r_ne_t"] for r in records] == [1.0]
    for r in records:
        assert set(r) == keys
        assert r["model"] == "mlp" and r["strategy"] == "rows" and r["device"] == "cpu"
        assert r["default"] == (ObjectiveConfig().jvp == "rows")
        assert r["fm_ms"] > 0 and r["mf_ms"] > 0 and r["ratio"] > 0
        assert r["fm_peak_mb"] >= 0 and r["mf_peak_mb"] >= 0
    assert "time x" in capsys.readouterr().out
