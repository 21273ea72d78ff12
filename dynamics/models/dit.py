"""DiT with adaLN-Zero conditioning, predicting the MeanFlow average velocity u_theta(x, r, t | y).

Written from scratch after Peebles & Xie, "Scalable Diffusion Models with Transformers" (2023). Differences
from vanilla DiT, all required by MeanFlow:

- two time inputs: one sinusoidal embedder + MLP for ``t`` and a separate one for ``t - r``; their outputs
  are summed with the class embedding to form the conditioning vector ``c``;
- the output has ``in_channels`` channels (a velocity, no learned variance);
- the class table has ``num_classes + 1`` rows; row ``num_classes`` is the "null" class used for CFG
  dropout and for ``y=None`` (with ``num_classes=0`` the model is unconditional and has only that row).

The model knows nothing about the training objective. It must stay differentiable with forward-mode AD
(``torch.func.jvp``): no in-place ops on activations derived from inputs, no ``.item()``, no data-dependent
Python control flow. Attention uses ``scaled_dot_product_attention``; fused kernels have no forward-AD
rule, so the objective calls the model inside ``sdpa_kernel([SDPBackend.MATH])`` when it takes a JVP.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

# name -> depth, hidden size, heads, patch size (None: the caller chooses, default 2)
DIT_CONFIGS: dict[str, dict] = {
    "tiny": {"depth": 2, "hidden_size": 64, "num_heads": 4, "patch_size": None},
    "S/2": {"depth": 12, "hidden_size": 384, "num_heads": 6, "patch_size": 2},
    "S/4": {"depth": 12, "hidden_size": 384, "num_heads": 6, "patch_size": 4},
    "B/2": {"depth": 12, "hidden_size": 768, "num_heads": 12, "patch_size": 2},
    "B/4": {"depth": 12, "hidden_size": 768, "num_heads": 12, "patch_size": 4},
    "M/2": {"depth": 16, "hidden_size": 1024, "num_heads": 16, "patch_size": 2},
    "L/2": {"depth": 24, "hidden_size": 1024, "num_heads": 16, "patch_size": 2},
    "XL/2": {"depth": 28, "hidden_size": 1152, "num_heads": 16, "patch_size": 2},
}


def dit_config(name: str) -> dict:
    """Return a copy of the named config, so callers can edit it without touching the registry."""
    if name not in DIT_CONFIGS:
        raise KeyError(f"unknown DiT config {name!r}; known: {sorted(DIT_CONFIGS)}")
    return dict(DIT_CONFIGS[name])


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation of tokens x [B, N, D] by per-sample shift/scale [B, D]."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    """Scalar time -> vector: DiT's sinusoidal features of ``time_scale * t``, then a 2-layer MLP.

    The scale is 1.0 by default: t in [0, 1] goes into the features unscaled, as in the official MeanFlow code
    (JAX `models_dit.py` and py-meanflow). DiT's x1000 (its integer-timestep habit) multiplies d/dt u by up to
    1000 through the chain rule, and MeanFlow's target v - (t - r) du/dt then chases its own derivative.
    """

    def __init__(self, hidden_size: int, freq_dim: int = 256, time_scale: float = 1.0,
                 max_period: float = 10000.0):
        super().__init__()
        self.freq_dim = freq_dim
        self.time_scale = time_scale
        self.max_period = max_period
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    def sinusoid(self, t: Tensor) -> Tensor:
        # At least float32: bf16 would lose the fine time resolution; float64 stays (tests).
        dtype = torch.promote_types(t.dtype, torch.float32)
        half = self.freq_dim // 2
        steps = torch.arange(half, dtype=dtype, device=t.device) / half
        freqs = torch.exp(-math.log(self.max_period) * steps)
        args = (self.time_scale * t.to(dtype))[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if self.freq_dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(self.sinusoid(t).to(self.mlp[0].weight.dtype))


class Attention(nn.Module):
    """Multi-head self-attention through scaled_dot_product_attention (backend chosen by the caller)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B, heads, N, head_dim]
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """Transformer block whose LayerNorm shift/scale and residual gates come from c (adaLN-Zero)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_a.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_a, scale_a))
        x = x + gate_m.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_m, scale_m))
        return x


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm + linear map from tokens to patches (zero-initialised)."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


def sincos_pos_embed_2d(dim: int, grid_size: int) -> np.ndarray:
    """Fixed 2-D sin-cos position table [grid_size**2, dim]: half the channels encode rows, half columns."""
    if dim % 4:
        raise ValueError(f"hidden size {dim} must be divisible by 4 for the 2-D sin-cos embedding")

    def one_axis(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    coords = np.arange(grid_size, dtype=np.float64)
    cols, rows = np.meshgrid(coords, coords)  # row-major token order: token k = (k // g, k % g)
    return np.concatenate([one_axis(dim // 2, cols), one_axis(dim // 2, rows)], axis=1)


class DiT(nn.Module):
    """Diffusion Transformer mapping (x, r, t, y) to u_theta(x, r, t | y) of the same shape as x."""

    def __init__(self, input_size: int, in_channels: int, patch_size: int, hidden_size: int, depth: int,
                 num_heads: int, num_classes: int = 0, mlp_ratio: float = 4.0, time_scale: float = 1.0):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input size {input_size} is not divisible by patch size {patch_size}")
        self.input_size = input_size
        self.in_channels = in_channels
        self.out_channels = in_channels
        self.patch_size = patch_size
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.num_classes = num_classes
        self.grid_size = input_size // patch_size

        self.x_embedder = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        self.t_embedder = TimestepEmbedder(hidden_size, time_scale=time_scale)
        self.dt_embedder = TimestepEmbedder(hidden_size, time_scale=time_scale)  # embeds t - r
        self.y_embedder = nn.Embedding(num_classes + 1, hidden_size)  # last row: the null class
        pos = torch.from_numpy(sincos_pos_embed_2d(hidden_size, self.grid_size)).float().unsqueeze(0)
        self.register_buffer("pos_embed", pos, persistent=False)  # fixed, recomputed on construction
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's init: xavier linears, small embeddings, zeros where adaLN-Zero needs an identity start."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        w = self.x_embedder.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        nn.init.normal_(self.y_embedder.weight, std=0.02)
        for emb in (self.t_embedder, self.dt_embedder):
            nn.init.normal_(emb.mlp[0].weight, std=0.02)
            nn.init.normal_(emb.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    @property
    def null_class(self) -> int:
        """Index of the null (unconditional) class row, used for CFG dropout and y=None."""
        return self.num_classes

    def unpatchify(self, x: Tensor) -> Tensor:
        """Tokens [B, N, p*p*C] -> images [B, C, H, W]."""
        b, p, c, g = x.shape[0], self.patch_size, self.out_channels, self.grid_size
        x = x.reshape(b, g, g, p, p, c)
        x = torch.einsum("bhwpqc->bchpwq", x)
        return x.reshape(b, c, g * p, g * p)

    def forward(self, x: Tensor, r: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """u_theta(x, r, t | y). r, t: [B] (or scalars, broadcast); y: [B] long or None (null class)."""
        b = x.shape[0]
        r = r.expand(b) if r.ndim == 0 else r
        t = t.expand(b) if t.ndim == 0 else t
        if y is None or self.num_classes == 0:
            y = torch.full((b,), self.null_class, dtype=torch.long, device=x.device)
        h = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed.to(x.dtype)  # [B, N, D]
        c = self.t_embedder(t) + self.dt_embedder(t - r) + self.y_embedder(y)
        for block in self.blocks:
            h = block(h, c)
        return self.unpatchify(self.final_layer(h, c))


def build_dit(name: str, input_size: int, in_channels: int, num_classes: int,
              patch_size: int | None = None, time_scale: float = 1.0) -> DiT:
    """Build a named DiT; patch_size overrides the one in the name (required to vary for "tiny")."""
    cfg = dit_config(name)
    patch = patch_size if patch_size is not None else (cfg["patch_size"] or 2)
    return DiT(input_size=input_size, in_channels=in_channels, patch_size=patch,
               hidden_size=cfg["hidden_size"], depth=cfg["depth"], num_heads=cfg["num_heads"],
               num_classes=num_classes, time_scale=time_scale)
