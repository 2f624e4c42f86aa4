"""The project's own base model: SFT of a tiny Llama-shaped transformer on the arithmetic task.

    config.py      SFTConfig, sectioned like RunConfig: model, task, optim, eval (and seed)
    train.py       encode_examples, sft_loss, train (one jitted AdamW step, CPU minutes)
    base_model.py  train_base_model (cached HF directory), shipped_model_dir (sharpjax/assets),
                   resolve_model_dir ("sft:<size>": the shipped model, or retrained here),
                   measure_accuracy (through the evaluation harness)
"""

from sharpjax.sft.base_model import (
    INFO_FILE,
    Accuracy,
    cache_dir,
    check_model_dir,
    load_sft_info,
    measure_accuracy,
    resolve_model_dir,
    resolve_model_dirs,
    shipped_model_dir,
    train_base_model,
)
from sharpjax.sft.config import SFTConfig, SFTEvalConfig, SFTModelConfig, SFTOptimConfig, SFTTaskConfig
from sharpjax.sft.train import SFTHistory, encode_examples, sft_loss, train

__all__ = [
    "INFO_FILE",
    "Accuracy",
    "SFTConfig",
    "SFTEvalConfig",
    "SFTModelConfig",
    "SFTOptimConfig",
    "SFTTaskConfig",
    "SFTHistory",
    "cache_dir",
    "check_model_dir",
    "encode_examples",
    "load_sft_info",
    "measure_accuracy",
    "resolve_model_dir",
    "resolve_model_dirs",
    "shipped_model_dir",
    "sft_loss",
    "train",
    "train_base_model",
]
