"""The TAS methods, one module each. A new method is a module that defines a `Method` (see `base`), listed in
METHODS below and in `dynamics.config.TAS_METHODS` (the CLI's choices)."""

from . import accumulated, cosine, lookahead
from .base import Method, Settings

METHODS: dict[str, Method] = {m.name: m for m in (accumulated.METHOD, lookahead.METHOD, cosine.METHOD)}

__all__ = ["METHODS", "Method", "Settings"]
