"""Symbolic model directories in configs: `sft:<size>` is the project's own arithmetic base model.

It is trained on first use (`sharpjax.train.sft.train_base_model`, minutes on a CPU) and
cached under `$SHARPJAX_CACHE_DIR` (default `~/.cache/sharpjax`); later runs reuse it.
"""

from __future__ import annotations

import os

from sharpjax.train.config import ConfigError


def cache_dir() -> str:
    return os.environ.get("SHARPJAX_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "sharpjax")


def resolve_model_dir(model_dir: str) -> str:
    """`sft:<size>` -> the cached (trained if absent) base model's directory; a path -> itself."""
    if not model_dir.startswith("sft:"):
        if not os.path.isdir(model_dir):
            raise ConfigError(
                f"config.model_dir={model_dir!r} is not a directory; give a local Hugging Face model directory "
                "(config.json + *.safetensors + tokenizer files) or 'sft:quick' / 'sft:default'."
            )
        return model_dir
    from sharpjax.train.presets import sft_config
    from sharpjax.train.sft import train_base_model

    size = model_dir.split(":", 1)[1]
    return train_base_model(os.path.join(cache_dir(), f"sft_{size}"), sft_config(size))


def resolve_model_dirs(config_dict):
    """A copy of the ml-collections config with `model_dir` / `ref_model_dir` resolved."""
    config_dict = config_dict.copy_and_resolve_references() if hasattr(config_dict, "copy_and_resolve_references") else dict(config_dict)
    if hasattr(config_dict, "unlock"):
        config_dict.unlock()
    config_dict["model_dir"] = resolve_model_dir(config_dict["model_dir"])
    if config_dict.get("ref_model_dir"):
        config_dict["ref_model_dir"] = resolve_model_dir(config_dict["ref_model_dir"])
    return config_dict
