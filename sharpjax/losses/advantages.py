"""Group baselines: per-response advantages from the K rewards of each prompt.

Rewards arrive shaped [P, G]: P prompts, G samples (responses) per prompt. RLOO (Kool et
al., 2019, "Buy 4 REINFORCE samples, get a baseline for free!"; Ahmadian et al., 2024) uses
the mean of the *other* G - 1 rewards as the baseline of each response; because that
baseline does not depend on the response it is subtracted from, the policy gradient stays
unbiased (tests/losses checks this by enumerating every group exactly).
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

from sharpjax.losses._dtype import compute_dtype
from sharpjax.losses.config import LossConfig


def _check_group(rewards_PG: Array, name: str) -> None:
    if rewards_PG.ndim != 2:
        raise ValueError(
            f"{name}: rewards must be shaped [prompts, samples per prompt], got shape "
            f"{rewards_PG.shape}."
        )
    if rewards_PG.shape[1] < 2:
        raise ValueError(
            f"{name}: a group baseline needs >= 2 samples per prompt, got group size "
            f"{rewards_PG.shape[1]} (rewards shape {rewards_PG.shape})."
        )


def _shift(rewards_PG: Array) -> Array:
    """Rewards minus the group's first reward: the advantages are shift-invariant, and a group
    whose rewards are all equal becomes exactly 0, so its advantages are exactly 0.

    Without the shift, float32 rounding of mean(R) leaves ~|R| * 1e-7 per response (3e-5
    for a sequence log-likelihood of a few hundred nats), and normalize_std divides that
    leftover by std + eps ~ 1e-6: a collapsed group would get advantages of 1-10, all of one
    sign.
    """
    return rewards_PG - rewards_PG[:, :1]


def _normalize(
    advantages_PG: Array, rewards_PG: Array, normalize_std: bool, eps: float
) -> Array:
    if not normalize_std:
        return advantages_PG
    # Sample std (ddof=1), as torch.std in GRPO implementations.
    std_P1 = jnp.std(rewards_PG, axis=1, ddof=1, keepdims=True)
    return advantages_PG / (std_P1 + eps)


def rloo_advantages(
    rewards_PG: Float[Array, "P G"], *, normalize_std: bool = False, eps: float = 1e-6
) -> Float[Array, "P G"]:
    """RLOO advantages A_i = R_i - mean_{j != i} R_j within each prompt's group.

    Equivalently A_i = G / (G - 1) * (R_i - mean_j R_j): they sum to zero over each group
    and are unchanged by adding a constant to every reward of a group, so they are computed
    on R - R_0 (the group's first reward): a group of equal rewards gets exactly 0.

    Args:
      rewards_PG: scalar reward of each response, [prompts, samples per prompt].
      normalize_std: also divide by the group's sample std + eps (GRPO-style; off in the
        paper).
      eps: added to the std before dividing.

    Returns:
      Advantages, [prompts, samples per prompt], at least fp32.

    Raises:
      ValueError: rewards are not 2-D or the group size is < 2 (leave-one-out needs >= 2).
    """
    _check_group(rewards_PG, "rloo_advantages")
    rewards_PG = _shift(jnp.asarray(rewards_PG, compute_dtype(rewards_PG)))
    g = rewards_PG.shape[1]
    total_P1 = jnp.sum(rewards_PG, axis=1, keepdims=True)
    baseline_PG = (total_P1 - rewards_PG) / (g - 1)
    return _normalize(rewards_PG - baseline_PG, rewards_PG, normalize_std, eps)


def grpo_advantages(
    rewards_PG: Float[Array, "P G"], *, normalize_std: bool = False, eps: float = 1e-6
) -> Float[Array, "P G"]:
    """GRPO advantages A_i = R_i - mean_j R_j (the baseline includes response i).

    With normalize_std=True this is GRPO's (R_i - mean) / (std + eps). The baseline's
    dependence on R_i scales the expected gradient by (G - 1) / G relative to RLOO.

    Args:
      rewards_PG: scalar reward of each response, [prompts, samples per prompt].
      normalize_std: also divide by the group's sample std + eps.
      eps: added to the std before dividing.

    Returns:
      Advantages, [prompts, samples per prompt], at least fp32.
    """
    _check_group(rewards_PG, "grpo_advantages")
    rewards_PG = _shift(jnp.asarray(rewards_PG, compute_dtype(rewards_PG)))
    advantages_PG = rewards_PG - jnp.mean(rewards_PG, axis=1, keepdims=True)
    return _normalize(advantages_PG, rewards_PG, normalize_std, eps)


def compute_advantages(
    rewards_PG: Float[Array, "P G"], *, config: LossConfig
) -> Float[Array, "P G"]:
    """Advantages with the estimator and normalization chosen in `config`.

    Args:
      rewards_PG: scalar reward of each response, [prompts, samples per prompt].
      config: uses `advantage_estimator`, `normalize_std` and `std_eps`.

    Returns:
      Advantages, [prompts, samples per prompt]; flatten to [P * G] (prompt-major) to match
      a rollout batch whose responses are grouped by prompt.
    """
    fn = {"rloo": rloo_advantages, "grpo": grpo_advantages}[config.advantage_estimator]
    return fn(rewards_PG, normalize_std=config.normalize_std, eps=config.std_eps)


def reward_metrics(
    rewards_PG: Float[Array, "P G"],
    *,
    components: dict[str, Float[Array, "P G"]] | None = None,
) -> dict[str, Float[Array, ""]]:
    """Scalar metrics of a batch's rewards, for logging next to the loss metrics.

    Args:
      rewards_PG: the total reward R of each response, [prompts, samples per prompt].
      components: named parts of R (e.g. {"task": r, "ref_logp": L_ref, "pol_logp": L_pol}),
        each shaped like rewards_PG.

    Returns:
      reward_mean, reward_std, reward_min, reward_max, zero_std_group_frac (groups whose
      rewards are all equal, so RLOO gives them zero advantage and no gradient), and
      reward/<name> (the mean of each component); all scalar arrays.
    """
    rewards_PG = jnp.asarray(rewards_PG, compute_dtype(rewards_PG))
    spread_P = jnp.max(rewards_PG, axis=1) - jnp.min(rewards_PG, axis=1)
    metrics = {
        "reward_mean": jnp.mean(rewards_PG),
        "reward_std": jnp.std(rewards_PG),
        "reward_min": jnp.min(rewards_PG),
        "reward_max": jnp.max(rewards_PG),
        "zero_std_group_frac": jnp.mean((spread_P == 0).astype(rewards_PG.dtype)),
    }
    for name, value_PG in (components or {}).items():
        metrics[f"reward/{name}"] = jnp.mean(jnp.asarray(value_PG, rewards_PG.dtype))
    return metrics
