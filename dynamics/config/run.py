"""The whole run: `RunConfig` joins the sections, checks them against each other and is what gets saved.

`to_dict` is what the results store hashes to name a run's directory, so its keys (and which optional keys
it leaves out) are part of every run's identity.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .overrides import to_dataclass
from .schema import (
    EVAL_METRICS,
    TOY_DATASETS,
    ConfigError,
    DataConfig,
    EvalConfig,
    InitConfig,
    ModelConfig,
    ObjectiveConfig,
    PhaseConfig,
    TrainConfig,
    check_allowed_values,
)

# objective fields left out of `to_dict` while unset: a config that uses no registered piece keeps its hash
_PIECE_PARAMS = ("alpha_params", "beta_params", "v_sampling_params", "target_transform_params")


@dataclass
class RunConfig:
    name: str = "run"
    scale: str = "cpu"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    phases: list[PhaseConfig] = field(default_factory=list)
    init: InitConfig = field(default_factory=InitConfig)
    modules: list[str] = field(default_factory=list)  # modules of the run's registered pieces (filled by validate)

    def validate(self) -> RunConfig:
        """Every section's checks, then the sections against each other; returns the config itself."""
        check_allowed_values(self)
        self.data.validate()
        self.model.validate()
        self.objective.validate()
        self._validate_pieces()
        self.train.validate()
        self.eval.validate()
        for i, phase in enumerate(self.phases):
            phase.validate(i)
        if self.model.name == "mlp" and self.data.name in ("digits", "imagenet_latents"):
            raise ConfigError(f"model.name=mlp works on 2-D toy data only, not data.name={self.data.name}")
        for metric in self.eval.metrics:
            allowed = EVAL_METRICS.get(metric)
            if allowed is None:
                raise ConfigError(f"eval.metrics: unknown metric {metric!r}; allowed {', '.join(EVAL_METRICS)}")
            if self.data.name not in allowed:
                raise ConfigError(f"eval.metrics: {metric} cannot be computed on data.name={self.data.name}; "
                                  f"it needs data.name in {', '.join(allowed)}")
        if self.model.name == "dit" and self.data.name in TOY_DATASETS:
            raise ConfigError(f"model.name=dit needs image data (digits, imagenet_latents), not {self.data.name}")
        return self

    @staticmethod
    def params_of(params_type: type, given: dict, field_name: str) -> Any:
        """A piece's parameters: `given` (objective.<field>_params) type-checked into its dataclass."""
        params = to_dataclass(params_type, given, f"objective.{field_name}_params.")
        if hasattr(params, "validate"):
            params.validate()
        return params

    def _validate_pieces(self) -> None:
        """objective.alpha / beta / v_sampling / target_transform name registered pieces (the paper's or a user
        module's, imported here) whose parameters type-check against the piece's dataclass; the modules of a
        user's pieces are recorded."""
        from .. import pieces

        try:
            pieces.import_modules(self.modules)
            for kind in pieces.KINDS:
                name_field = pieces.FIELD[kind]
                name = getattr(self.objective, name_field)
                piece = pieces.get_piece(kind, name)
                given = getattr(self.objective, f"{name_field}_params")
                if piece is None or piece.params is None:
                    if given:
                        raise ConfigError(f"objective.{name_field}_params={given}: objective.{name_field}={name} "
                                          f"takes no parameters")
                    if piece is None:
                        continue
                else:
                    self.params_of(piece.params, given, name_field)
                if piece.module != pieces.PAPER_MODULE and piece.module not in self.modules:
                    self.modules.append(piece.module)
        except (pieces.PieceError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(str(exc)) from None

    def resolved_phases(self) -> list[PhaseConfig]:
        """The phases of this run: the configured ones, or one joint phase of `train.epochs`."""
        return self.phases or [PhaseConfig(epochs=self.train.epochs)]

    def total_epochs(self) -> float:
        return sum(p.epochs for p in self.resolved_phases())

    def total_steps(self) -> int:
        return phase_boundaries(self)[-1]

    def to_dict(self) -> dict:
        """The config as saved and hashed. Optional fields at their unset value (a piece's empty parameters,
        target_transform `none`, no modules) are left out, so a run that uses none of them keeps its hash."""
        d = dataclasses.asdict(self)
        for key in _PIECE_PARAMS:
            if not d["objective"][key]:
                del d["objective"][key]
        if d["objective"]["target_transform"] == "none":
            del d["objective"]["target_transform"]
        if not d["modules"]:
            del d["modules"]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        """A config from its dict, every key and value type-checked; older stored configs are read through
        `_migrate`."""
        return to_dataclass(cls, _migrate(d), "")


def _migrate(d: dict) -> dict:
    """Older keys of stored config.json files, mapped to today's, all in this one place:
    - `objective.cfg`: the guidance section's older name, read as `objective.guidance`;
    - `objective.dtd.mode=patience` with `patience` (a window of patience x T steps, a patience of one window):
      read as the counter rule with tau = patience x T (`mode=counter`, `tau_share=patience`)."""
    objective = d.get("objective")
    if not isinstance(objective, dict):
        return d
    if "cfg" in objective and "guidance" not in objective:
        objective = {("guidance" if k == "cfg" else k): v for k, v in objective.items()}
    dtd = objective.get("dtd")
    if isinstance(dtd, dict) and ("patience" in dtd or dtd.get("mode") == "patience"):
        dtd = {k: v for k, v in dtd.items() if k != "patience"}
        if "patience" in objective["dtd"]:
            dtd.setdefault("tau_share", objective["dtd"]["patience"])
        if dtd.get("mode") == "patience":
            dtd["mode"] = "counter"
        objective = {**objective, "dtd": dtd}
    return {**d, "objective": objective}


def phase_boundaries(cfg: RunConfig) -> list[int]:
    """Cumulative step counts [0, end_1, end_2, ...] of the run's phases."""
    bounds = [0]
    for p in cfg.resolved_phases():
        bounds.append(bounds[-1] + max(1, round(p.epochs * cfg.train.steps_per_epoch)))
    return bounds

