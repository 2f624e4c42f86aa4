"""Which member of the reward family a run uses (no jax: parsing a config stays light).

The closure itself, R = w_task * r + w_ref * L_ref - w_pol * L_pol, is `sharpjax.rewards.reward`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from sharpjax.errors import ConfigError

__all__ = ["Mode", "Normalization", "RewardConfig"]

Mode = Literal["optimization", "sampling"]
Normalization = Literal["sum", "mean", "weighted_mean"]
_MODES = ("optimization", "sampling")
_NORMALIZATIONS = ("sum", "mean", "weighted_mean")


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """Which member of the reward family a run uses. Defaults: the paper's task-reward run.

    Attributes:
      mode: "optimization" (maximize E[R]) or "sampling" (add the entropy term -L_pol, so
        the optimum is the distribution pi_ref^alpha exp(beta_inv r)).
      alpha: Exponent on pi_ref (>= 0). alpha > 1 sharpens, alpha < 1 flattens.
      beta_inv: Weight of the task reward relative to the likelihood terms (>= 0); 0 means
        no task reward at all (pure sharpening, the verifier is never called).
      normalization: How L_ref is aggregated over response tokens: "sum" (every reported
        run), "mean" (divide by length), "weighted_mean" (divide by length**length_power).
        "mean" / "weighted_mean" are the project's own form, w_ref * L_ref / len^w - w_pol * L_pol;
        the authors' code normalizes only part of it ((alpha - 1) * L_ref / len^w + L_ref - L_pol).
        The two agree for "sum" (README, "Deliberate differences from the authors' code").
      length_power: The w of "weighted_mean"; must be None for the other normalizations.
    """

    mode: Mode = "optimization"
    alpha: float = 0.0
    beta_inv: float = 1.0
    normalization: Normalization = "sum"
    length_power: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ConfigError(f"RewardConfig.mode={self.mode!r} must be one of {_MODES}.")
        for name in ("alpha", "beta_inv"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"RewardConfig.{name}={v!r} must be a finite number.")
            if v < 0:
                raise ConfigError(f"RewardConfig.{name}={v!r} must be >= 0.")
        if self.normalization not in _NORMALIZATIONS:
            raise ConfigError(
                f"RewardConfig.normalization={self.normalization!r} must be one of "
                f"{_NORMALIZATIONS}."
            )
        if self.normalization == "weighted_mean":
            w = self.length_power
            if w is None or isinstance(w, bool) or not math.isfinite(w):
                raise ConfigError(
                    "RewardConfig.length_power must be a finite number when "
                    f"normalization='weighted_mean' (L_ref / length**w); got {w!r}."
                )
        elif self.length_power is not None:
            raise ConfigError(
                f"RewardConfig.length_power={self.length_power!r} is only used with "
                f"normalization='weighted_mean', not {self.normalization!r}; leave it None."
            )
        if self.mode == "optimization" and self.alpha == 0 and self.beta_inv == 0:
            raise ConfigError(
                "RewardConfig(mode='optimization', alpha=0, beta_inv=0) gives R = 0 for every "
                "response; set alpha > 0 (likelihood) or beta_inv > 0 (task reward)."
            )

    # ---- the paper's runs ----------------------------------------------------------
    @classmethod
    def task_reward(cls) -> RewardConfig:
        """R = r (optimization, alpha=0, beta_inv=1)."""
        return cls(mode="optimization", alpha=0.0, beta_inv=1.0)

    @classmethod
    def likelihood_maximization(cls, alpha: float = 1.0, **kw) -> RewardConfig:
        """R = alpha * L_ref (optimization, beta_inv=0); the paper uses alpha=1."""
        return cls(mode="optimization", alpha=alpha, beta_inv=0.0, **kw)

    @classmethod
    def power_sampling(cls, alpha: float, **kw) -> RewardConfig:
        """R = alpha * L_ref - L_pol: optimum pi_ref^alpha (sampling, beta_inv=0)."""
        return cls(mode="sampling", alpha=alpha, beta_inv=0.0, **kw)

    @classmethod
    def tilted_sampling(cls, alpha: float, beta_inv: float, **kw) -> RewardConfig:
        """R = r + (alpha L_ref - L_pol) / beta_inv: optimum pi_ref^alpha exp(beta_inv r)."""
        if not beta_inv > 0:
            raise ConfigError(
                f"tilted_sampling needs beta_inv > 0, got {beta_inv!r}; "
                "use power_sampling for beta_inv = 0."
            )
        return cls(mode="sampling", alpha=alpha, beta_inv=beta_inv, **kw)

    # ---- derived weights: R = w_task * r + w_ref * L_ref - w_pol * L_pol -------------
    @property
    def w_task(self) -> float:
        return 1.0 if self.beta_inv > 0 else 0.0

    @property
    def w_ref(self) -> float:
        return self.alpha / self.beta_inv if self.beta_inv > 0 else float(self.alpha)

    @property
    def w_pol(self) -> float:
        if self.mode == "optimization":
            return 0.0
        return 1.0 / self.beta_inv if self.beta_inv > 0 else 1.0

    @property
    def needs_task_reward(self) -> bool:
        """False for pure sharpening: the loop never calls the verifier (no label is read)."""
        return self.w_task != 0

    @property
    def needs_ref_logprobs(self) -> bool:
        """Whether the frozen base model's forward pass is needed."""
        return self.w_ref != 0

    @property
    def needs_policy_logprobs(self) -> bool:
        """Whether the rollout policy's own log-probs are needed."""
        return self.w_pol != 0
