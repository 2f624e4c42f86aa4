"""Policy-gradient losses, advantages and KL estimators (pure functions of log-probs).

All options live in `LossConfig`, whose defaults are the paper's estimator. `toy` holds the
exactly enumerable policies the tests and notebooks/closed_forms.ipynb check them against.
"""

from sharpjax.losses import toy
from sharpjax.losses.advantages import (
    compute_advantages,
    grpo_advantages,
    reward_metrics,
    rloo_advantages,
)
from sharpjax.losses.config import AdvantageEstimator, Aggregation, KLEstimator, LossConfig
from sharpjax.losses.kl import kl_estimate
from sharpjax.losses.policy_gradient import aggregate_loss, masked_mean, policy_gradient_loss

__all__ = [
    "AdvantageEstimator",
    "Aggregation",
    "KLEstimator",
    "LossConfig",
    "aggregate_loss",
    "compute_advantages",
    "grpo_advantages",
    "kl_estimate",
    "masked_mean",
    "policy_gradient_loss",
    "reward_metrics",
    "rloo_advantages",
    "toy",
]
