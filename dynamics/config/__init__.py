"""Run configuration: the schema, `key=value` overrides and presets.

A run is fully described by one `RunConfig`; its JSON form (`RunConfig.to_dict`) is what lands in
`config.json` and what the results store hashes to name the run directory.

- `schema.py`: one dataclass per section (data, model, objective, train, eval, phases, init) with its checks.
- `run.py`: `RunConfig`, the checks across sections, the saved and hashed dict.
- `overrides.py`: dicts and `a.b.c=value` overrides into the dataclasses, every key and value checked.
- `presets.py`: one function per scale (`SCALES`) and the paper's methods (`METHODS`) on top.
- `vocabulary.py`: command-line choices owned by modules that import torch.

The dict-to-dataclass conversion is written here (about 50 lines) rather than taken from a library. dacite
reports a wrong value without the value (`wrong type for field "train.lr" - should be "float" instead of
"str"`), an unknown key without its section or the allowed keys, and refuses an int for a float field unless
told to cast; OmegaConf has no `Literal` fields (the schema's allowed words), its own multi-line errors, and a
`DictConfig` where the hash needs a plain dict. Either would add a dependency and wrappers to keep every
message to one line naming the key, the value and what is allowed.
"""

from .overrides import apply_overrides, parse_value, to_dataclass
from .presets import BASE_PRESETS, METHODS, SCALES, apply_method, preset, preset_names
from .run import RunConfig, phase_boundaries
from .schema import (
    DATASETS,
    DIT_SIZES,
    EVAL_METRICS,
    MODELS,
    SAMPLERS,
    TOY_DATASETS,
    ConfigError,
    DataConfig,
    DTDConfig,
    EvalConfig,
    GuidanceConfig,
    InitConfig,
    ModelConfig,
    ObjectiveConfig,
    PhaseConfig,
    SamplerConfig,
    TrainConfig,
    check_allowed_values,
    check_choice,
)
from .vocabulary import EXECUTORS, SAMPLING_MODES, TAS_METHODS, TAS_OPTIMIZERS

__all__ = [
    "BASE_PRESETS", "DATASETS", "DIT_SIZES", "EVAL_METRICS", "EXECUTORS", "METHODS", "MODELS", "SAMPLERS",
    "SAMPLING_MODES", "SCALES", "TAS_METHODS", "TAS_OPTIMIZERS", "TOY_DATASETS", "ConfigError", "DTDConfig",
    "DataConfig", "EvalConfig", "GuidanceConfig", "InitConfig", "ModelConfig", "ObjectiveConfig", "PhaseConfig",
    "RunConfig", "SamplerConfig", "TrainConfig", "apply_method", "apply_overrides", "check_allowed_values",
    "check_choice", "parse_value", "phase_boundaries", "preset", "preset_names", "to_dataclass",
]
