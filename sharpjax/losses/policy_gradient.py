"""The policy-gradient loss: REINFORCE with RLOO advantages (the paper's), PPO clipping as
an option, truncated importance weights, an optional KL(pi || pi_ref) term, and the loss
aggregations.

Gradient of the paper's loss (token-mean aggregation, N_tok valid tokens in the global
batch, w the truncated importance weight, a constant):

    grad loss = -(1 / N_tok) sum_i A_i sum_t w_it grad log pi(y_it | x, y_i,<t)

so with w = 1 and exactly enumerated groups its expectation is -(1 / N_tok) * K * grad E[R]
per prompt (RLOO keeps it unbiased). tests/losses checks this against the gradient of the
enumerated objective.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from sharpjax.losses._dtype import compute_dtype
from sharpjax.losses.config import LossConfig
from sharpjax.losses.kl import kl_estimate

Scalar = Float[Array, ""] | Int[Array, ""] | float | int


def masked_mean(x_BT: Float[Array, "..."], mask_BT: Float[Array, "..."]) -> Float[Array, ""]:
    """Mean of x over the positions where mask is nonzero; 0 for an empty mask.

    Args:
      x_BT: values, any shape.
      mask_BT: 0/1 mask of the same shape.

    Returns:
      sum(x * mask) / max(sum(mask), 1), a scalar.
    """
    total = jnp.sum(jnp.where(mask_BT > 0, x_BT, 0))
    return total / jnp.maximum(jnp.sum(mask_BT), 1)


def aggregate_loss(
    loss_BT: Float[Array, "B T"],
    mask_BT: Float[Array, "B T"],
    *,
    config: LossConfig,
    num_tokens: Scalar | None = None,
    num_sequences: Scalar | None = None,
) -> Float[Array, ""]:
    """Reduces per-token losses to the scalar loss with `config.aggregation`.

    Every mode is a sum over this batch's tokens divided by a normalizer that the caller can
    fix to its global-batch value, so the gradients of micro-batches (or of shards) add up to
    the gradient of the whole batch.

    Args:
      loss_BT: per-token losses (padding positions are ignored).
      mask_BT: 1 on valid response tokens, 0 on padding.
      config: uses `aggregation` and `sum_normalizer`.
      num_tokens: "token_mean" normalizer: valid tokens in the global batch; None means
        this batch's mask.sum().
      num_sequences: "sequence_mean" normalizer: sequences in the global batch; None means
        the number of rows of this batch with at least one valid token.

    Returns:
      The scalar loss.
    """
    valid_BT = jnp.asarray(mask_BT) > 0
    loss_BT = jnp.where(valid_BT, loss_BT, 0)
    if config.aggregation == "token_mean":
        count = jnp.sum(mask_BT) if num_tokens is None else num_tokens
        return jnp.sum(loss_BT) / jnp.maximum(count, 1)
    if config.aggregation == "sequence_mean":
        length_B = jnp.sum(mask_BT, axis=1)
        per_sequence_B = jnp.sum(loss_BT, axis=1) / jnp.maximum(length_B, 1)
        count = jnp.sum(length_B > 0) if num_sequences is None else num_sequences
        return jnp.sum(per_sequence_B) / jnp.maximum(count, 1)
    if config.aggregation == "sum":
        return jnp.sum(loss_BT) / config.sum_normalizer
    raise ValueError(f"Unknown LossConfig.aggregation {config.aggregation!r}.")


def policy_gradient_loss(
    logp_BT: Float[Array, "B T"],
    *,
    rollout_logp_BT: Float[Array, "B T"],
    advantages_B: Float[Array, " B"],
    mask_BT: Float[Array, "B T"],
    config: LossConfig,
    ref_logp_BT: Float[Array, "B T"] | None = None,
    old_logp_BT: Float[Array, "B T"] | None = None,
    num_tokens: Scalar | None = None,
    num_sequences: Scalar | None = None,
) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
    """Policy-gradient loss of one (micro-)batch of responses, and its metrics.

    REINFORCE (config.ppo_clip_eps is None, the paper's): per-token loss -w * A * log pi with
    w = min(exp(logp_train - logp_rollout), cap) a constant, logp_train = stop_gradient(logp).
    PPO (config.ppo_clip_eps = eps): per-token loss
    -w * min(rho * A, clip(rho, 1 - eps, 1 + eps_high) * A), rho = exp(log pi - logp_old),
    w = min(exp(logp_old - logp_rollout), cap); logp_old = old_logp_BT (the trainer's log-probs
    before this batch's first update) or, when None, the rollout's.
    Then the aggregation of `config`, plus kl_coef * the same aggregation of the per-token
    KL estimate when kl_coef > 0. Everything is computed in (at least) fp32.

    Args:
      logp_BT: log pi_theta of each sampled response token under the current params, the
        only input with a gradient.
      rollout_logp_BT: log-probs of the tokens under the distribution they were sampled
        from, the behaviour policy (the sampler's `sampling_logprobs`: tempered when T != 1);
        treated as constants.
      advantages_B: one advantage per response (e.g. `compute_advantages(...).reshape(-1)`),
        shared by its tokens; treated as constants.
      mask_BT: 1 on valid response tokens (EOS included), 0 on prompt and padding.
      config: the loss options.
      ref_logp_BT: log pi_ref of the tokens (frozen base model); required if
        config.kl_coef > 0, else only used for the KL metrics (NaN when absent).
      old_logp_BT: PPO only: trainer log-probs of the pre-update policy.
      num_tokens: valid-token count of the global batch (token_mean normalizer); None means
        mask_BT.sum(). A caller that micro-batches passes the global count.
      num_sequences: sequence count of the global batch (sequence_mean normalizer).

    Returns:
      (loss, metrics): the scalar loss and a flat dict of scalar arrays whose keys do not
      depend on the config: loss, pg_loss, kl_loss, kl (per-token k3 mean vs pi_ref),
      kl_sequence (its per-response sum, averaged), entropy (mean -log pi of sampled tokens,
      an estimate of per-token entropy), response_length(_max), advantage_{mean,std,min,max},
      is_weight_{mean,max}, is_clip_frac (tokens whose importance weight hit the cap),
      ppo_clip_frac (tokens where the clipped surrogate is active; 0 without PPO),
      rollout_logp_abs_diff(_max) (|logp_train - logp_rollout|, ~0 when the sampler and the
      trainer agree; at a sampling temperature T != 1 it also holds the tempering) and
      num_tokens (the normalizer used).

    Raises:
      ValueError: config.kl_coef > 0 and ref_logp_BT is None.
    """
    if config.kl_coef > 0 and ref_logp_BT is None:
        raise ValueError("policy_gradient_loss: config.kl_coef > 0 needs ref_logp_BT.")
    optional = [x for x in (ref_logp_BT, old_logp_BT) if x is not None]
    dtype = compute_dtype(logp_BT, rollout_logp_BT, advantages_B, *optional)
    valid_BT = jnp.asarray(mask_BT) > 0
    mask_BT = valid_BT.astype(dtype)

    def prepare(x_BT: Array) -> Array:
        # Padding may hold -inf or garbage; zero it so no NaN reaches values or gradients.
        return jnp.where(valid_BT, jnp.asarray(x_BT, dtype), 0)

    logp_BT = prepare(logp_BT)
    logp_train_BT = jax.lax.stop_gradient(logp_BT)
    rollout_logp_BT = jax.lax.stop_gradient(prepare(rollout_logp_BT))
    advantages_B = jax.lax.stop_gradient(jnp.asarray(advantages_B, dtype))
    advantages_B1 = advantages_B[:, None]

    if config.ppo_clip_eps is None:
        log_is_BT = logp_train_BT - rollout_logp_BT
    else:
        old_BT = rollout_logp_BT if old_logp_BT is None else prepare(old_logp_BT)
        old_BT = jax.lax.stop_gradient(old_BT)
        log_is_BT = old_BT - rollout_logp_BT
    if config.importance_weight_cap is None:
        is_weight_BT = jnp.ones_like(log_is_BT)
        is_clipped_BT = jnp.zeros_like(log_is_BT)
    else:
        log_cap = math.log(config.importance_weight_cap)
        # min(exp(x), cap) = exp(min(x, log cap)) without overflow.
        is_weight_BT = jnp.exp(jnp.minimum(log_is_BT, log_cap))
        is_clipped_BT = (log_is_BT > log_cap).astype(dtype)

    if config.ppo_clip_eps is None:
        pg_BT = -is_weight_BT * advantages_B1 * logp_BT
        ppo_clipped_BT = jnp.zeros_like(logp_BT)
    else:
        eps_low = config.ppo_clip_eps
        eps_high = config.ppo_clip_eps if config.ppo_clip_eps_high is None else config.ppo_clip_eps_high
        ratio_BT = jnp.exp(logp_BT - old_BT)
        surrogate_BT = ratio_BT * advantages_B1
        clipped_BT = jnp.clip(ratio_BT, 1.0 - eps_low, 1.0 + eps_high) * advantages_B1
        pg_BT = -is_weight_BT * jnp.minimum(surrogate_BT, clipped_BT)
        ppo_clipped_BT = jax.lax.stop_gradient(clipped_BT < surrogate_BT).astype(dtype)

    norm = dict(config=config, num_tokens=num_tokens, num_sequences=num_sequences)
    pg_loss = aggregate_loss(pg_BT, mask_BT, **norm)
    if config.kl_coef > 0:
        kl_BT = kl_estimate(
            logp_BT,
            jax.lax.stop_gradient(prepare(ref_logp_BT)),
            estimator=config.kl_estimator,
            clamp=config.log_ratio_clamp,
        )
        kl_loss = config.kl_coef * aggregate_loss(kl_BT, mask_BT, **norm)
    else:
        kl_loss = jnp.zeros((), dtype)
    loss = pg_loss + kl_loss

    length_B = jnp.sum(mask_BT, axis=1)
    if ref_logp_BT is None:
        kl_metric = kl_sequence = jnp.full((), jnp.nan, dtype)
    else:
        k3_BT = kl_estimate(
            logp_train_BT, prepare(ref_logp_BT), estimator="k3", clamp=config.log_ratio_clamp
        )
        k3_BT = jnp.where(valid_BT, k3_BT, 0)
        kl_metric = masked_mean(k3_BT, mask_BT)
        kl_sequence = jnp.mean(jnp.sum(k3_BT, axis=1))
    abs_diff_BT = jnp.abs(logp_train_BT - rollout_logp_BT)
    metrics = {
        "loss": jax.lax.stop_gradient(loss),
        "pg_loss": jax.lax.stop_gradient(pg_loss),
        "kl_loss": jax.lax.stop_gradient(kl_loss),
        "kl": kl_metric,
        "kl_sequence": kl_sequence,
        "entropy": masked_mean(-logp_train_BT, mask_BT),
        "response_length": jnp.mean(length_B),
        "response_length_max": jnp.max(length_B),
        "advantage_mean": jnp.mean(advantages_B),
        "advantage_std": jnp.std(advantages_B),
        "advantage_min": jnp.min(advantages_B),
        "advantage_max": jnp.max(advantages_B),
        "is_weight_mean": masked_mean(is_weight_BT, mask_BT),
        "is_weight_max": jnp.max(jnp.where(valid_BT, is_weight_BT, 0)),
        "is_clip_frac": masked_mean(is_clipped_BT, mask_BT),
        "ppo_clip_frac": masked_mean(ppo_clipped_BT, mask_BT),
        "rollout_logp_abs_diff": masked_mean(abs_diff_BT, mask_BT),
        "rollout_logp_abs_diff_max": jnp.max(jnp.where(valid_BT, abs_diff_BT, 0)),
        "num_tokens": jnp.asarray(
            jnp.sum(mask_BT) if num_tokens is None else num_tokens, dtype
        ),
    }
    return loss, metrics
