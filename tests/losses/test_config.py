"""LossConfig: the paper's defaults, validation and use as a static jit argument."""

import jax
import jax.numpy as jnp
import pytest

from sharpjax.losses import LossConfig


def test_defaults_are_the_papers_estimator():
    # PAPER.md, "Estimator and optimizer".
    config = LossConfig()
    assert config.advantage_estimator == "rloo"
    assert config.normalize_std is False
    assert config.aggregation == "token_mean"
    assert config.importance_weight_cap == 20.0
    assert config.ppo_clip_eps is None
    assert config.kl_coef == 0.0
    assert config.kl_estimator == "k3"


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("advantage_estimator", "ppo", "advantage_estimator must be one of ('rloo', 'grpo')"),
        ("aggregation", "mean", "aggregation must be one of ('token_mean', 'sequence_mean', 'sum')"),
        ("kl_estimator", "k4", "kl_estimator must be one of ('k1', 'k2', 'k3')"),
        ("normalize_std", 1, "normalize_std must be a bool"),
        ("importance_weight_cap", 0.0, "importance_weight_cap must be a positive number"),
        ("ppo_clip_eps", 1.5, "ppo_clip_eps must be in (0, 1)"),
        ("ppo_clip_eps_high", 0.3, "ppo_clip_eps_high is set but ppo_clip_eps is None"),
        ("kl_coef", -0.1, "kl_coef must be >= 0"),
        ("sum_normalizer", 0.0, "sum_normalizer must be a positive number"),
        ("std_eps", -1.0, "std_eps must be a positive number"),
    ],
)
def test_invalid_values_raise_naming_the_field(field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        LossConfig(**{field: value})


def test_optional_features_accept_none():
    config = LossConfig(importance_weight_cap=None, ppo_clip_eps=0.2, ppo_clip_eps_high=0.28)
    assert config.importance_weight_cap is None


def test_is_a_static_jit_argument():
    f = jax.jit(lambda x, config: x * config.kl_coef, static_argnames="config")
    assert float(f(jnp.ones(()), config=LossConfig(kl_coef=0.5))) == 0.5
    assert hash(LossConfig()) == hash(LossConfig())
