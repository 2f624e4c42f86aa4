"""The transformer family (Llama 3.x, Qwen2.5, Qwen3), HF import/export, tokenizers (sharding rules: `sharpjax.parallel`)."""

from sharpjax.models.config import ModelConfig, RopeConfig
from sharpjax.models.hf import load_config, load_model, load_params, save_model
from sharpjax.models.transformer import (
    KVCache,
    Params,
    apply,
    forward,
    init_params,
    logits,
    param_logical_axes,
    positions_from_mask,
)

__all__ = [
    "KVCache",
    "ModelConfig",
    "Params",
    "RopeConfig",
    "apply",
    "forward",
    "init_params",
    "load_config",
    "load_model",
    "load_params",
    "logits",
    "param_logical_axes",
    "positions_from_mask",
    "save_model",
]
