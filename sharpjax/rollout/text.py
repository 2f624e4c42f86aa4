"""Host-side glue between strings and the jitted sampler: tokenize, bucket, decode."""

from __future__ import annotations

import dataclasses

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


def fit_sampling(sampling: SamplingConfig, prompt_lengths) -> SamplingConfig:
    """The sampling settings of one batch: with `max_total_length` set, an allocation M that
    gives every row its own whole budget (max_total_length minus its prompt's length).

    M is the shortest prompt's budget rounded up to a multiple of 16 * ceil(T / 128) (about
    T / 8: a run compiles at most ~8 response sizes per prompt bucket), and at most
    `sampling.max_new_tokens`. Unchanged without `max_total_length` (one fixed budget).

    Args:
      sampling: the run's settings.
      prompt_lengths: [Bp] real (unpadded) prompt lengths of the batch.

    Raises:
      ValueError: a prompt leaves no room for a response within max_total_length.
    """
    total = sampling.max_total_length
    if total is None:
        return sampling
    longest = int(np.max(prompt_lengths))
    if longest >= total:
        raise ValueError(
            f"a prompt of {longest} tokens leaves no room for a response within max_total_length={total}; "
            "raise max_total_length or drop the longer prompts."
        )
    m = response_allocation(total, int(np.min(prompt_lengths)), cap=sampling.max_new_tokens)
    return dataclasses.replace(sampling, max_new_tokens=m)


def response_allocation(max_total_length: int, shortest_prompt: int, *, cap: int) -> int:
    """M, the response slots of a batch whose shortest prompt has `shortest_prompt` tokens:
    its budget max_total_length - shortest_prompt rounded up to a multiple of 16 * ceil(T / 128),
    at most `cap` (`fit_sampling`; the plan's worst case is `shortest_prompt=1`)."""
    step = 16 * -(-max_total_length // 128)
    return min(cap, -(-(max_total_length - shortest_prompt) // step) * step)


def check_positions(config: ModelConfig, prompt_len: int, sampling: SamplingConfig) -> None:
    """Raises ValueError when a batch padded to `prompt_len` could reach past the model's context.

    With `max_total_length` a row's last position is below it; otherwise below P + M.
    """
    if sampling.max_total_length is not None:
        if sampling.max_total_length > config.max_position_embeddings:
            raise ValueError(
                f"max_total_length {sampling.max_total_length} exceeds the model's context of "
                f"{config.max_position_embeddings} tokens."
            )
    elif prompt_len + sampling.max_new_tokens > config.max_position_embeddings:
        raise ValueError(
            f"prompt bucket {prompt_len} + max_new_tokens {sampling.max_new_tokens} exceeds the model's "
            f"context of {config.max_position_embeddings} tokens."
        )


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
    """Samples `sampling.num_samples` responses per rendered prompt; returns texts and batch.

    With `sampling.max_total_length`, each prompt's budget is that minus its own length
    (`fit_sampling`), whatever the other prompts of the batch are.
    """
    tokens, mask = encode_prompts(tokenizer, prompts, buckets=buckets)
    sampling = fit_sampling(sampling, mask.sum(-1))
    check_positions(config, tokens.shape[1], sampling)
    rollout = sample(params, tokens, mask, key, config=config, sampling=sampling)
    return decode_responses(tokenizer, rollout), rollout
