"""Tiny DiT: shapes, adaLN-Zero init, conditioning, forward-mode AD, and the paper-size parameter count."""

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from dynamics.models.dit import DIT_CONFIGS, build_dit, dit_config


def tiny(num_classes: int = 10, size: int = 8, channels: int = 3):
    torch.manual_seed(0)
    return build_dit("tiny", input_size=size, in_channels=channels, num_classes=num_classes, patch_size=2)


def perturb(model, scale: float = 0.1) -> None:
    """Move the zero-initialised layers away from zero, otherwise u_theta is identically 0."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def inputs(b: int = 3, size: int = 8, channels: int = 3, dtype=torch.float32):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(b, channels, size, size, generator=g, dtype=dtype)
    t = torch.rand(b, generator=g, dtype=dtype)
    r = t * torch.rand(b, generator=g, dtype=dtype)
    y = torch.randint(0, 10, (b,), generator=g)
    return x, r, t, y


def test_shape_and_zero_init():
    model = tiny()
    x, r, t, y = inputs()
    out = model(x, r, t, y)
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0


def test_class_conditioning_and_null_class():
    model = tiny()
    perturb(model)
    x, r, t, y = inputs()
    out = model(x, r, t, y)
    assert not torch.allclose(out, model(x, r, t, (y + 1) % 10))
    null = torch.full_like(y, model.null_class)
    assert torch.equal(model(x, r, t, None), model(x, r, t, null))
    assert not torch.allclose(out, model(x, r, t, None))


def test_time_inputs_matter_and_unconditional_ignores_y():
    model = tiny(num_classes=0)
    perturb(model)
    x, r, t, y = inputs()
    out = model(x, r, t, None)
    assert torch.equal(out, model(x, r, t, y))  # num_classes=0: y is ignored
    assert model.y_embedder.num_embeddings == 1
    assert not torch.allclose(out, model(x, t, t, None))  # t - r is seen
    assert not torch.allclose(out, model(x, r + 0.05, t + 0.05, None))  # t is seen


def test_jvp_matches_finite_differences():
    model = tiny().double()
    perturb(model)
    x, r, t, y = inputs(dtype=torch.float64)
    v = torch.randn_like(x)
    dr, dt = torch.zeros_like(r), torch.ones_like(t)

    def u(z, r_, t_):
        return model(z, r_, t_, y)

    with sdpa_kernel([SDPBackend.MATH]):
        for grad_mode in (torch.no_grad, torch.enable_grad):
            with grad_mode():
                out, dudt = torch.func.jvp(u, (x, r, t), (v, dr, dt))
            assert torch.allclose(out, model(x, r, t, y))
            eps = 1e-6
            with torch.no_grad():
                fd = (u(x + eps * v, r, t + eps) - u(x - eps * v, r, t - eps)) / (2 * eps)
            scale = dudt.abs().max()
            assert scale > 1e-3
            # Relative to the largest entry (eps^2 * u''' scales with d/dt).
            assert (dudt - fd).abs().max() <= 1e-5 * scale


def test_jvp_with_grad_backprops_to_parameters():
    model = tiny()
    perturb(model)
    x, r, t, y = inputs()
    with sdpa_kernel([SDPBackend.MATH]):
        out, dudt = torch.func.jvp(lambda z, a, b: model(z, a, b, y), (x, r, t),
                                   (torch.randn_like(x), torch.zeros_like(r), torch.ones_like(t)))
    (out.square().mean() + dudt.square().mean()).backward()
    assert model.final_layer.linear.weight.grad is not None


def test_configs_and_paper_param_count():
    assert set(DIT_CONFIGS) >= {"tiny", "S/2", "S/4", "B/4", "B/2", "M/2", "L/2", "XL/2"}
    assert dit_config("L/2")["depth"] == 24
    model = build_dit("B/4", input_size=32, in_channels=4, num_classes=1000)
    assert model.patch_size == 4
    n = sum(p.numel() for p in model.parameters())
    assert 125e6 <= n <= 140e6, n  # MeanFlow-B/4: 131M


def test_default_time_conditioning_keeps_du_dt_below_u():
    """Issue 8.1: t in [0, 1] unscaled (the official code). A x1000 time scale made |du/dt| ~ 300 |u| here."""
    from dynamics.config import preset
    from dynamics.meanflow.target import total_derivative
    from dynamics.models import build_model

    for name in ("digits", "b4", "xl2"):
        assert preset(name).model.time_scale == 1.0
    torch.manual_seed(0)
    model = build_model(preset("digits").model, (1, 8, 8), num_classes=10)
    perturb(model)
    g = torch.Generator().manual_seed(3)
    x, e = torch.randn(64, 1, 8, 8, generator=g), torch.randn(64, 1, 8, 8, generator=g)
    t = torch.rand(64, generator=g)
    r = t * torch.rand(64, generator=g)
    z = (1 - t[:, None, None, None]) * x + t[:, None, None, None] * e
    y = torch.randint(0, 10, (64,), generator=g)
    with torch.no_grad():
        u, dudt = total_derivative(model, z, r, t, e - x, y)  # the MeanFlow tangent (v, 0, 1)
        _, du_dt_partial = total_derivative(model, z, r, t, torch.zeros_like(z), y)  # d_t u alone
    ratio = dudt.flatten(1).norm(dim=1) / u.flatten(1).norm(dim=1)
    assert ratio.median() < 1.0
    assert du_dt_partial.norm() < u.norm()
