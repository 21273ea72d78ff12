"""The MeanFlow target: u_tgt = v - (t - r) * d/dt u_theta(z_t, r, t), stop-gradient.

d/dt u is the total derivative along the trajectory, v . grad_z u + d_t u: the JVP of u_theta at the
inputs (z, r, t) with tangent (v, 0, 1). The order matters (MeanFlow's ablation: any other tangent
breaks one-step generation), so the tangent is built in one place, `total_derivative`.

Two things make the eager JVP cheap (about 2.3x a forward on CPU instead of 3.4x):
- The JVP runs in core forward-mode AD (torch.autograd.forward_ad), which wraps tensors less than
  torch.func.jvp and is exact all the same.
- PyTorch's forward-mode rule for a linear layer also multiplies the input by the weight's tangent,
  which is zero here but handed over as a dense zero matrix: every linear layer pays two matmuls for
  its tangent instead of one. Inside the JVP, `F.linear` goes through `_LinearJVP`, whose rule spends
  a matmul only on the tangents that exist.
Precision: the JVP and the target are computed in float32 (at least) with autocast off, even when the
trainer's graph-building forward and backward run under bf16 autocast: the official JAX code trains in
float32, and py-meanflow turns autocast off around its JVP. The tangent term (t - r) du/dt is a difference
of nearby quantities that bf16's 8-bit mantissa would round away. Under `fused`, `compiled` and `full` the
JVP's primal output carries the graph, so those strategies build the u rows' graph in float32 too.
Forward-mode AD has no rule for the fused SDPA kernels, so every JVP runs with the math attention
backend, which decomposes into differentiable ops; the fast kernels stay on for the plain forward.

Strategies (a small, swappable part; all exact, agreeing to float precision). A batch is laid out as
`n_v` v rows (r = t, target v) followed by u rows (r != t), the only rows that need the tangent.
Measured by benchmarks/step_cost.py:
- `rows` (default): the JVP under no_grad on the u rows, then the plain forward with grad on the whole
  batch. The u rows are evaluated twice, but the tangent is never recorded and the JVP's temporaries
  are gone before the graph is built: peak memory as flow matching's.
- `fused`: a plain forward on the v rows and one JVP on the u rows whose primal output carries the
  graph, so no row is evaluated twice; but eager autograd also records the tangent's computation, and
  the activations saved for the backward hold their tangents until the JVP ends: about +40% peak
  memory at the default mix, x2.5 or more in a u-only phase.
- `compiled`: `fused` traced by torch.compile (with torch.func.jvp). The compiler keeps for the
  backward only what the loss needs, so the tangent's intermediates are dropped (memory as `rows`,
  time as `fused` or better); it compiles once per batch layout (tens of seconds on CPU) and wants
  `n_v` given, as the samplers do.
- `full`: one JVP over the whole batch whose primal output carries the graph (py-meanflow's way); it
  spends a tangent on the v rows, where it is multiplied by t - r = 0.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

from .path import expand_like

# torch's forward-mode AD scripts its JVP decompositions on first use (torch/_decomp/decompositions_for_jvp.py),
# which warns once per process that torch.jit.script is deprecated: torch's own call, nothing a user can act on.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning,
                        module="torch.jit._script")

# u_theta(z, r, t, y): the network as a function; y (class labels) may be None.
UFn = Callable[[Tensor, Tensor, Tensor, "Tensor | None"], Tensor]


class _LinearJVP(torch.autograd.Function):
    """F.linear whose forward-mode rule spends a matmul only on the tangents that exist."""

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight)
        ctx.save_for_forward(x, weight)
        ctx.has_bias = bias is not None
        ctx.set_materialize_grads(False)  # absent tangents arrive as None, not as dense zeros

    @staticmethod
    def backward(ctx, grad: Tensor | None):
        if grad is None:
            return None, None, None
        x, weight = ctx.saved_tensors
        # Under autocast the output (and so grad) may be bf16 while x and weight are float32.
        x, weight = x.to(grad.dtype), weight.to(grad.dtype)
        grad_x = grad @ weight if ctx.needs_input_grad[0] else None
        grad_2d = grad.reshape(-1, grad.shape[-1])
        grad_w = grad_2d.t() @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None
        grad_b = grad_2d.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b

    @staticmethod
    def jvp(ctx, x_t: Tensor | None, weight_t: Tensor | None, bias_t: Tensor | None) -> Tensor:
        x, weight = ctx.saved_tensors
        terms = [F.linear(x_t, weight)] if x_t is not None else []
        if weight_t is not None:
            terms.append(F.linear(x, weight_t))
        if bias_t is not None:
            terms.append(bias_t)
        out_t = terms[0]
        for term in terms[1:]:
            out_t = out_t + term
        return out_t


class _EfficientLinearJVP(TorchFunctionMode):
    """Routes every F.linear (what nn.Linear calls) through `_LinearJVP` while the mode is on."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight, *rest = args
            return _LinearJVP.apply(x, weight, rest[0] if rest else kwargs.get("bias"))
        return func(*args, **kwargs)


def full_precision(device: torch.device):
    """Autocast off on `device`: the context of the JVP, the target and the guidance forwards feeding it."""
    return torch.autocast(device.type, enabled=False)


def at_least_fp32(*xs: Tensor) -> tuple[Tensor, ...]:
    """Upcast bf16 / fp16 tensors to float32 (float64 stays float64)."""
    return tuple(x.to(torch.promote_types(x.dtype, torch.float32)) for x in xs)


def total_derivative(u_fn: UFn, z: Tensor, r: Tensor, t: Tensor, v: Tensor,
                     y: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(u, du/dt) with du/dt = JVP of u_theta(., ., ., y) at (z, r, t) along the tangent (v, 0, 1).

    Runs in float32 or wider with autocast off (see the module docstring). u carries the autograd graph
    when grad is enabled; du/dt is meant to be detached by the caller.
    """
    with full_precision(z.device):
        return _total_derivative(u_fn, *at_least_fp32(z, r, t, v), y)


def _total_derivative(u_fn: UFn, z: Tensor, r: Tensor, t: Tensor, v: Tensor,
                      y: Tensor | None) -> tuple[Tensor, Tensor]:
    tangent = (v, torch.zeros_like(r), torch.ones_like(t))
    if torch.compiler.is_compiling():  # traced: the compiler's own rules, no eager-only tricks
        with sdpa_kernel([SDPBackend.MATH]):
            return torch.func.jvp(lambda z_, r_, t_: u_fn(z_, r_, t_, y), (z.clone(), r.clone(), t.clone()),
                                  tangent)
    with sdpa_kernel([SDPBackend.MATH]), _EfficientLinearJVP(), fwAD.dual_level():
        dual = u_fn(*(fwAD.make_dual(x, dx) for x, dx in zip((z, r, t), tangent)), y)
        u, dudt = fwAD.unpack_dual(dual)
    return u, dudt


def target_from_derivative(v: Tensor, r: Tensor, t: Tensor, dudt: Tensor) -> Tensor:
    """The MeanFlow identity rearranged: u_tgt = v - (t - r) du/dt (in float32 or wider)."""
    v, r, t, dudt = at_least_fp32(v, r, t, dudt)
    return v - expand_like(t - r, v) * dudt


def _head(y: Tensor | None, n: int) -> Tensor | None:
    return None if y is None else y[:n]


def _tail(y: Tensor | None, n: int) -> Tensor | None:
    return None if y is None else y[n:]


def _full(u_fn: UFn, z: Tensor, r: Tensor, t: Tensor, v: Tensor, y: Tensor | None,
          n_v: int) -> tuple[Tensor, Tensor]:
    u, dudt = total_derivative(u_fn, z, r, t, v, y)
    return u, target_from_derivative(v, r, t, dudt).detach()


def _rows(u_fn: UFn, z: Tensor, r: Tensor, t: Tensor, v: Tensor, y: Tensor | None,
          n_v: int, target_fn: UFn | None = None) -> tuple[Tensor, Tensor]:
    if n_v == len(z):
        return u_fn(z, r, t, y), at_least_fp32(v.detach())[0]
    with torch.no_grad():  # before the forward: its temporaries are gone when the graph is built
        _, dudt = total_derivative(target_fn or u_fn, z[n_v:], r[n_v:], t[n_v:], v[n_v:], _tail(y, n_v))
        u_tgt = torch.cat([at_least_fp32(v[:n_v])[0], target_from_derivative(v[n_v:], r[n_v:], t[n_v:], dudt)])
    return u_fn(z, r, t, y), u_tgt


def _fused(u_fn: UFn, z: Tensor, r: Tensor, t: Tensor, v: Tensor, y: Tensor | None,
           n_v: int) -> tuple[Tensor, Tensor]:
    if n_v == len(z):
        return u_fn(z, r, t, y), at_least_fp32(v.detach())[0]
    u_u, dudt = total_derivative(u_fn, z[n_v:], r[n_v:], t[n_v:], v[n_v:], _tail(y, n_v))
    u_tgt_u = target_from_derivative(v[n_v:], r[n_v:], t[n_v:], dudt.detach()).detach()
    if n_v == 0:
        return u_u, u_tgt_u
    u_v = u_fn(z[:n_v], r[:n_v], t[:n_v], _head(y, n_v))  # under the caller's autocast, if any
    return torch.cat([u_v.to(u_u.dtype), u_u]), torch.cat([at_least_fp32(v[:n_v].detach())[0], u_tgt_u])


@functools.cache
def _compiled_fused() -> Callable:
    # Built on first use: importing the compiler costs seconds. Static shapes: the batch layout is
    # fixed per phase, and functorch's JVP does not trace with symbolic shapes.
    return torch.compile(_fused, dynamic=False)


def _compiled(u_fn: UFn, z: Tensor, r: Tensor, t: Tensor, v: Tensor, y: Tensor | None,
              n_v: int) -> tuple[Tensor, Tensor]:
    return _compiled_fused()(u_fn, z, r, t, v, y, n_v)


_STRATEGIES = {"rows": _rows, "fused": _fused, "compiled": _compiled, "full": _full}
JVP_STRATEGIES = tuple(_STRATEGIES)


def mean_flow_target(u_fn: UFn, z: Tensor, r: Tensor, t: Tensor, v: Tensor, y: Tensor | None = None,
                     n_v: int | None = None, strategy: str = "rows",
                     target_fn: UFn | None = None) -> tuple[Tensor, Tensor]:
    """(u_theta(z, r, t | y) with grad, u_tgt detached).

    `n_v`: the number of leading v rows (r = t) of the batch, as the samplers lay it out; None finds the
    u rows by comparing r and t (the rows are then put in that layout and back). On the v rows the
    target is v itself. `target_fn`: the network whose JVP makes the stop-gradient target when it is not
    u_fn (TAS holds the target at the weights before a lookahead step); the target is then computed apart
    from the prediction, as `rows` does, whatever the strategy.
    """
    if strategy not in _STRATEGIES:
        raise ValueError(f"unknown JVP strategy {strategy!r}; choose one of {', '.join(JVP_STRATEGIES)}")
    target = _STRATEGIES[strategy]
    if target_fn is not None and target_fn is not u_fn:
        target = functools.partial(_rows, target_fn=target_fn)
    if n_v is not None:
        return target(u_fn, z, r, t, v, y, n_v)
    is_u = r != t
    order = torch.argsort(is_u.to(torch.uint8), stable=True)  # v rows first, u rows after
    back = torch.argsort(order)
    u, u_tgt = target(u_fn, z[order], r[order], t[order], v[order], None if y is None else y[order],
                      int((~is_u).sum()))
    return u[back], u_tgt[back]
