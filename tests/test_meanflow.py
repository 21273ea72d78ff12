"""The MeanFlow objective against its definitions: JVP target, adaptive weight, sampler, CFG algebra."""

from __future__ import annotations

import math

import pytest
import torch

from dynamics.config import GuidanceConfig, SamplerConfig
from dynamics.meanflow import (
    MeanFlowLoss,
    adaptive_loss,
    build_sampler,
    guided_velocity,
    mean_flow_target,
    total_derivative,
)
from dynamics.meanflow.sampling import sample, sample_euler_v, uniform_schedule
from dynamics.models.dit import build_dit
from dynamics.models.mlp import MLP


def _mlp64(seed: int = 0, time_embedding: str = "raw") -> MLP:
    torch.manual_seed(seed)
    return MLP(width=32, depth=3, time_embedding=time_embedding).double()


def _tiny_dit64(num_classes: int = 0) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_dit("tiny", input_size=4, in_channels=1, num_classes=num_classes, patch_size=2).double()
    with torch.no_grad():  # the final layer is zero-initialised: make the output depend on the input
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return model


def _inputs(shape, n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    v = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    t = 0.2 + 0.7 * torch.rand(n, generator=g, dtype=torch.float64)
    r = t * torch.rand(n, generator=g, dtype=torch.float64)
    return z, r, t, v


def _central_difference(model, z, r, t, v, eps=1e-6, tangent=("v", 0, 1)):
    """d/dh u(z + h a, r + h b, t + h c) at h = 0 for the tangent (a, b, c)."""
    a = v if tangent[0] == "v" else torch.zeros_like(v)
    b, c = float(tangent[1]), float(tangent[2])
    with torch.no_grad():
        plus = model(z + eps * a, r + eps * b, t + eps * c)
        minus = model(z - eps * a, r - eps * b, t - eps * c)
    return (plus - minus) / (2 * eps)


@pytest.mark.parametrize("make_model,shape", [(_mlp64, (2,)), (_tiny_dit64, (1, 4, 4))])
def test_jvp_matches_central_differences(make_model, shape):
    model = make_model()
    z, r, t, v = _inputs(shape)
    _, dudt = total_derivative(model, z, r, t, v)
    fd = _central_difference(model, z, r, t, v)
    scale = fd.abs().max()
    assert torch.allclose(dudt, fd, atol=1e-6 * max(1.0, float(scale)), rtol=1e-5)


@pytest.mark.parametrize("wrong", [(0, 1, 0), ("v", 1, 0), ("v", 1, 1), ("v", 0, -1)])
def test_wrong_tangent_is_detected(wrong):
    """The finite-difference check tells the (v, 0, 1) tangent from other orders and signs."""
    model = _mlp64()
    z, r, t, v = _inputs((2,))
    _, dudt = total_derivative(model, z, r, t, v)
    wrong_fd = _central_difference(model, z, r, t, v, tangent=wrong)
    assert not torch.allclose(dudt, wrong_fd, atol=1e-4)


@pytest.mark.parametrize("strategy", ["rows", "full"])
def test_target_is_the_meanflow_identity(strategy):
    """u_tgt = v - (t - r) du/dt on u rows and v on v rows, whatever the strategy."""
    model = _mlp64()
    z, r, t, v = _inputs((2,), n=8)
    r[:3] = t[:3]  # three v rows first, as the samplers lay them out
    u, u_tgt = mean_flow_target(model, z, r, t, v, None, n_v=3, strategy=strategy)
    fd = _central_difference(model, z, r, t, v)
    expected = v - (t - r)[:, None] * fd
    assert torch.allclose(u_tgt, expected, atol=1e-6)
    assert torch.equal(u_tgt[:3], v[:3])
    assert u.requires_grad and not u_tgt.requires_grad


@pytest.mark.parametrize("strategy", ["rows", "fused", "full"])
def test_target_from_another_network(strategy):
    """target_fn: the prediction is u_fn's, the target the identity with target_fn's du/dt (TAS's held target),
    whatever the strategy; target_fn = u_fn is the plain target."""
    model, held = _mlp64(seed=0), _mlp64(seed=3)
    z, r, t, v = _inputs((2,), n=8)
    r[:3] = t[:3]
    u, u_tgt = mean_flow_target(model, z, r, t, v, None, n_v=3, strategy=strategy, target_fn=held)
    expected = v - (t - r)[:, None] * _central_difference(held, z, r, t, v)
    assert torch.allclose(u_tgt, expected, atol=1e-6)
    assert torch.allclose(u, model(z, r, t), atol=1e-12) and u.requires_grad
    _, plain = mean_flow_target(model, z, r, t, v, None, n_v=3, strategy=strategy, target_fn=model)
    assert torch.allclose(plain, v - (t - r)[:, None] * _central_difference(model, z, r, t, v), atol=1e-6)


def test_target_row_detection_without_layout():
    model = _mlp64()
    z, r, t, v = _inputs((2,), n=8)
    r[[1, 4]] = t[[1, 4]]
    _, by_mask = mean_flow_target(model, z, r, t, v, None, n_v=None)
    _, full = mean_flow_target(model, z, r, t, v, None, strategy="full")
    assert torch.allclose(by_mask, full, atol=1e-10)


def test_adaptive_loss_value_and_gradient():
    D = torch.tensor([0.0, 0.5, 2.0, 10.0], dtype=torch.float64, requires_grad=True)
    p, c = 0.75, 1e-2
    loss = adaptive_loss(D, p, c)
    assert torch.allclose(loss, D / (D + c) ** p)
    loss.sum().backward()
    # the weight is stop-gradient: d/dD [D / sg((D + c)^p)] = 1 / (D + c)^p (not squared twice)
    assert torch.allclose(D.grad, 1 / (D.detach() + c) ** p)


def test_adaptive_p0_is_plain_mse():
    D = torch.rand(16, dtype=torch.float64)
    assert torch.allclose(adaptive_loss(D, 0.0, 1e-3), D)


def test_logit_normal_sampler_statistics():
    sampler = build_sampler(SamplerConfig())
    g = torch.Generator().manual_seed(0)
    n, n_v = 200_000, 150_000
    t, r = sampler.sample(n, n_v, g, torch.device("cpu"))
    assert torch.equal(t[:n_v], r[:n_v])
    assert bool((t[n_v:] > r[n_v:]).all()) and bool((t >= r).all())
    assert (t != r).float().mean().item() == pytest.approx(0.25, abs=1e-4)
    # sorting keeps the pair: logit(t) + logit(r) is the sum of two N(mu, sigma^2) draws
    s = torch.logit(t[n_v:].double()) + torch.logit(r[n_v:].double())
    assert s.mean().item() == pytest.approx(2 * -0.4, abs=0.02)
    assert s.var().item() == pytest.approx(2 * 1.0, abs=0.03)
    # v rows: the max of two draws, CDF F^2: compare empirical and exact quantiles
    q = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)
    exact = sampler.v_quantile(q)
    empirical = torch.quantile(t[:n_v].double(), q)
    assert torch.allclose(empirical, exact, atol=4e-3)


@pytest.mark.parametrize("kind", ["logit_normal", "uniform", "dt_bin"])
def test_mean_dt_matches_monte_carlo(kind):
    sampler = build_sampler(SamplerConfig(kind=kind, dt_min=0.3, dt_max=0.5))
    t, r = sampler.sample_u(400_000, torch.Generator().manual_seed(1), torch.device("cpu"))
    assert (t - r).mean().item() == pytest.approx(sampler.mean_dt(), abs=2e-3)
    if kind == "uniform":
        assert sampler.mean_dt() == pytest.approx(1 / 3, abs=1e-8)


def test_dt_bin_sampler_stays_in_bin():
    sampler = build_sampler(SamplerConfig(kind="dt_bin", dt_min=0.5, dt_max=0.7))
    t, r = sampler.sample_u(50_000, torch.Generator().manual_seed(2), torch.device("cpu"))
    dt = t - r
    assert dt.min() >= 0.5 - 1e-6 and dt.max() <= 0.7 + 1e-6
    assert r.min() >= -1e-6 and t.max() <= 1 + 1e-6
    assert dt.mean().item() == pytest.approx(0.6, abs=3e-3)


def _labelled_batch(n=8, num_classes=3):
    g = torch.Generator().manual_seed(3)
    z = torch.randn(n, 1, 4, 4, generator=g, dtype=torch.float64)
    v = torch.randn(n, 1, 4, 4, generator=g, dtype=torch.float64)
    t = torch.rand(n, generator=g, dtype=torch.float64)
    y = torch.randint(0, num_classes, (n,), generator=g)
    return z, v, t, y


def test_cfg_w1_kappa0_is_plain_v():
    model = _tiny_dit64(num_classes=3)
    z, v, t, y = _labelled_batch()
    assert torch.equal(guided_velocity(model, z, t, v, y, 3, GuidanceConfig(w=1.0, kappa=0.0)), v)


def test_cfg_target_algebra():
    model = _tiny_dit64(num_classes=3)
    z, v, t, y = _labelled_batch()
    y[0] = 3  # a dropped (null) row keeps v
    t[1] = 0.95  # outside [t_min, t_max] keeps v
    cfg = GuidanceConfig(w=0.2, kappa=0.5, t_min=0.0, t_max=0.9)
    v_g = guided_velocity(model, z, t, v, y, 3, cfg)
    with torch.no_grad():
        u_c = model(z, t, t, y)
        u_null = model(z, t, t, torch.full_like(y, 3))
    expected = cfg.w * v + cfg.kappa * u_c + (1 - cfg.w - cfg.kappa) * u_null
    assert torch.equal(v_g[:2], v[:2])
    assert torch.allclose(v_g[2:], expected[2:], atol=1e-12)
    # the effective guidance scale: w' = w / (1 - kappa); with u = v everywhere, v_g = w v + (1 - w) u_null
    assert cfg.w / (1 - cfg.kappa) == pytest.approx(0.4)


def test_loss_split_and_logged_terms():
    model = _mlp64().float()
    loss_fn = MeanFlowLoss(build_sampler(SamplerConfig()), ratio_r_eq_t=0.75)
    x = torch.randn(64, 2)
    out = loss_fn(model, x, None, torch.Generator().manual_seed(0))
    is_v = out.r == out.t
    assert int(is_v.sum()) == 48
    assert out.loss_v.item() == pytest.approx(out.D[is_v].mean().item(), rel=1e-6)
    assert out.loss_u.item() == pytest.approx(out.D[~is_v].mean().item(), rel=1e-6)
    assert out.loss.item() == pytest.approx(adaptive_loss(out.D, 1.0, 1e-3).mean().item(), rel=1e-5)


def test_sampling_schedules():
    assert uniform_schedule(1) == [1.0, 0.0]
    assert uniform_schedule(2) == [1.0, 0.5, 0.0]

    class Constant(torch.nn.Module):  # u = 3 everywhere: z_0 = z_1 - 3 whatever the schedule
        def forward(self, z, r, t, y=None):
            return torch.full_like(z, 3.0)

    noise = torch.zeros(4, 2)
    assert torch.allclose(sample(Constant(), noise), torch.full((4, 2), -3.0))
    assert torch.allclose(sample(Constant(), noise, uniform_schedule(5)), torch.full((4, 2), -3.0))

    class Linear(torch.nn.Module):  # v(z, t) = 2t: Euler sums 2 t_k dt over the grid
        def forward(self, z, r, t, y=None):
            return (2 * t)[:, None].expand_as(z)

    steps = 32
    z0 = sample_euler_v(Linear(), torch.zeros(1, 1), steps)
    euler = -sum(2 * (1 - k / steps) / steps for k in range(steps))
    assert z0.item() == pytest.approx(euler, abs=1e-6)
    assert abs(euler - -1.0) < 0.05  # and close to the exact integral of 2t over [0, 1]


def test_sinusoidal_mlp_runs_under_jvp():
    model = _mlp64(time_embedding="sinusoidal")
    z, r, t, v = _inputs((2,))
    _, dudt = total_derivative(model, z, r, t, v)
    assert torch.isfinite(dudt).all() and not math.isnan(float(dudt.sum().detach()))


@pytest.mark.parametrize("rows", ["leading", "random"])
def test_class_dropout_rows(rows):
    """Issue 8.3: by default the dropped rows are the batch's first rows (the official layout), so every
    null-class row has r = t; `random` drops rows anywhere, u rows included."""
    cfg = GuidanceConfig(class_dropout=0.1, dropout_rows=rows, w=1.0, kappa=0.0)
    loss_fn = MeanFlowLoss(build_sampler(SamplerConfig()), ratio_r_eq_t=0.75, guidance=cfg, num_classes=10)
    x, y = torch.randn(512, 2), torch.zeros(512, dtype=torch.long)
    n_drop, n_u_drop = 0, 0
    for seed in range(8):
        t, r, _, y_in, n_v = loss_fn.draw(x, y, torch.Generator().manual_seed(seed))
        dropped = y_in == 10
        n_drop += int(dropped.sum())
        n_u_drop += int((dropped & (r != t)).sum())
        if rows == "leading":
            k = int(dropped.sum())
            assert dropped[:k].all() and not dropped[k:].any()
            assert torch.equal(t[dropped], r[dropped])  # the null class only ever sees r = t
    assert 0.07 < n_drop / (8 * 512) < 0.13
    assert (n_u_drop == 0) if rows == "leading" else (n_u_drop > 0)


@pytest.mark.parametrize("strategy", ["rows", "fused", "full"])
def test_target_is_float32_under_bf16_autocast(strategy):
    """Issue 8.2: the JVP, the target and the CFG guidance forwards feeding it run in float32 with autocast
    off, even when the caller (the trainer on GPU) wraps the objective in bf16 autocast."""
    import copy

    torch.manual_seed(0)
    model = build_dit("tiny", input_size=4, in_channels=1, num_classes=3, patch_size=2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model64 = copy.deepcopy(model).double()
    cfg = GuidanceConfig(class_dropout=0.1, w=0.2, kappa=0.5, t_min=0.0, t_max=0.9)
    loss_fn = MeanFlowLoss(build_sampler(SamplerConfig()), ratio_r_eq_t=0.5, guidance=cfg, num_classes=3,
                           jvp_strategy=strategy)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(16, 1, 4, 4, generator=g)
    y = torch.randint(0, 3, (16,), generator=g)
    t, r, e, y, n_v = loss_fn.draw(x, y, g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss_fn.loss(model, x, e, t, r, y, n_v=n_v)
    ref = loss_fn.loss(model64, x.double(), e.double(), t.double(), r.double(), y, n_v=n_v)
    assert out.target.dtype == torch.float32
    err = (out.target.double() - ref.target).abs().max() / ref.target.abs().max()
    assert err < 1e-5, err


def test_draw_is_typed_and_replays_the_step():
    """The loss's randomness is a Draw (v rows first, r = t there); replaying it gives __call__'s loss."""
    from dynamics.meanflow import Draw

    loss_fn = MeanFlowLoss(build_sampler(SamplerConfig()), ratio_r_eq_t=0.25)
    model = MLP(width=16, depth=2)
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    d = loss_fn.draw(x, None, torch.Generator().manual_seed(1))
    assert isinstance(d, Draw) and d.n_v == 8 and d.e.shape == x.shape
    assert torch.equal(d.t[:8], d.r[:8]) and bool((d.r[8:] < d.t[8:]).all())
    t, r, e, y, n_v = d  # unpacks as the 5-tuple it replaces
    assert y is None and n_v == 8 and t is d.t
    direct = loss_fn(model, x, None, torch.Generator().manual_seed(1), step=3)
    assert torch.equal(loss_fn.loss_at(model, x, d, step=3).loss, direct.loss)
