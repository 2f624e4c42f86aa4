"""The base config every run is built on: `RunConfig`'s defaults (the paper's) as a ConfigDict.

The typed schema is `sharpjax.train.config.RunConfig` (one dataclass per section, every field
documented there); this module turns its defaults into the mutable ml-collections form that
experiment files edit and the command line overrides (`--config.optim.learning_rate=3e-6`).
Fields whose default is None become typed `FieldReference`s, so they can be overridden with a
value of their type. Nothing here is hand-kept: a new field of the schema appears automatically.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import ml_collections

from sharpjax.errors import ConfigError
from sharpjax.train.config import RunConfig

__all__ = ["base_config", "reward_preset"]


def base_config(model_dir: str = "") -> ml_collections.ConfigDict:
    """Every field of `RunConfig` at its default (PAPER.md's settings), sectioned as the schema is."""
    return _as_config_dict(RunConfig(model_dir=model_dir))


def _as_config_dict(obj: Any) -> ml_collections.ConfigDict:
    hints = typing.get_type_hints(type(obj))
    c = ml_collections.ConfigDict()
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if dataclasses.is_dataclass(value):
            c[field.name] = _as_config_dict(value)
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


def reward_preset(name: str) -> dict[str, Any]:
    """The paper's named reward settings: task | likelihood | power-a<alpha> | tilted-a<alpha>-b<beta_inv>.

    e.g. "power-a2" = sampling, alpha=2, beta_inv=0; "tilted-a4-b100" = sampling, alpha=4, beta_inv=100.
    """
    if name == "task":
        return dict(mode="optimization", alpha=0.0, beta_inv=1.0)
    if name == "likelihood":
        return dict(mode="optimization", alpha=1.0, beta_inv=0.0)
    parts = name.split("-")
    try:
        if parts[0] == "power" and len(parts) == 2 and parts[1].startswith("a"):
            return dict(mode="sampling", alpha=float(parts[1][1:]), beta_inv=0.0)
        if parts[0] == "tilted" and len(parts) == 3 and parts[1].startswith("a") and parts[2].startswith("b"):
            return dict(mode="sampling", alpha=float(parts[1][1:]), beta_inv=float(parts[2][1:]))
    except ValueError:
        pass
    raise ConfigError(
        f"unknown reward preset {name!r}; use task, likelihood, power-a<alpha> (e.g. power-a2) or "
        "tilted-a<alpha>-b<beta_inv> (e.g. tilted-a4-b100)."
    )
