"""Teacher-forced per-token log-probabilities: the quantity every reward and loss consumes.

Logits are computed a chunk of positions at a time under `jax.checkpoint`, so scoring a
[256, 2048] batch with a 128K vocabulary never materializes the [B, T, V] fp32 logits,
neither in the forward nor in the backward pass. Rows can also be scored a micro-batch at a
time (`micro_batch_rows`, sized by `rows_per_micro_batch`), so that scoring every row of a
step (the reference model's pass) needs the activation memory of one micro-batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from sharpjax.models.config import ModelConfig
from sharpjax.models.transformer import Params, forward, logits, positions_from_mask


def _chunk_logprobs(params, hidden_BCD, targets_BC, temperature):
    logits_BCV = logits(params, hidden_BCD) / temperature
    logz_BC = jax.nn.logsumexp(logits_BCV, axis=-1)
    picked_BC = jnp.take_along_axis(logits_BCV, targets_BC[..., None], axis=-1)[..., 0]
    return picked_BC - logz_BC


def token_logprobs_from_hidden(
    params: Params,
    hidden_BTD: Float[Array, "B T D"],
    targets_BT: Int[Array, "B T"],
    *,
    chunk_size: int = 256,
    temperature: float = 1.0,
) -> Float[Array, "B T"]:
    """log softmax(logits / temperature)[target] at every position, in fp32, chunked over T."""
    b, t, d = hidden_BTD.shape
    chunk = min(chunk_size, t)
    pad = (-t) % chunk
    hidden = jnp.pad(hidden_BTD, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets_BT, ((0, 0), (0, pad)))
    n = (t + pad) // chunk
    hidden_NBCD = hidden.reshape(b, n, chunk, d).swapaxes(0, 1)
    targets_NBC = targets.reshape(b, n, chunk).swapaxes(0, 1)
    body = jax.checkpoint(lambda h, y: _chunk_logprobs(params, h, y, temperature))
    _, out_NBC = jax.lax.scan(lambda c, xs: (c, body(*xs)), None, (hidden_NBCD, targets_NBC))
    return out_NBC.swapaxes(0, 1).reshape(b, t + pad)[:, :t]


def rows_per_micro_batch(num_rows: int, seq_len: int, *, tokens_per_micro_batch: int, row_shards: int = 1) -> int:
    """Rows per scoring micro-batch: as many as fit in the token budget, dividing the batch.

    Args:
      num_rows: B, rows of the batch.
      seq_len: T, tokens per row.
      tokens_per_micro_batch: budget per device (one row shard): at least one row.
      row_shards: devices the rows are sharded over (mesh data x fsdp); the budget is per
        device, so a micro-batch holds up to `row_shards` times as many rows.

    Returns:
      The largest divisor of B that is at most the budget and, where the batch allows it, a
      multiple of `row_shards` (every device then gets the same rows of every micro-batch).
    """
    cap = max(1, tokens_per_micro_batch // max(seq_len, 1)) * row_shards
    if cap >= num_rows:
        return num_rows
    divisors = [r for r in range(1, cap + 1) if num_rows % r == 0]
    aligned = [r for r in divisors if r % row_shards == 0]
    return max(aligned or divisors)


def score_tokens(
    params: Params,
    tokens_BT: Int[Array, "B T"],
    attention_mask_BT: Int[Array, "B T"],
    *,
    config: ModelConfig,
    remat: str = "none",
    chunk_size: int = 256,
    temperature: float = 1.0,
    micro_batch_rows: int | None = None,
) -> Float[Array, "B T"]:
    """Per-token log-probs of a (left-padded prompt + response) batch under `params`.

    Args:
      params: any params of the architecture (policy, frozen reference, base).
      tokens_BT: prompt and response tokens, as returned by the sampler.
      attention_mask_BT: 1 on real tokens (prompt and response), 0 on padding.
      config: the architecture.
      remat: per-layer rematerialization policy (training: "full" or "dots").
      chunk_size: positions per logits chunk.
      temperature: score under softmax(logits / temperature).
      micro_batch_rows: score this many rows at a time (`jax.lax.map` over micro-batches;
        must divide B, see `rows_per_micro_batch`); None: all rows in one pass. Rows are
        independent, so the result is the same up to fp32 summation order.

    Returns:
      logprobs_BT: entry t is log p(tokens[t] | tokens[<t]); entry 0 is 0. Entries on
      padding are meaningless: multiply by a response mask.
    """
    b, t = tokens_BT.shape
    score = lambda tokens, mask: _score(params, tokens, mask, config, remat, chunk_size, temperature)  # noqa: E731
    if micro_batch_rows is None or micro_batch_rows >= b:
        return score(tokens_BT, attention_mask_BT)
    if b % micro_batch_rows:
        raise ValueError(f"micro_batch_rows={micro_batch_rows} does not divide the batch of {b} rows.")
    n = b // micro_batch_rows
    # Micro-batch j holds rows j, j + n, j + 2n, ...: a strided split keeps each micro-batch
    # spread over the row shards like the whole batch (a contiguous one would sit on a few).
    split = lambda x: x.reshape(micro_batch_rows, n, t).swapaxes(0, 1)  # noqa: E731
    out_NRT = jax.lax.map(lambda xs: score(*xs), (split(tokens_BT), split(attention_mask_BT)))
    return out_NRT.swapaxes(0, 1).reshape(b, t)


def _score(params, tokens_BT, attention_mask_BT, config, remat, chunk_size, temperature):
    positions_BT = positions_from_mask(attention_mask_BT)
    hidden_BTD, _ = forward(
        params,
        tokens_BT,
        config=config,
        positions_BT=positions_BT,
        key_mask_BS=attention_mask_BT.astype(bool),
        remat=remat,
    )
    next_BT = token_logprobs_from_hidden(
        params, hidden_BTD[:, :-1], tokens_BT[:, 1:], chunk_size=chunk_size, temperature=temperature
    )
    return jnp.pad(next_BT, ((0, 0), (1, 0)))
