"""Rollout: jitted sampling with a KV cache, and teacher-forced scoring."""

from sharpjax.rollout.sampler import (
    RolloutBatch,
    SamplingConfig,
    filter_logits,
    sample,
    sampling_config_for,
    trim_padding,
)
from sharpjax.rollout.scoring import score_tokens, token_logprobs_from_hidden
from sharpjax.rollout.text import encode_prompts, generate_text

__all__ = [
    "RolloutBatch",
    "SamplingConfig",
    "encode_prompts",
    "filter_logits",
    "generate_text",
    "sample",
    "sampling_config_for",
    "score_tokens",
    "token_logprobs_from_hidden",
    "trim_padding",
]
