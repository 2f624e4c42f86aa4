"""Every option of the policy-gradient loss, in one place, with the paper's defaults.

The defaults reproduce the paper's estimator (PAPER.md, "Estimator and optimizer"): RLOO
advantages over the K samples of a prompt with no std normalization, a REINFORCE loss (no
PPO ratio) aggregated as a token mean over the valid response tokens of the *global* batch,
a truncated importance weight min(exp(logp_train - logp_rollout), 20), and no KL term in the
loss (the paper's KL enters through the -L_pol term of the reward).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Literal

from sharpjax.errors import ConfigError

AdvantageEstimator = Literal["rloo", "grpo"]
Aggregation = Literal["token_mean", "sequence_mean", "sum"]
KLEstimator = Literal["k1", "k2", "k3"]


def _check_literal(field: str, value: object, literal: object) -> None:
    allowed = typing.get_args(literal)
    if value not in allowed:
        raise ConfigError(f"LossConfig.{field} must be one of {allowed}, got {value!r}.")


def _check_positive(field: str, value: float | None, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if value is None or not value > 0:
        raise ConfigError(f"LossConfig.{field} must be a positive number, got {value!r}.")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Options of the advantage estimator and the policy-gradient loss.

    Hashable and immutable, so it can be a static argument of `jax.jit`.

    Attributes:
      advantage_estimator: "rloo" (paper): A_i = R_i - mean_{j != i} R_j over the group;
        "grpo": A_i = R_i - mean_j R_j (the group mean includes i; (K-1)/K times RLOO).
      normalize_std: divide the advantages by the group's sample std (+ std_eps), as GRPO
        does. Off in the paper.
      std_eps: added to the group std before dividing (a constant group gives A = 0).
      aggregation: how per-token losses become one scalar.
        "token_mean" (paper): sum over all valid tokens / number of valid tokens in the
          global batch (`num_tokens`), so micro-batches and shards sum to the same gradient.
        "sequence_mean": mean over each sequence's valid tokens, then sum over sequences /
          number of sequences in the global batch (`num_sequences`).
        "sum": sum over all valid tokens / `sum_normalizer`, a fixed constant (Dr. GRPO sets
          it to num_sequences * max_response_length; 1.0 is the plain sum).
      sum_normalizer: the constant of the "sum" aggregation (ignored otherwise).
      importance_weight_cap: truncated importance sampling (TIS) weight
        w = min(exp(logp_train - logp_rollout), cap), a constant (no gradient) multiplying
        each token's loss to correct rollout/trainer log-prob mismatch. None disables it
        (w = 1). Paper: 20.0.
      ppo_clip_eps: None (paper) for the REINFORCE loss -w * A * logp. A float eps switches
        to PPO's clipped surrogate -min(rho * A, clip(rho, 1 - eps, 1 + eps_high) * A) with
        rho = exp(logp - logp_old), for several updates per rollout batch.
      ppo_clip_eps_high: upper clip of the PPO ratio ("clip-higher"); None means eps.
      kl_coef: beta of the KL(pi || pi_ref) loss term (0.0 in the paper: off).
      kl_estimator: per-token estimator of that KL term, "k1", "k2" or "k3"; see
        `sharpjax.losses.kl_estimate` for which give unbiased gradients.
      log_ratio_clamp: the log ratio log pi - log pi_ref is clamped to +-this before the
        KL estimators (exp of a large log ratio would overflow fp32).
    """

    advantage_estimator: AdvantageEstimator = "rloo"
    normalize_std: bool = False
    std_eps: float = 1e-6
    aggregation: Aggregation = "token_mean"
    sum_normalizer: float = 1.0
    importance_weight_cap: float | None = 20.0
    ppo_clip_eps: float | None = None
    ppo_clip_eps_high: float | None = None
    kl_coef: float = 0.0
    kl_estimator: KLEstimator = "k3"
    log_ratio_clamp: float = 20.0

    def __post_init__(self) -> None:
        _check_literal("advantage_estimator", self.advantage_estimator, AdvantageEstimator)
        _check_literal("aggregation", self.aggregation, Aggregation)
        _check_literal("kl_estimator", self.kl_estimator, KLEstimator)
        if not isinstance(self.normalize_std, bool):
            raise ConfigError(
                f"LossConfig.normalize_std must be a bool, got {self.normalize_std!r}."
            )
        _check_positive("std_eps", self.std_eps)
        _check_positive("sum_normalizer", self.sum_normalizer)
        _check_positive("importance_weight_cap", self.importance_weight_cap, optional=True)
        _check_positive("ppo_clip_eps", self.ppo_clip_eps, optional=True)
        _check_positive("ppo_clip_eps_high", self.ppo_clip_eps_high, optional=True)
        if self.ppo_clip_eps is not None and self.ppo_clip_eps >= 1.0:
            raise ConfigError(
                f"LossConfig.ppo_clip_eps must be in (0, 1), got {self.ppo_clip_eps!r}."
            )
        if self.ppo_clip_eps_high is not None and self.ppo_clip_eps is None:
            raise ConfigError(
                "LossConfig.ppo_clip_eps_high is set but ppo_clip_eps is None; "
                "set ppo_clip_eps to enable PPO clipping."
            )
        if not self.kl_coef >= 0.0:
            raise ConfigError(f"LossConfig.kl_coef must be >= 0, got {self.kl_coef!r}.")
        _check_positive("log_ratio_clamp", self.log_ratio_clamp)
