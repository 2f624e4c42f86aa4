"""Frozen config dataclasses <-> ml-collections dicts: the one machinery of `RunConfig` and `SFTConfig`.

A config is a frozen dataclass, one nested dataclass per section, each field typed and its default
the library's. `as_config_dict` turns an instance into the mutable ml-collections form that
experiment files edit and the command line overrides (`--config.optim.learning_rate=3e-6`);
`build_config` turns such a (nested) mapping back into the frozen dataclass, checking every name
and type, with a ConfigError naming the dotted field. It sits just above `errors` so that every
layer with a config (`sft`, `train`) and the `configs` layer above them use the same code.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

import ml_collections

from sharpjax.errors import ConfigError

__all__ = ["as_config_dict", "build_config", "to_plain"]


def to_plain(config: Any) -> Any:
    """A ConfigDict (or any mapping with `to_dict`), nested, as plain dicts; other values as they are."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    if isinstance(config, Mapping):
        return {k: to_plain(v) for k, v in config.items()}
    return config


def build_config(cls, values: Any, where: str = "config"):
    """A frozen config dataclass from a (nested) mapping; nested sections follow the field types.

    Unknown fields and values of the wrong type are a ConfigError naming the dotted field.
    """
    if isinstance(values, cls):
        return values
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where} must be a mapping of fields of {cls.__name__}, got {values!r}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}.{unknown[0]}: unknown field of {cls.__name__}; known fields: {', '.join(sorted(fields))}."
        )
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build_config(hint, value, f"{where}.{name}")
        else:
            kwargs[name] = _coerce(value, hint, f"{where}.{name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if str(e).startswith(where):  # already names the field
            raise
        raise ConfigError(f"{where}: {e}") from e


def _hint_name(hint: Any) -> str:
    if typing.get_origin(hint) is typing.Literal:
        return ", ".join(map(repr, typing.get_args(hint)))
    return getattr(hint, "__name__", str(hint))


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Checks a value against its annotation; lists -> tuples, "a,b" -> ("a", "b") for tuple fields."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        others = [a for a in args if a is not type(None)]
        if len(others) > 1:  # e.g. int | Literal["auto"]: the first that takes the value
            if int in others and isinstance(value, str) and value.isdigit():  # "--config.rollout.chunk_prompts=16"
                value = int(value)
            for a in others:
                try:
                    return _coerce(value, a, where)
                except ConfigError:
                    pass
            raise ConfigError(f"{where}={value!r} must be one of: {' or '.join(map(_hint_name, others))}.")
        hint = others[0]
        args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        if isinstance(value, str):  # "--config.data.validation=math500,aime24"
            value = tuple(v for v in value.split(",") if v)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}={value!r} must be a sequence.")
        return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if typing.get_origin(hint) is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}={value!r} must be one of {', '.join(map(repr, args))}.")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) or (hint is not bool and isinstance(value, bool)):
            raise ConfigError(f"{where}={value!r} must be of type {hint.__name__}.")
    return value


def as_config_dict(obj: Any) -> ml_collections.ConfigDict:
    """Every field of the config dataclass `obj`, sectioned as the schema is (the inverse of `build_config`).

    A field whose value is None becomes a typed `FieldReference`, so it can be overridden with a
    value of its type. Nothing is hand-kept: a new field of the schema appears automatically.
    """
    hints = typing.get_type_hints(type(obj))
    c = ml_collections.ConfigDict()
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if dataclasses.is_dataclass(value):
            c[field.name] = as_config_dict(value)
        elif value is None:
            c[field.name] = ml_collections.FieldReference(None, field_type=_optional_type(hints[field.name]))
        else:
            c[field.name] = value
    return c


def _optional_type(hint: Any) -> type:
    """`int | None` -> int (the type a None default may later hold)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(inner) > 1:  # e.g. `int | Literal["auto"] | None`: RunConfig's check takes either
            return object
        return typing.get_origin(inner[0]) or inner[0]
    return hint
