"""Every JVP strategy computes the MeanFlow target, loss and gradients of the reference objective
(dynamics/meanflow/reference.py: one torch.func.jvp with the tangent (v, 0, 1)), and the step-cost benchmark
writes its records.

The reference runs on a float64 copy of the model; the strategies run in float32 and must agree to float32
precision on the same draws.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dynamics.config import ConfigError, ObjectiveConfig, SamplerConfig
from dynamics.meanflow import MeanFlowLoss, build_sampler, conditional_velocity, interpolate, mean_flow_target
from dynamics.meanflow.reference import reference_loss
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


def draws(shape: tuple[int, ...], dtype=torch.float32) -> tuple[torch.Tensor, ...]:
    """(x, e, t, r): data, noise and times, the first N_V rows with r = t."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, *shape, generator=g, dtype=torch.float64)
    e = torch.randn(N, *shape, generator=g, dtype=torch.float64)
    t = 0.1 + 0.8 * torch.rand(N, generator=g, dtype=torch.float64)
    r = t * torch.rand(N, generator=g, dtype=torch.float64)
    r[:N_V] = t[:N_V]
    return tuple(a.to(dtype) for a in (x, e, t, r))


def path(shape: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """(z, r, t, v) of the float32 draws: what mean_flow_target takes."""
    x, e, t, r = draws(shape)
    return interpolate(x, e, t), r, t, conditional_velocity(x, e)


def reference(model: torch.nn.Module, shape: tuple[int, ...]):
    """(L, u, u_tgt) of the reference objective in float64, and the float64 model (for its gradients)."""
    model64 = copy.deepcopy(model).double()
    return (*reference_loss(model64, *draws(shape, torch.float64)), model64)


def close_to(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    """Float32 precision: max error <= 1e-4 of the largest value. The DiT's sinusoidal time features
    (t scaled by 1000) amplify float32 rounding ~1000-fold in d/dt; a plain float32 torch.func.jvp is
    2e-5 off there, a wrong tangent O(1)."""
    expected = expected.detach().double()
    return float((actual.detach().double() - expected).abs().max()) <= 1e-4 * max(1.0, float(expected.abs().max()))


def test_reference_target_in_closed_form():
    """u(z, r, t) = t z + r: du/dt along (v, 0, 1) is t v + z, so u_tgt = v - (t - r)(t v + z)."""
    x, e, t, r = draws((2,), torch.float64)
    _, u, u_tgt = reference_loss(lambda z, r, t, y: t[:, None] * z + r[:, None], x, e, t, r)
    z, v, t_, r_ = interpolate(x, e, t), e - x, t[:, None], r[:, None]
    assert torch.allclose(u, t_ * z + r_) and torch.allclose(u_tgt, v - (t_ - r_) * (t_ * v + z))
    assert torch.equal(u_tgt[:N_V], v[:N_V])  # r = t: the target is v


# `compiled` is checked once per model, by the loss-and-gradients test below (its target included): each
# compilation costs 5-40 s on CPU.
@pytest.mark.parametrize("strategy", EAGER)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_strategy_target_matches_reference(name, strategy):
    make, shape = MODELS[name]
    model = make()
    _, u_ref, tgt_ref, _ = reference(model, shape)
    z, r, t, v = path(shape)
    u, u_tgt = mean_flow_target(model, z, r, t, v, None, n_v=N_V, strategy=strategy)
    assert u.dtype == torch.float32 and u.requires_grad and not u_tgt.requires_grad
    assert close_to(u, u_ref) and close_to(u_tgt, tgt_ref)
    assert torch.equal(u_tgt[:N_V], v[:N_V])  # the v rows' target is v itself
    # the edge layouts: u rows only (a u-only phase), v rows only
    u, u_tgt = mean_flow_target(model, z[N_V:], r[N_V:], t[N_V:], v[N_V:], None, n_v=0, strategy=strategy)
    assert close_to(u, u_ref[N_V:]) and close_to(u_tgt, tgt_ref[N_V:])
    u, u_tgt = mean_flow_target(model, z[:N_V], r[:N_V], t[:N_V], v[:N_V], None, n_v=N_V, strategy=strategy)
    assert close_to(u, u_ref[:N_V]) and torch.equal(u_tgt, v[:N_V])


@pytest.mark.parametrize("strategy", EAGER)
def test_rows_found_without_the_layout(strategy):
    """n_v=None: the u rows are found by r != t wherever they are, with the same result."""
    model = mlp()
    z, r, t, v = path((2,))
    perm = torch.tensor([5, 0, 3, 7, 1, 2, 6, 4])
    u, u_tgt = mean_flow_target(model, z[perm], r[perm], t[perm], v[perm], None, n_v=None, strategy=strategy)
    _, u_ref, tgt_ref, _ = reference(model, (2,))
    assert close_to(u, u_ref[perm]) and close_to(u_tgt, tgt_ref[perm])


def assert_loss_and_gradients_match(model: torch.nn.Module, shape: tuple[int, ...], strategy: str,
                                    target_model: torch.nn.Module | None = None) -> None:
    loss_ref, _, tgt_ref, model64 = reference(model, shape)
    grads_ref = torch.autograd.grad(loss_ref, list(model64.parameters()))
    x, e, t, r = draws(shape)
    out = MeanFlowLoss(build_sampler(SamplerConfig()), jvp_strategy=strategy).loss(
        model, x, e, t, r, None, n_v=N_V, target_model=target_model)
    grads = torch.autograd.grad(out.loss, list(model.parameters()))
    assert close_to(out.loss, loss_ref) and close_to(out.target, tgt_ref)
    assert all(close_to(g, g_ref) for g, g_ref in zip(grads, grads_ref))


@pytest.mark.parametrize("strategy", ALL)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_loss_and_gradients_match_reference(name, strategy):
    """MeanFlowLoss (adaptive weight, unit alpha and beta) on the reference's draws: same loss, same gradients."""
    make, shape = MODELS[name]
    assert_loss_and_gradients_match(make(), shape, strategy)


@pytest.mark.parametrize("strategy", EAGER)
def test_target_from_a_held_model_matches_reference(strategy):
    """TAS's held target (`target_model`, a network apart from the one trained) at the same weights."""
    model = mlp()
    assert_loss_and_gradients_match(model, (2,), strategy, target_model=copy.deepcopy(model))


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
    z, r, t, v = path((1, 4, 4))
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
