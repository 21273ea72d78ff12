"""Curriculum pieces registered by name, four kinds, each filling one hook of the MeanFlow objective:

- `alpha`  (objective.alpha):       alpha(t) -> weight of the v term;
- `beta`   (objective.beta):        beta(dt, step) -> weight of the u term;
- `v_time` (objective.v_sampling):  where the v rows' t fall: a `VTimePiece` whose `quantiles(n, gen, device)`
  gives n quantiles q in [0, 1] of the phase sampler's v-row t distribution (t = F_v^-1(q)); it may override
  `update(step, loss_v)` (after every step), `state_dict()` / `load_state_dict()` (checkpointed) and `stats()`
  (logged in metrics.jsonl); each defaults to what a run without a piece does;
- `target` (objective.target_transform): `transform(u_tgt, inputs: TargetInputs) -> u_tgt`, applied to the
  stop-gradient target before the loss (and before O1's contamination probe).

A piece is a factory `build(ctx, params) -> the callable or object above`, registered with
`@register_piece(kind, name, params=...)` from any module; a config names it (`objective.alpha=my_weight`) and sets
its typed parameters (`objective.alpha_params.power=2`), which are checked against the piece's parameter
dataclass like the built-in fields. The paper's own pieces (MinSNR alpha, progressive beta, DTD's v-time
sampler) are registered the same way, by `dynamics.curriculum`; their parameters stay the config's own fields
(`objective.minsnr_gamma`, `beta_k`, `dtd`).

Runs execute in other processes and are reloaded later, so a config records the modules its pieces come
from (`RunConfig.modules`, filled by validation) and every process imports them before it builds the
objective (`import_modules`). This module imports nothing of the library: config validation reads it.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

KINDS = ("alpha", "beta", "v_time", "target")
FIELD = {"alpha": "alpha", "beta": "beta", "v_time": "v_sampling", "target": "target_transform"}  # objective.<field>
OFF = {"alpha": "none", "beta": "none", "v_time": "base", "target": "none"}  # the name that means "no piece"
PAPER_MODULE = "dynamics.curriculum"  # registers the paper's pieces, imported like a user's module


@dataclass(frozen=True)
class TargetInputs:
    """What a target transform may read besides u_tgt: the (guided) velocity v, the times, which rows are v
    rows (r = t), and the step's generator (None outside training)."""

    v: Any  # torch.Tensor
    t: Any
    r: Any
    is_v: Any
    gen: Any


@dataclass(frozen=True)
class PieceContext:
    """What a piece may depend on: the phase's (t, r) sampler, the objective's base sampler (whose v-row t
    distribution alpha normalises against), the run's optimiser steps, and the objective config."""

    sampler: Any  # dynamics.meanflow.samplers.TimeSampler of the phase
    base_sampler: Any
    total_steps: int
    objective: Any  # dynamics.config.ObjectiveConfig


@dataclass(frozen=True)
class Piece:
    kind: str
    name: str
    build: Callable[[PieceContext, Any], Callable]
    params: type | None
    module: str


class VTimePiece:
    """Base of a v_time piece: the hooks the trainer calls, each defaulting to what a run without a piece does
    (the base sampler's v rows, no state, no stats), so a piece overrides only what it changes. A run whose
    config names no v_time piece trains with this base piece itself."""

    def quantiles(self, n: int, gen: Any, device: Any) -> Any:
        """n quantiles in [0, 1] of the phase sampler's v-row t distribution (a torch.Tensor on `device`); by
        default uniform, the same draw the sampler makes without a piece (so the base v-row law)."""
        import torch  # the CLI imports this module without torch

        return torch.rand(n, generator=gen, device=device)

    def update(self, step: int, loss_v: float) -> None:
        """After each optimiser step, with the batch's mean v error (nan when it had no v rows)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict() returned."""

    def stats(self) -> dict:
        """Columns for metrics.jsonl."""
        return {}


class PieceError(ValueError):
    """A bad registration or an unknown module; the message names the value and what is allowed."""


_PIECES: dict[tuple[str, str], Piece] = {}


def register_piece(kind: str, name: str, params: type | None = None) -> Callable:
    """Decorator over `build(ctx: PieceContext, params) -> the kind's callable or object` (module docstring).
    `params`: a dataclass of the piece's parameters (defaults required), built from
    `objective.<field>_params` and type-checked."""
    if kind not in KINDS:
        raise PieceError(f"register_piece: kind={kind!r}; allowed: {', '.join(KINDS)}")
    if name == OFF[kind]:
        raise PieceError(f"register_piece: {name!r} means no {kind} piece; choose another name")
    if params is not None and not dataclasses.is_dataclass(params):
        raise PieceError(f"register_piece({kind!r}, {name!r}): params must be a dataclass")

    def decorator(build: Callable) -> Callable:
        old = _PIECES.get((kind, name))
        if old is not None and old.module != build.__module__:
            raise PieceError(f"{kind} piece {name!r} is already registered by module {old.module}")
        _PIECES[(kind, name)] = Piece(kind, name, build, params, build.__module__)
        return build

    return decorator


def import_modules(modules: list[str] | tuple[str, ...] = ()) -> None:
    """Import the paper's pieces and `modules` (a run's recorded modules, or --register), once each."""
    for module in (PAPER_MODULE, *modules):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            raise PieceError(f"modules: cannot import {module!r} ({exc}); the module that registers the run's "
                             "curriculum pieces must be importable (PYTHONPATH) in every process") from None


def names(kind: str) -> list[str]:
    return [OFF[kind]] + sorted(n for k, n in _PIECES if k == kind)


def get_piece(kind: str, name: str) -> Piece | None:
    """The registered piece (None for the kind's OFF name); the paper's pieces are imported first."""
    import_modules()
    if name == OFF[kind]:
        return None
    if (kind, name) not in _PIECES:
        raise PieceError(f"objective.{FIELD[kind]}={name!r} is not a registered {kind} piece; allowed: "
                         f"{', '.join(names(kind))} (register one with @register_piece in a module given to "
                         "--register)")
    return _PIECES[(kind, name)]
