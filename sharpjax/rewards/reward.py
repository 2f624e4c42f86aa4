"""The reward closure R = w_task * r + w_ref * L_ref - w_pol * L_pol (DESIGN.md, PAPER.md).

Per response y to prompt x:

    r      in {0, 1}: the task reward (math-verify, `sharpjax.rewards.verify_batch`);
    L_ref  = sum_t log pi_ref(y_t | x, y_<t), optionally normalized by length (below);
    L_pol  = sum_t log pi_old(y_t | x, y_<t), the sampling policy's own log-likelihood.

The paper's four cases are one family (`RewardConfig` derives the weights):

    optimization, beta_inv = 0:  R = alpha * L_ref
    optimization, beta_inv > 0:  R = r + (alpha / beta_inv) * L_ref
    sampling,     beta_inv = 0:  R = alpha * L_ref - L_pol
    sampling,     beta_inv > 0:  R = r + (alpha / beta_inv) * L_ref - (1 / beta_inv) * L_pol

Normalization applies to L_ref only; L_pol is always the full sum. Reason: in sampling mode
E_pi[-L_pol] must be the sequence entropy H(pi) for the objective
E[r] + (1/beta_inv)(alpha E[L_ref] + H(pi)) to have the Gibbs maximizer
pi* ∝ pi_ref^alpha exp(beta_inv r) (with normalized L_ref: pi* ∝ exp(alpha L~_ref +
beta_inv r), still a Gibbs distribution). A length-normalized L_pol is not the entropy and
the maximizer would no longer be of that form.

The whole reward is a constant for REINFORCE: every output is stop-gradiented (L_pol must be,
since pi_old is the policy being trained; L_ref comes from the frozen base model anyway).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Float, Num

from sharpjax.rewards.config import RewardConfig

__all__ = ["RewardConfig", "RewardOutput", "make_reward"]


@struct.dataclass
class RewardOutput:
    """The reward and its components, per response (all stop-gradiented, float32).

    A component whose input was not given (its weight is 0) is zeros.

    Attributes:
      reward_B: Total reward R.
      task_B: Task reward r (zeros when not given).
      ref_logp_sum_B: L_ref summed over response tokens.
      ref_term_B: L_ref after normalization (what w_ref multiplies).
      pol_logp_sum_B: L_pol summed over response tokens (never normalized).
      length_B: Number of response tokens.
    """

    reward_B: Float[Array, " B"]
    task_B: Float[Array, " B"]
    ref_logp_sum_B: Float[Array, " B"]
    ref_term_B: Float[Array, " B"]
    pol_logp_sum_B: Float[Array, " B"]
    length_B: Float[Array, " B"]

    def metrics(self) -> dict[str, Float[Array, ""]]:
        """Batch means for logging."""
        return {
            f"reward/{f.name[:-2]}": jnp.mean(getattr(self, f.name))
            for f in dataclasses.fields(self)
        }


def _masked_sum(x_BT: Float[Array, "B T"], mask_BT: Num[Array, "B T"]) -> Float[Array, " B"]:
    # where, not multiply: -inf or nan at a masked position must not leak (inf * 0 = nan).
    return jnp.sum(jnp.where(mask_BT > 0, x_BT.astype(jnp.float32), 0.0), axis=-1)


def make_reward(config: RewardConfig) -> Callable[..., RewardOutput]:
    """Build the pure, jittable reward function for `config`.

    Args:
      config: The reward family member.

    Returns:
      `reward_fn(*, mask_BT, task_reward_B=None, ref_logp_BT=None, pol_logp_BT=None)`:
        mask_BT: 1 on response tokens, 0 on prompt and padding.
        task_reward_B: r per response; required iff `config.needs_task_reward`.
        ref_logp_BT / pol_logp_BT: teacher-forced per-token log-probs of the response
          under pi_ref / the sampling policy, aligned with mask_BT; required iff the
          corresponding weight is nonzero (given anyway, they are logged).
      It returns a `RewardOutput`.
    """
    if not isinstance(config, RewardConfig):
        raise TypeError(f"make_reward expects a RewardConfig, got {type(config).__name__}.")
    w_task, w_ref, w_pol = config.w_task, config.w_ref, config.w_pol
    norm, power = config.normalization, config.length_power

    def reward_fn(
        *,
        mask_BT: Num[Array, "B T"],
        task_reward_B: Float[Array, " B"] | None = None,
        ref_logp_BT: Float[Array, "B T"] | None = None,
        pol_logp_BT: Float[Array, "B T"] | None = None,
    ) -> RewardOutput:
        if mask_BT.ndim != 2:
            raise ValueError(f"mask_BT must be [B, T], got shape {mask_BT.shape}.")
        for name, arr in (("ref_logp_BT", ref_logp_BT), ("pol_logp_BT", pol_logp_BT)):
            if arr is not None and arr.shape != mask_BT.shape:
                raise ValueError(
                    f"{name} has shape {arr.shape} but mask_BT has {mask_BT.shape}; the "
                    "log-probs must be per token, aligned with the response mask."
                )
        if task_reward_B is not None and task_reward_B.shape != mask_BT.shape[:1]:
            raise ValueError(
                f"task_reward_B has shape {task_reward_B.shape}, expected {mask_BT.shape[:1]}."
            )
        missing = [
            (need, name)
            for need, name, arr in (
                (w_task != 0, "task_reward_B", task_reward_B),
                (w_ref != 0, "ref_logp_BT", ref_logp_BT),
                (w_pol != 0, "pol_logp_BT", pol_logp_BT),
            )
            if need and arr is None
        ]
        if missing:
            raise ValueError(
                f"{missing[0][1]} is required by {config} (weights w_task={w_task}, "
                f"w_ref={w_ref}, w_pol={w_pol}) but was not given."
            )
        zeros_B = jnp.zeros(mask_BT.shape[:1], jnp.float32)
        length_B = jnp.sum((mask_BT > 0).astype(jnp.float32), axis=-1)
        task_B = zeros_B if task_reward_B is None else task_reward_B.astype(jnp.float32)
        ref_sum_B = zeros_B if ref_logp_BT is None else _masked_sum(ref_logp_BT, mask_BT)
        pol_sum_B = zeros_B if pol_logp_BT is None else _masked_sum(pol_logp_BT, mask_BT)
        if norm == "sum":
            ref_term_B = ref_sum_B
        elif norm == "mean":
            ref_term_B = ref_sum_B / jnp.maximum(length_B, 1.0)
        else:
            ref_term_B = ref_sum_B / jnp.maximum(length_B, 1.0) ** power
        # Python-level branches on static weights: a zero-weight input never enters the sum
        # (0 * nan would still be nan).
        reward_B = zeros_B
        if w_task != 0:
            reward_B = reward_B + w_task * task_B
        if w_ref != 0:
            reward_B = reward_B + w_ref * ref_term_B
        if w_pol != 0:
            reward_B = reward_B - w_pol * pol_sum_B
        out = RewardOutput(
            reward_B=reward_B,
            task_B=task_B,
            ref_logp_sum_B=ref_sum_B,
            ref_term_B=ref_term_B,
            pol_logp_sum_B=pol_sum_B,
            length_B=length_B,
        )
        return jax.tree_util.tree_map(jax.lax.stop_gradient, out)

    return reward_fn
