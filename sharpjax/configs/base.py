"""The base config every run is built on: `RunConfig`'s defaults (the paper's) as a ConfigDict.

The typed schema is `sharpjax.train.config.RunConfig` (one dataclass per section, every field
documented there); this module turns its defaults into the mutable ml-collections form that
experiment files edit and the command line overrides (`--config.optim.learning_rate=3e-6`).
Fields whose default is None become typed `FieldReference`s, so they can be overridden with a
value of their type. Nothing here is hand-kept: a new field of the schema appears automatically
(`sharpjax.schema.as_config_dict`). `sft_base_config(size)` is the same for the SFT base model's
`SFTConfig` (`experiments/sft_arithmetic.py`).
"""

from __future__ import annotations

from typing import Any

import ml_collections

from sharpjax.errors import ConfigError
from sharpjax.schema import as_config_dict
from sharpjax.sft.config import sft_config
from sharpjax.train.config import RunConfig

__all__ = ["base_config", "reward_preset", "sft_base_config"]


def base_config(model_dir: str = "") -> ml_collections.ConfigDict:
    """Every field of `RunConfig` at its default (PAPER.md's settings), sectioned as the schema is."""
    return as_config_dict(RunConfig(model_dir=model_dir))


def sft_base_config(size: str = "default") -> ml_collections.ConfigDict:
    """The SFT run of base model `size` (`sft_config(size)`: "quick" or "default"), sectioned as `SFTConfig` is.

    `SFTConfig.from_config_dict` is its inverse; `experiments/sft_arithmetic.py` returns it.
    """
    return as_config_dict(sft_config(size))


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
