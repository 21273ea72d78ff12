"""Grid building blocks: phases in paper epochs, shared prefixes and runs shared between studies.

Shared prefixes. A fine-tune that continues another run of the grid (same study, same seed) from one of its
checkpoints is built with `continue_from(parent, key, epoch, then=[...])`: the child is the parent's config
with the parent's phases up to `epoch` (the prefix it inherits) followed by `then`; the parent keeps that
epoch's checkpoint; and the relation is a typed field, `RunSpec.parent = ParentRef(key, epoch)`, which
`Study.runs` resolves into the parent's directory and a dependency. The launcher asks one function whether the
checkpoint a child needs exists (`dynamics.launch.readiness`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from dynamics.config import InitConfig, PhaseConfig, RunConfig, SamplerConfig

from .errors import RegistryError
from .scales import base_config
from .study import ParentRef, RunSpec


def v_only(epochs: float) -> PhaseConfig:
    """A phase of `epochs` paper epochs training the v term only."""
    return PhaseConfig(epochs=float(epochs), terms="v")


def u_only(epochs: float, sampler: SamplerConfig | None = None) -> PhaseConfig:
    """A phase training the u term only; `sampler` draws its (t, r), e.g. `dt_bin(lo, hi)`."""
    return PhaseConfig(epochs=float(epochs), terms="u", sampler=sampler)


def joint(epochs: float) -> PhaseConfig:
    """A phase of the joint MeanFlow objective (v and u terms)."""
    return PhaseConfig(epochs=float(epochs), terms="both")


def prefix_phases(cfg: RunConfig, epoch: float) -> list[PhaseConfig]:
    """`cfg`'s phases over its first `epoch` epochs (the last one cut at `epoch`): what a child continuing
    its checkpoint at `epoch` has already trained."""
    out: list[PhaseConfig] = []
    start = 0.0
    for phase in cfg.phases:
        if start >= epoch:
            break
        part = copy.deepcopy(phase)
        part.epochs = float(min(phase.epochs, epoch - start))
        out.append(part)
        start += phase.epochs
    return out


def continue_from(parent: RunSpec, key: str, epoch: float, then: list[PhaseConfig],
                  tags: dict[str, Any] | None = None, config: RunConfig | None = None) -> RunSpec:
    """A run `key` that continues `parent` (a run of the same grid) from its checkpoint at `epoch`, then trains
    the phases `then`. Its config is `config` (default: the parent's) with the parent's phases up to `epoch`
    as its prefix; the parent's config keeps that epoch's checkpoint (`train.keep_epochs`)."""
    if parent.config is None or parent.shared_from:
        raise RegistryError(f"continue_from: run {key!r} continues {parent.key!r}, a shared run; continue a run "
                            "of this study (or share the whole chain from its owner)")
    length = sum(p.epochs for p in parent.config.phases)
    if not 0 < epoch <= length:
        raise RegistryError(f"continue_from: run {key!r} continues {parent.key!r} at epoch {epoch:g}; the parent "
                            f"trains {length:g} epochs, so choose 0 < epoch <= {length:g}")
    keep = parent.config.train.keep_epochs
    if float(epoch) not in keep:
        keep.append(float(epoch))
    cfg = copy.deepcopy(config if config is not None else parent.config)
    cfg.train.keep_epochs = [] if config is None else cfg.train.keep_epochs
    cfg.init = InitConfig()
    cfg.phases = prefix_phases(parent.config, epoch) + [copy.deepcopy(p) for p in then]
    return RunSpec(key, cfg, tags=dict(tags or {}), parent=ParentRef(parent.key, float(epoch)))


def v_pretrain_then_u(scale: str, e_v_values: tuple[int, ...], u_epochs: Callable[[int], float]) -> list[RunSpec]:
    """O1's grid shape: one shared v-only run of max(E_v) epochs (checkpoints kept at each E_v), and per E_v a
    fine-tune that continues its checkpoint with `u_epochs(E_v)` epochs of u-only training (E_v = 0: u alone)."""
    parent_cfg = base_config(scale, shared_prefix=True)
    parent_cfg.phases = [v_only(max(e_v_values))]
    parent = RunSpec("v-pretrain", parent_cfg, tags={"role": "v-pretrain", "v_epochs": max(e_v_values)})
    runs = [parent]
    for e_v in e_v_values:
        tags = {"role": "fine-tune", "E_v": e_v, "E_u": u_epochs(e_v)}
        if e_v:
            runs.append(continue_from(parent, f"E_v={e_v}", e_v, [u_only(u_epochs(e_v))], tags))
        else:
            cfg = base_config(scale, shared_prefix=True)
            cfg.phases = [u_only(u_epochs(e_v))]
            runs.append(RunSpec(f"E_v={e_v}", cfg, tags=tags))
    return runs


def shared(study: str, key: str, as_key: str, tags: dict[str, Any]) -> RunSpec:
    """A grid point that is run `key` of `study` (same scale and seed), trained once and read by both studies.

    Used where two studies' grids hold the same config (v-quality, convergence and k-schedule's k = 1 are runs
    of the main ablation): the owner's run carries the union of their evaluations. The run lives in the owner's
    directory, `<scale>/<study>/<hash>`; the launcher writes `<scale>/<this study>/<hash>/run.json` with this
    study's key and tags, beside links to the owner's files, so each study's results read the same."""
    return RunSpec(as_key, None, tags=dict(tags), shared_from=f"{study}:{key}")
