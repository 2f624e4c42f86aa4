"""RLOO / GRPO advantages against their definitions, computed independently with loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sharpjax.losses import (
    LossConfig,
    compute_advantages,
    grpo_advantages,
    reward_metrics,
    rloo_advantages,
)


def _leave_one_out(rewards_PG: np.ndarray) -> np.ndarray:
    p, g = rewards_PG.shape
    out = np.zeros_like(rewards_PG, dtype=np.float64)
    for i in range(p):
        for j in range(g):
            others = [rewards_PG[i, k] for k in range(g) if k != j]
            out[i, j] = rewards_PG[i, j] - sum(others) / len(others)
    return out


@pytest.fixture
def rewards_PG():
    return np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)


def test_matches_leave_one_out_definition(rewards_PG):
    np.testing.assert_allclose(rloo_advantages(rewards_PG), _leave_one_out(rewards_PG), atol=1e-5)


def test_hand_computed_group():
    # Rewards (1, 0, 0, 1): A_0 = 1 - 1/3, A_1 = 0 - 2/3.
    advantages = rloo_advantages(jnp.array([[1.0, 0.0, 0.0, 1.0]]))
    np.testing.assert_allclose(advantages, [[2 / 3, -2 / 3, -2 / 3, 2 / 3]], rtol=1e-6)


def test_sum_to_zero_per_group(rewards_PG):
    np.testing.assert_allclose(jnp.sum(rloo_advantages(rewards_PG), axis=1), 0.0, atol=1e-5)


def test_invariant_to_a_constant_per_group(rewards_PG):
    shift_P1 = np.array([[3.0], [-100.0], [0.5], [7.0]], np.float32)
    np.testing.assert_allclose(
        rloo_advantages(rewards_PG + shift_P1), rloo_advantages(rewards_PG), atol=1e-4
    )


def test_normalize_std_divides_by_group_sample_std(rewards_PG):
    expected = _leave_one_out(rewards_PG) / (rewards_PG.std(axis=1, ddof=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(rloo_advantages(rewards_PG, normalize_std=True), expected, rtol=1e-5)
    # ... and is then invariant to a positive scale of a group's rewards (up to eps).
    scale_P1 = np.array([[2.0], [0.1], [10.0], [1.0]], np.float32)
    np.testing.assert_allclose(
        rloo_advantages(rewards_PG * scale_P1, normalize_std=True),
        rloo_advantages(rewards_PG, normalize_std=True),
        rtol=1e-4,
    )


def test_constant_group_gives_zero_not_nan():
    advantages = rloo_advantages(jnp.ones((2, 4)), normalize_std=True)
    np.testing.assert_array_equal(advantages, 0.0)


def test_grpo_is_rloo_scaled_by_g_minus_one_over_g(rewards_PG):
    g = rewards_PG.shape[1]
    np.testing.assert_allclose(
        grpo_advantages(rewards_PG), (g - 1) / g * _leave_one_out(rewards_PG), atol=1e-5
    )
    centered = rewards_PG - rewards_PG.mean(axis=1, keepdims=True)
    expected = centered / (rewards_PG.std(axis=1, ddof=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(grpo_advantages(rewards_PG, normalize_std=True), expected, rtol=1e-5)


def test_compute_advantages_follows_config(rewards_PG):
    np.testing.assert_allclose(
        compute_advantages(rewards_PG, config=LossConfig()), _leave_one_out(rewards_PG), atol=1e-5
    )
    g = rewards_PG.shape[1]
    np.testing.assert_allclose(
        compute_advantages(rewards_PG, config=LossConfig(advantage_estimator="grpo")),
        (g - 1) / g * _leave_one_out(rewards_PG),
        atol=1e-5,
    )


@pytest.mark.parametrize("fn", [rloo_advantages, grpo_advantages])
def test_group_size_one_raises(fn):
    with pytest.raises(ValueError, match="needs >= 2 samples per prompt, got group size 1"):
        fn(jnp.ones((3, 1)))
    with pytest.raises(ValueError, match=r"\[prompts, samples per prompt\]"):
        fn(jnp.ones((6,)))


def test_bf16_rewards_give_fp32_advantages_under_jit(rewards_PG):
    advantages = jax.jit(rloo_advantages)(jnp.asarray(rewards_PG, jnp.bfloat16))
    assert advantages.dtype == jnp.float32
    expected = _leave_one_out(np.asarray(jnp.asarray(rewards_PG, jnp.bfloat16), np.float64))
    np.testing.assert_allclose(advantages, expected, atol=1e-5)


def test_reward_metrics():
    rewards_PG = jnp.array([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    task_PG = jnp.array([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    metrics = jax.jit(reward_metrics)(rewards_PG, components={"task": task_PG})
    assert float(metrics["reward_mean"]) == pytest.approx(5 / 6)
    assert float(metrics["reward_std"]) == pytest.approx(np.std([1, 0, 1, 1, 1, 1]))
    assert float(metrics["zero_std_group_frac"]) == 0.5
    assert float(metrics["reward/task"]) == pytest.approx(2 / 6)
    assert all(v.shape == () for v in metrics.values())


@pytest.mark.parametrize("estimator", ["rloo", "grpo"])
@pytest.mark.parametrize("normalize_std", [False, True])
def test_equal_rewards_give_exactly_zero_advantages(estimator, normalize_std):
    # A collapsed likelihood group: every response is the same, R = L_ref ~ -300 nats. In fp32,
    # mean(R) does not round back to R, so without the shift by R_0 each advantage is ~3e-5 and
    # normalize_std divides it by ~1e-6 (issue 16, item 3).
    rewards_PG = np.full((3, 8), -312.74, np.float32)
    rewards_PG[1] = 0.1
    rewards_PG[2] = 123456.7
    config = LossConfig(advantage_estimator=estimator, normalize_std=normalize_std)
    advantages = np.asarray(compute_advantages(jnp.asarray(rewards_PG), config=config))
    assert np.all(advantages == 0.0), advantages
