"""Models: every model is a function u_theta(x, r, t, y) and knows nothing of the objective."""

from __future__ import annotations

from torch import nn

from ..config import ModelConfig
from .mlp import MLP


def build_model(cfg: ModelConfig, data_shape: tuple[int, ...], num_classes: int = 0) -> nn.Module:
    if cfg.name == "mlp":
        return MLP(data_dim=data_shape[0], width=cfg.width, depth=cfg.depth, time_embedding=cfg.time_embedding,
                   time_scale=cfg.time_scale)
    from .dit import build_dit

    channels, size = data_shape[0], data_shape[-1]
    return build_dit(cfg.size, input_size=size, in_channels=channels, num_classes=num_classes,
                     patch_size=cfg.patch_size or None, time_scale=cfg.time_scale)


__all__ = ["MLP", "build_model"]
