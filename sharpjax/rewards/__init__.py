"""Rewards: math answer verification (the task reward) and the reward closure.

`sharpjax.rewards.reward` (make_reward, RewardOutput) imports jax; it is
loaded lazily so verifier worker processes, which import this package, stay light.
"""

from sharpjax.rewards.config import RewardConfig
from sharpjax.rewards.math import (
    VERIFIERS,
    Fallback,
    Verifier,
    VerifyReason,
    VerifyResult,
    extract_answer,
    extract_boxed,
    verify_one,
)
from sharpjax.rewards.pool import VerifierPool, default_num_workers, verify, verify_batch

_LAZY = {"RewardOutput", "make_reward"}

__all__ = [
    "VERIFIERS",
    "Fallback",
    "RewardConfig",
    "RewardOutput",
    "Verifier",
    "VerifierPool",
    "VerifyReason",
    "VerifyResult",
    "default_num_workers",
    "extract_answer",
    "extract_boxed",
    "make_reward",
    "verify",
    "verify_batch",
    "verify_one",
]


def __getattr__(name: str):
    if name in _LAZY:
        from sharpjax.rewards import reward

        return getattr(reward, name)
    raise AttributeError(f"module 'sharpjax.rewards' has no attribute {name!r}")
