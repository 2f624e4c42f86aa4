"""Host-side glue between strings and the jitted sampler: tokenize, bucket, decode."""

from __future__ import annotations

import jax
import numpy as np

from sharpjax.models.config import ModelConfig
from sharpjax.models.tokenizer import bucket_length, left_pad
from sharpjax.models.transformer import Params
from sharpjax.parallel import to_host
from sharpjax.rollout.sampler import RolloutBatch, SamplingConfig, sample

DEFAULT_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192)


def encode_prompts(
    tokenizer, texts: list[str], *, buckets: tuple[int, ...] = DEFAULT_BUCKETS
) -> tuple[np.ndarray, np.ndarray]:
    """Tokenizes rendered prompts (no special tokens added) and left-pads to a bucket.

    Padding to a fixed set of lengths means a training run compiles the sampler a handful
    of times, not once per batch.
    """
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    length = bucket_length(max(len(x) for x in ids), buckets)
    return left_pad(ids, pad_id=tokenizer.pad_token_id, length=length)


def prompt_lengths(tokenizer, texts: list[str]) -> list[int]:
    """Tokens of each rendered prompt as `encode_prompts` counts them (no special tokens added)."""
    if not texts:
        return []
    return [len(x) for x in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def decode_responses(tokenizer, rollout: RolloutBatch) -> list[str]:
    """The response text of every row (prompt, padding and stop token stripped)."""
    tokens = to_host(rollout.tokens)
    mask = to_host(rollout.response_mask).astype(bool)
    return [tokenizer.decode(row[m], skip_special_tokens=True) for row, m in zip(tokens, mask)]


def generate_text(
    params: Params,
    config: ModelConfig,
    tokenizer,
    prompts: list[str],
    key: jax.Array,
    sampling: SamplingConfig,
    *,
    buckets: tuple[int, ...] = DEFAULT_BUCKETS,
) -> tuple[list[str], RolloutBatch]:
    """Samples `sampling.num_samples` responses per rendered prompt; returns texts and batch."""
    tokens, mask = encode_prompts(tokenizer, prompts, buckets=buckets)
    if tokens.shape[1] + sampling.max_new_tokens > config.max_position_embeddings:
        raise ValueError(
            f"prompt bucket {tokens.shape[1]} + max_new_tokens {sampling.max_new_tokens} exceeds the model's "
            f"context of {config.max_position_embeddings} tokens."
        )
    rollout = sample(params, tokens, mask, key, config=config, sampling=sampling)
    return decode_responses(tokenizer, rollout), rollout
