"""Exactly enumerable toy policies, for checking the losses against closed forms.

A "policy" here is a table of logits, one row per response prefix (a tabular
autoregressive model over a tiny vocabulary and length), so every response can be listed,
every expectation is a finite sum, and any distribution over responses is reachable. With
an EOS token in the vocabulary responses have different lengths, which shows the length
bias of sequence likelihood.

Not used on the training path: tests/losses and notebooks/closed_forms.ipynb use it to
compare `policy_gradient_loss` with the gradient of the enumerated objective and gradient
ascent with the closed-form optima of DESIGN.md.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, Int

from sharpjax.losses.advantages import compute_advantages
from sharpjax.losses.config import LossConfig
from sharpjax.losses.policy_gradient import policy_gradient_loss


@dataclasses.dataclass(frozen=True, eq=False)
class SequenceSpace:
    """Every response of a tabular autoregressive policy, padded to max_len.

    Attributes:
      vocab_size: V.
      max_len: T, the longest response (a response without EOS stops there).
      eos_id: the EOS token (ends a response, counted in its length), or None.
      tokens_NT: int32 [N, T], the N responses, 0 after the end.
      mask_NT: float32 [N, T], 1 on response tokens.
      state_NT: int32 [N, T], the id of the prefix each token is sampled after (the logits
        row), 0 after the end.
      num_states: S, the number of prefixes (rows of the logits table).
    """

    vocab_size: int
    max_len: int
    eos_id: int | None
    tokens_NT: np.ndarray
    mask_NT: np.ndarray
    state_NT: np.ndarray
    num_states: int

    @property
    def num_sequences(self) -> int:
        return self.tokens_NT.shape[0]

    @property
    def lengths_N(self) -> np.ndarray:
        return self.mask_NT.sum(axis=1)


def enumerate_sequences(vocab_size: int, max_len: int, *, eos_id: int | None = None) -> SequenceSpace:
    """Lists every response of length <= max_len (ending at EOS or at max_len).

    Args:
      vocab_size: V.
      max_len: T.
      eos_id: a token that ends the response, or None (every response has length T).

    Returns:
      The `SequenceSpace`: V^T responses without EOS; with EOS, sum_{t<=T} (V-1)^t (every
      string of non-EOS tokens of length < T followed by EOS, and every one of length T).
    """
    states: dict[tuple[int, ...], int] = {}
    sequences: list[tuple[int, ...]] = []

    def expand(prefix: tuple[int, ...]) -> None:
        states[prefix] = len(states)
        for v in range(vocab_size):
            seq = prefix + (v,)
            if v == eos_id or len(seq) == max_len:
                sequences.append(seq)
            else:
                expand(seq)

    expand(())
    n = len(sequences)
    tokens_NT = np.zeros((n, max_len), np.int32)
    mask_NT = np.zeros((n, max_len), np.float32)
    state_NT = np.zeros((n, max_len), np.int32)
    for i, seq in enumerate(sequences):
        for t, v in enumerate(seq):
            tokens_NT[i, t] = v
            mask_NT[i, t] = 1.0
            state_NT[i, t] = states[seq[:t]]
    return SequenceSpace(vocab_size, max_len, eos_id, tokens_NT, mask_NT, state_NT, len(states))


def token_logprobs(logits_SV: Float[Array, "S V"], space: SequenceSpace) -> Float[Array, "N T"]:
    """Log-prob of each token of every response (0 on padding).

    Args:
      logits_SV: the policy, one row of logits per prefix.
      space: the responses.

    Returns:
      log pi(y_t | y_<t) for every response and position.
    """
    logsm_SV = jax.nn.log_softmax(logits_SV, axis=-1)
    logp_NT = logsm_SV[space.state_NT, space.tokens_NT]
    return jnp.where(space.mask_NT > 0, logp_NT, 0.0)


def sequence_logprobs(logits_SV: Float[Array, "S V"], space: SequenceSpace) -> Float[Array, " N"]:
    """log pi(y) of every response (sum of its token log-probs, as L_ref and L_pol)."""
    return jnp.sum(token_logprobs(logits_SV, space), axis=1)


def sequence_probs(logits_SV: Float[Array, "S V"], space: SequenceSpace) -> Float[Array, " N"]:
    """pi(y) of every response; sums to 1."""
    return jnp.exp(sequence_logprobs(logits_SV, space))


def random_logits(key: Array, space: SequenceSpace, *, scale: float = 1.0) -> Float[Array, "S V"]:
    """A random policy: i.i.d. normal logits times scale (float32; cast for x64 use)."""
    return scale * jax.random.normal(key, (space.num_states, space.vocab_size))


def objective(
    logits_SV: Float[Array, "S V"],
    space: SequenceSpace,
    *,
    task_reward_N: Float[Array, " N"],
    ref_logp_N: Float[Array, " N"],
    w_task: float,
    w_ref: float,
    w_pol: float,
) -> Float[Array, ""]:
    """The exact objective J = E_pi[w_task r + w_ref L_ref] + w_pol H(pi), by enumeration.

    E_pi[-L_pol] = H(pi) when the sampling policy is pi, so this is what the reward
    R = w_task r + w_ref L_ref - w_pol L_pol optimizes in expectation, with the entropy's
    own dependence on pi included (the gradient identity the tests check).
    """
    logp_N = sequence_logprobs(logits_SV, space)
    p_N = jnp.exp(logp_N)
    return jnp.sum(p_N * (w_task * task_reward_N + w_ref * ref_logp_N - w_pol * logp_N))


def tilted_optimum(
    ref_logp_N: Float[Array, " N"],
    task_reward_N: Float[Array, " N"],
    *,
    alpha: float,
    beta_inv: float,
) -> Float[Array, " N"]:
    """Closed-form maximizer of the sampling-mode objective: pi_ref^alpha exp(beta_inv r) / Z.

    beta_inv = 0 gives the power distribution pi_ref^alpha / Z.
    """
    return jax.nn.softmax(alpha * ref_logp_N + beta_inv * task_reward_N)


def likelihood_optimum(ref_logp_N: Float[Array, " N"]) -> Float[Array, " N"]:
    """Maximizer of E_pi[L_ref]: the point mass on the base model's most likely response."""
    return jax.nn.one_hot(jnp.argmax(ref_logp_N), ref_logp_N.shape[0], dtype=ref_logp_N.dtype)


def total_variation(p_N: Float[Array, " N"], q_N: Float[Array, " N"]) -> Float[Array, ""]:
    """Total-variation distance 0.5 * sum |p - q|."""
    return 0.5 * jnp.sum(jnp.abs(p_N - q_N))


def entropy(p_N: Float[Array, " N"]) -> Float[Array, ""]:
    """Shannon entropy of a distribution over responses (0 log 0 = 0)."""
    return -jnp.sum(jnp.where(p_N > 0, p_N * jnp.log(jnp.where(p_N > 0, p_N, 1.0)), 0.0))


def all_groups(num_sequences: int, group_size: int) -> np.ndarray:
    """Every ordered group of `group_size` responses: int32 [N^K, K]."""
    groups = itertools.product(range(num_sequences), repeat=group_size)
    return np.asarray(list(groups), np.int32).reshape(-1, group_size)


def group_loss(
    logits_SV: Float[Array, "S V"],
    rewards_N: Float[Array, " N"],
    groups_MK: Int[Array, "M K"],
    weights_M: Float[Array, " M"],
    *,
    space: SequenceSpace,
    config: LossConfig,
    rollout_logits_SV: Float[Array, "S V"] | None = None,
    ref_logits_SV: Float[Array, "S V"] | None = None,
) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
    """sum_m weights_m * policy_gradient_loss(group m), each group one prompt's K samples.

    With `weights_M` the probability of each group under the rollout policy (`all_groups`
    and `group_probs`) this is the *exact expectation* of the loss, and its gradient the
    exact expected gradient of the sampled estimator; with sampled groups and weights 1/M
    it is the Monte-Carlo loss.

    Args:
      logits_SV: the policy being trained (the gradient flows into it).
      rewards_N: the reward of every response (treated as a constant).
      groups_MK: indices of the K responses of each of M groups.
      weights_M: the weight of each group's loss.
      space: the responses.
      config: the loss options (advantages and loss).
      rollout_logits_SV: the policy that sampled the groups (for the importance weights);
        None means logits_SV itself (on-policy).
      ref_logits_SV: the reference policy, needed when config.kl_coef > 0.

    Returns:
      (weighted loss, metrics of the first group).
    """
    logp_NT = token_logprobs(logits_SV, space)
    if rollout_logits_SV is None:
        rollout_logp_NT = jax.lax.stop_gradient(logp_NT)
    else:
        rollout_logp_NT = token_logprobs(rollout_logits_SV, space)
    ref_logp_NT = None if ref_logits_SV is None else token_logprobs(ref_logits_SV, space)
    advantages_MK = compute_advantages(jax.lax.stop_gradient(rewards_N)[groups_MK], config=config)
    mask_NT = jnp.asarray(space.mask_NT, logp_NT.dtype)

    def one_group(idx_K: Array, advantages_K: Array):
        return policy_gradient_loss(
            logp_NT[idx_K],
            rollout_logp_BT=rollout_logp_NT[idx_K],
            advantages_B=advantages_K,
            mask_BT=mask_NT[idx_K],
            config=config,
            ref_logp_BT=None if ref_logp_NT is None else ref_logp_NT[idx_K],
        )

    loss_M, metrics_M = jax.vmap(one_group)(groups_MK, advantages_MK)
    metrics = {k: v[0] for k, v in metrics_M.items()}
    return jnp.sum(jax.lax.stop_gradient(weights_M) * loss_M), metrics


def group_probs(probs_N: Float[Array, " N"], groups_MK: Int[Array, "M K"]) -> Float[Array, " M"]:
    """Probability of each ordered group of i.i.d. samples."""
    return jnp.prod(probs_N[groups_MK], axis=1)


def sample_groups(
    key: Array, probs_N: Float[Array, " N"], *, num_groups: int, group_size: int
) -> Int[Array, "M K"]:
    """Draws num_groups groups of group_size i.i.d. responses from probs_N."""
    logits_N = jnp.log(probs_N)
    return jax.random.categorical(key, logits_N, shape=(num_groups, group_size))


def gradient_descent(
    loss_fn: Callable[[Array, Array], Array],
    logits_SV: Float[Array, "S V"],
    *,
    space: SequenceSpace,
    steps: int,
    optimizer: optax.GradientTransformation,
    key: Array | None = None,
) -> tuple[Float[Array, "S V"], Float[Array, "steps N"]]:
    """Minimizes loss_fn(logits, key) with optax under one jitted lax.scan.

    Args:
      loss_fn: (logits_SV, key) -> scalar loss; the key is for sampled losses (a fresh one
        each step) and may be ignored by exact ones.
      logits_SV: the initial policy.
      space: the responses (to record the distribution each step).
      steps: number of updates.
      optimizer: e.g. optax.adam(0.05).
      key: PRNG key of the sampled losses (default PRNGKey(0)).

    Returns:
      (final logits, the distribution over responses before each step, [steps, N]).
    """
    key = jax.random.PRNGKey(0) if key is None else key

    @jax.jit
    def run(logits_SV: Array, key: Array):
        def step(carry, key_step):
            logits_SV, opt_state = carry
            grads_SV = jax.grad(loss_fn)(logits_SV, key_step)
            updates, opt_state = optimizer.update(grads_SV, opt_state, logits_SV)
            probs_N = sequence_probs(logits_SV, space)
            return (optax.apply_updates(logits_SV, updates), opt_state), probs_N

        init = (logits_SV, optimizer.init(logits_SV))
        (logits_SV, _), probs_history = jax.lax.scan(step, init, jax.random.split(key, steps))
        return logits_SV, probs_history

    return run(logits_SV, key)
