"""Data: math problem sets, the paper's prompt, and resumable prompt batches.

Nothing here imports jax; `render_prompt` imports transformers only when called.
"""

from sharpjax.data.datasets import (
    DATA_DIR_ENV,
    DEEPSCALER_HUB_ID,
    Problem,
    available_datasets,
    load_dataset,
    resolve_data_dir,
)
from sharpjax.data.iterator import PromptIterator, epoch_permutation
from sharpjax.data.prompts import PROMPT_TEMPLATE, format_prompt, render_prompt, render_prompts

__all__ = [
    "DATA_DIR_ENV",
    "DEEPSCALER_HUB_ID",
    "PROMPT_TEMPLATE",
    "Problem",
    "PromptIterator",
    "available_datasets",
    "epoch_permutation",
    "format_prompt",
    "load_dataset",
    "render_prompt",
    "render_prompts",
    "resolve_data_dir",
]
