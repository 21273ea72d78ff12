"""Dicts and `key=value` overrides into config dataclasses, every key and value checked against the field types.

A stored `config.json`, a study's grid point and the command line's `train.lr=1e-3` all go through
`to_dataclass`; a bad key or value is one `ConfigError` naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from .schema import ConfigError, check_choice

if TYPE_CHECKING:
    from .run import RunConfig

T = TypeVar("T")


def to_dataclass(cls: type[T], d: Any, prefix: str = "") -> T:
    """`d` as a `cls`, recursively; `prefix` (e.g. `objective.`) is the dotted key of `d` in error messages."""
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {d!r}")
    hints = typing.get_type_hints(cls)
    unknown = set(d) - set(hints)
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(f"unknown key '{prefix}{key}'; allowed: {', '.join(sorted(hints))}")
    return cls(**{k: _coerce(hints[k], v, f"{prefix}{k}") for k, v in d.items()})


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """`value` as the field type `tp`: numbers widen (1 -> 1.0, 2.0 -> 2), nothing else converts."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(inner, value, key)
    if dataclasses.is_dataclass(tp):
        return to_dataclass(tp, value, key + ".")
    if origin is Literal:
        check_choice(key, value, args)
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(args[0], v, f"{key}.{i}") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def parse_value(text: str) -> Any:
    """The right-hand side of key=value: JSON when it parses (numbers, lists, true/false), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """`cfg` with `a.b.c=value` overrides applied (list indices allowed: `phases.0.epochs=2`), validated.

    Keys under a piece's `*_params` are free (the piece's dataclass checks them); every other key must exist.
    """
    d = dataclasses.asdict(cfg)  # every key, the empty piece parameters included
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.lr=1e-3)")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node: Any = d
        for j, part in enumerate(parts[:-1]):
            node = _child(node, part, ".".join(parts[: j + 1]))
        last = parts[-1]
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"unknown key '{key}': '{'.'.join(parts[:-1])}' is a value, not a section")
        if isinstance(node, list):
            _child(node, last, key)
            node[int(last)] = parse_value(text)
        else:
            if last not in node and not (len(parts) > 1 and parts[-2].endswith("_params")):
                raise ConfigError(f"unknown key '{key}'; allowed here: {', '.join(sorted(node))}")
            node[last] = parse_value(text)
    return type(cfg).from_dict(d).validate()


def _child(node: Any, part: str, path: str) -> Any:
    """`node[part]` of the override tree, or an error naming the dotted `path` and what is there."""
    if isinstance(node, list):
        if not part.isdigit() or int(part) >= len(node):
            raise ConfigError(f"'{path}': index {part!r} out of range (list has {len(node)} items)")
        return node[int(part)]
    if not isinstance(node, dict) or part not in node:
        allowed = ", ".join(sorted(node)) if isinstance(node, dict) else "(not a section)"
        raise ConfigError(f"unknown key '{path}'; allowed here: {allowed}")
    if node[part] is None:
        raise ConfigError(f"'{path}' is unset (null); set the whole section, e.g. {path}=" + "{...}")
    return node[part]
