"""policy_gradient_loss on small hand-built tensors whose loss and gradient are written out
by hand: REINFORCE, truncated importance weights, PPO clipping, aggregations, micro-batching,
masks, dtypes and metrics."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sharpjax.losses import LossConfig, aggregate_loss, policy_gradient_loss

# Two responses of lengths 3 and 2 (padded to 4).
LOGP_BT = np.array([[-0.5, -1.0, -2.0, 0.0], [-0.25, -3.0, 0.0, 0.0]], np.float32)
MASK_BT = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.float32)
ADV_B = np.array([2.0, -1.0], np.float32)


def _loss(logp_BT, config=LossConfig(), **kwargs):
    kwargs.setdefault("rollout_logp_BT", logp_BT)
    kwargs.setdefault("advantages_B", ADV_B)
    kwargs.setdefault("mask_BT", MASK_BT)
    return policy_gradient_loss(jnp.asarray(logp_BT), config=config, **kwargs)


def _grad(logp_BT, config=LossConfig(), **kwargs):
    return jax.grad(lambda lp: _loss(lp, config, **kwargs)[0])(jnp.asarray(logp_BT))


def test_reinforce_token_mean_value_and_gradient():
    # loss = -(1/5) [2 (-0.5 - 1 - 2) - 1 (-0.25 - 3)] = -(1/5)(-7 + 3.25) = 0.75
    loss, metrics = _loss(LOGP_BT)
    assert float(loss) == pytest.approx(0.75, rel=1e-6)
    expected = -ADV_B[:, None] * MASK_BT / 5.0
    np.testing.assert_allclose(_grad(LOGP_BT), expected, rtol=1e-6)
    assert float(metrics["num_tokens"]) == 5
    assert float(metrics["pg_loss"]) == pytest.approx(0.75, rel=1e-6)
    assert float(metrics["kl_loss"]) == 0.0


def test_only_the_current_logp_gets_a_gradient():
    def f(rollout, advantages, ref):
        config = LossConfig(kl_coef=0.1)
        return _loss(LOGP_BT, config, rollout_logp_BT=rollout, advantages_B=advantages, ref_logp_BT=ref)[0]

    grads = jax.grad(f, argnums=(0, 1, 2))(jnp.asarray(LOGP_BT) - 0.1, jnp.asarray(ADV_B), jnp.asarray(LOGP_BT) - 1)
    for g in grads:
        np.testing.assert_array_equal(g, 0.0)


@pytest.mark.parametrize(
    "config, expected",
    [
        # Per-token losses l = -A * logp: row 0: 1, 2, 4 (sum 7); row 1: -0.25, -3 (sum -3.25).
        (LossConfig(aggregation="token_mean"), (7 - 3.25) / 5),
        (LossConfig(aggregation="sequence_mean"), (7 / 3 - 3.25 / 2) / 2),
        (LossConfig(aggregation="sum"), 7 - 3.25),
        (LossConfig(aggregation="sum", sum_normalizer=8.0), (7 - 3.25) / 8),
    ],
)
def test_aggregations(config, expected):
    assert float(_loss(LOGP_BT, config)[0]) == pytest.approx(expected, rel=1e-6)


def test_global_normalizers_override_local_counts():
    assert float(_loss(LOGP_BT, num_tokens=10)[0]) == pytest.approx(3.75 / 10, rel=1e-6)
    config = LossConfig(aggregation="sequence_mean")
    assert float(_loss(LOGP_BT, config, num_sequences=4)[0]) == pytest.approx((7 / 3 - 3.25 / 2) / 4, rel=1e-6)


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean", "sum"])
def test_micro_batches_sum_to_the_full_batch_gradient(aggregation):
    rng = np.random.default_rng(0)
    logp_BT = -rng.exponential(size=(6, 5)).astype(np.float32)
    mask_BT = (np.arange(5)[None] < rng.integers(1, 6, size=(6, 1))).astype(np.float32)
    adv_B = rng.normal(size=6).astype(np.float32)
    rollout_BT = logp_BT + rng.normal(scale=0.3, size=logp_BT.shape).astype(np.float32)
    ref_BT = logp_BT - 0.5
    mask_BT, adv_B, rollout_BT, ref_BT = map(jnp.asarray, (mask_BT, adv_B, rollout_BT, ref_BT))
    config = LossConfig(aggregation=aggregation, kl_coef=0.05)
    norms = dict(num_tokens=mask_BT.sum(), num_sequences=6)

    def loss(lp, rows):
        return policy_gradient_loss(
            lp[rows], rollout_logp_BT=rollout_BT[rows], advantages_B=adv_B[rows],
            mask_BT=mask_BT[rows], config=config, ref_logp_BT=ref_BT[rows], **norms,
        )[0]

    value_and_grad = jax.jit(jax.value_and_grad(loss))
    full = value_and_grad(jnp.asarray(logp_BT), np.arange(6))
    parts = [value_and_grad(jnp.asarray(logp_BT), rows) for rows in (np.arange(4), np.arange(4, 6))]
    np.testing.assert_allclose(parts[0][0] + parts[1][0], full[0], rtol=1e-5)
    np.testing.assert_allclose(parts[0][1] + parts[1][1], full[1], rtol=1e-5, atol=1e-7)


def test_truncated_importance_weight():
    # logp_train - logp_rollout = (0, log 2, log 30, log 0.5 | 0, log 25): w = 1, 2, 20, 0.5 | 1, 20.
    log_is_BT = np.log(np.array([[1.0, 2.0, 30.0, 0.5], [1.0, 25.0, 1.0, 1.0]], np.float32))
    mask_BT = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], np.float32)
    w_BT = np.array([[1.0, 2.0, 20.0, 0.5], [1.0, 20.0, 1.0, 1.0]], np.float32)
    kwargs = dict(rollout_logp_BT=LOGP_BT - log_is_BT, mask_BT=mask_BT)
    expected = -w_BT * ADV_B[:, None] * mask_BT / 6
    np.testing.assert_allclose(_grad(LOGP_BT, **kwargs), expected, rtol=1e-5)
    _, metrics = _loss(LOGP_BT, **kwargs)
    assert float(metrics["is_clip_frac"]) == pytest.approx(2 / 6)
    assert float(metrics["is_weight_max"]) == pytest.approx(20.0)
    assert float(metrics["is_weight_mean"]) == pytest.approx((1 + 2 + 20 + 0.5 + 1 + 20) / 6, rel=1e-5)
    assert float(metrics["rollout_logp_abs_diff_max"]) == pytest.approx(math.log(30), rel=1e-5)
    # Cap None: plain REINFORCE whatever the rollout log-probs.
    off = _grad(LOGP_BT, LossConfig(importance_weight_cap=None), **kwargs)
    np.testing.assert_allclose(off, -ADV_B[:, None] * mask_BT / 6, rtol=1e-6)


def test_ppo_at_the_old_policy_equals_reinforce():
    config = LossConfig(ppo_clip_eps=0.2)
    np.testing.assert_allclose(_grad(LOGP_BT, config), _grad(LOGP_BT), rtol=1e-6)
    assert float(_loss(LOGP_BT, config)[1]["ppo_clip_frac"]) == 0.0


def test_ppo_clipping_by_hand():
    # Ratios rho = 1.5 (tokens of row 0) and 0.5 (row 1); eps = 0.2, eps_high = 0.3.
    # Row 0, A = 2 > 0: min(1.5 A, 1.3 A) -> clipped, no gradient.
    # Row 1, A = -1 < 0: min(-0.5, -0.8) = -0.8 -> clipped at 1 - eps, no gradient.
    # Token (1, 1) rho = 1.1 inside the range: gradient -A rho / N = 1.1 / 5.
    log_rho_BT = np.log(np.array([[1.5, 1.5, 1.5, 1.0], [0.5, 1.1, 1.0, 1.0]], np.float32))
    config = LossConfig(ppo_clip_eps=0.2, ppo_clip_eps_high=0.3)
    kwargs = dict(rollout_logp_BT=LOGP_BT - log_rho_BT)
    expected = np.zeros_like(LOGP_BT)
    expected[1, 1] = 1.1 / 5
    np.testing.assert_allclose(_grad(LOGP_BT, config, **kwargs), expected, rtol=1e-5, atol=1e-7)
    loss, metrics = _loss(LOGP_BT, config, **kwargs)
    # Per-token min(...) terms: 2.6 (x3), -0.8, -1.1.
    assert float(loss) == pytest.approx(-(3 * 2.6 - 0.8 - 1.1) / 5, rel=1e-5)
    assert float(metrics["ppo_clip_frac"]) == pytest.approx(4 / 5)
    # A < 0 and rho = 1.5 > 1 + eps_high: the unclipped branch is the minimum, gradient -A rho / N.
    grad = _grad(LOGP_BT, config, rollout_logp_BT=LOGP_BT - np.log(1.5), advantages_B=np.array([2.0, -1.0]))
    np.testing.assert_allclose(grad[1], np.array([1.5, 1.5, 0, 0]) / 5, rtol=1e-5)


def test_ppo_importance_weight_uses_old_vs_rollout():
    # The trainer's old log-probs differ from the rollout's by log 2: w = 2 on every token.
    config = LossConfig(ppo_clip_eps=0.2)
    grad = _grad(LOGP_BT, config, old_logp_BT=LOGP_BT, rollout_logp_BT=LOGP_BT - math.log(2))
    np.testing.assert_allclose(grad, -2 * ADV_B[:, None] * MASK_BT / 5, rtol=1e-5)


def test_padding_with_inf_and_empty_masks_are_safe():
    logp_BT = np.where(MASK_BT > 0, LOGP_BT, -np.inf).astype(np.float32)
    loss, metrics = _loss(logp_BT, LossConfig(kl_coef=0.1), ref_logp_BT=logp_BT)
    assert float(loss) == pytest.approx(0.75, rel=1e-6)
    grad = _grad(logp_BT, LossConfig(kl_coef=0.1), ref_logp_BT=logp_BT)
    np.testing.assert_allclose(grad, -ADV_B[:, None] * MASK_BT / 5, rtol=1e-6)
    assert all(np.isfinite(v) for v in metrics.values())

    empty = np.zeros_like(MASK_BT)
    for aggregation in ("token_mean", "sequence_mean", "sum"):
        config = LossConfig(aggregation=aggregation)
        loss, metrics = _loss(logp_BT, config, mask_BT=empty)
        assert float(loss) == 0.0
        np.testing.assert_array_equal(_grad(logp_BT, config, mask_BT=empty), 0.0)
        assert all(np.isfinite(v) for k, v in metrics.items() if not k.startswith("kl"))


def test_bf16_inputs_computed_in_fp32():
    loss32, _ = _loss(LOGP_BT)
    logp16 = jnp.asarray(LOGP_BT, jnp.bfloat16)  # these values are exact in bf16
    loss16, metrics = _loss(logp16, rollout_logp_BT=logp16, advantages_B=jnp.asarray(ADV_B, jnp.bfloat16))
    assert loss16.dtype == jnp.float32
    assert all(v.dtype == jnp.float32 for v in metrics.values())
    assert float(loss16) == float(loss32)


def test_kl_coef_without_reference_raises():
    with pytest.raises(ValueError, match="kl_coef > 0 needs ref_logp_BT"):
        _loss(LOGP_BT, LossConfig(kl_coef=0.1))


def test_kl_term_value_and_metrics():
    ref_BT = LOGP_BT - 0.5  # log ratio x = 0.5 on every token
    k3 = math.exp(-0.5) - 1 + 0.5
    config = LossConfig(kl_coef=0.1, kl_estimator="k3")
    loss, metrics = _loss(LOGP_BT, config, ref_logp_BT=ref_BT)
    assert float(metrics["kl_loss"]) == pytest.approx(0.1 * k3, rel=1e-5)
    assert float(loss) == pytest.approx(0.75 + 0.1 * k3, rel=1e-5)
    assert float(metrics["kl"]) == pytest.approx(k3, rel=1e-5)
    assert float(metrics["kl_sequence"]) == pytest.approx(k3 * 5 / 2, rel=1e-5)
    # d/dlogp of 0.1 * mean(k3(x)) = 0.1 * (1 - e^-x) / 5 on valid tokens.
    grad = _grad(LOGP_BT, config, ref_logp_BT=ref_BT)
    expected = (-ADV_B[:, None] + 0.1 * (1 - math.exp(-0.5))) * MASK_BT / 5
    np.testing.assert_allclose(grad, expected, rtol=1e-5)


def test_metrics_by_hand_stable_keys_and_jit():
    _, metrics = _loss(LOGP_BT)
    assert float(metrics["entropy"]) == pytest.approx((0.5 + 1 + 2 + 0.25 + 3) / 5)
    assert float(metrics["response_length"]) == 2.5
    assert float(metrics["response_length_max"]) == 3
    assert float(metrics["advantage_mean"]) == 0.5
    assert float(metrics["advantage_std"]) == 1.5
    assert float(metrics["advantage_min"]) == -1.0
    assert float(metrics["advantage_max"]) == 2.0
    assert np.isnan(metrics["kl"])  # no reference given
    keys = set(metrics)
    for config in [LossConfig(ppo_clip_eps=0.2), LossConfig(kl_coef=0.1, aggregation="sum")]:
        jitted = jax.jit(lambda lp, c=config: _loss(lp, c, ref_logp_BT=LOGP_BT - 1))
        loss, m = jitted(LOGP_BT)
        eager_loss, _ = _loss(LOGP_BT, config, ref_logp_BT=LOGP_BT - 1)
        np.testing.assert_allclose(loss, eager_loss, rtol=1e-6)
        assert set(m) == keys
        assert all(isinstance(v, jax.Array) and v.shape == () for v in m.values())


def test_aggregate_loss_ignores_padding_values():
    loss_BT = jnp.array([[1.0, jnp.nan], [2.0, 3.0]])
    mask_BT = jnp.array([[1.0, 0.0], [1.0, 1.0]])
    assert float(aggregate_loss(loss_BT, mask_BT, config=LossConfig())) == 2.0
