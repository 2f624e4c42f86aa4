"""KL estimators: values against their formulas, and the bias table of kl.py's docstring
checked by exact enumeration (values and expected gradients) in float64."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sharpjax.losses import LossConfig, kl_estimate, toy


@pytest.mark.parametrize("x", [-3.0, -0.5, 0.0, 1e-3, 0.7, 4.0])
def test_values_match_formulas(x):
    logp, ref = jnp.array([[x - 1.2]]), jnp.array([[-1.2]])
    for estimator, expected in [
        ("k1", x),
        ("k2", 0.5 * x * x),
        ("k3", math.exp(-x) - 1 + x),
    ]:
        value = kl_estimate(logp, ref, estimator=estimator)
        np.testing.assert_allclose(value, [[expected]], rtol=1e-5, atol=1e-7)


def test_k3_is_nonnegative_and_precise_near_zero():
    x = jnp.linspace(-10, 10, 1001)[None]
    assert jnp.all(kl_estimate(x, jnp.zeros_like(x), estimator="k3") >= 0)
    # k3 = x^2/2 - x^3/6 + ...; naive exp(-x) - 1 + x loses all digits at x = 1e-4 in fp32.
    small = jnp.array([[1e-4]], jnp.float32)
    np.testing.assert_allclose(kl_estimate(small, 0 * small, estimator="k3"), 0.5e-8, rtol=1e-3)


def test_clamp_keeps_values_finite_and_zeroes_gradient_beyond_it():
    logp = jnp.array([[-200.0, 0.0]])
    ref = jnp.array([[0.0, -200.0]])
    for estimator in ("k1", "k2", "k3"):
        value = kl_estimate(logp, ref, estimator=estimator, clamp=20.0)
        assert jnp.all(jnp.isfinite(value))
        grad = jax.grad(lambda lp: kl_estimate(lp, ref, estimator=estimator).sum())(logp)
        np.testing.assert_array_equal(grad, 0.0)


def test_bf16_inputs_computed_in_fp32():
    logp = jnp.array([[-1.0, -2.0]], jnp.bfloat16)
    assert kl_estimate(logp, logp - 1, estimator="k3").dtype == jnp.float32


def test_unknown_estimator_raises():
    with pytest.raises(ValueError, match="estimator must be one of"):
        kl_estimate(jnp.zeros((1, 1)), jnp.zeros((1, 1)), estimator="k4")


# --- Exact enumeration -------------------------------------------------------------------


def _policies(space, seed=0):
    key_pol, key_ref = jax.random.split(jax.random.PRNGKey(seed))
    theta = toy.random_logits(key_pol, space).astype(jnp.float64)
    ref = toy.random_logits(key_ref, space, scale=1.5).astype(jnp.float64)
    return theta, ref


def _reverse_kl(theta, ref, space):
    logp_N, ref_logp_N = toy.sequence_logprobs(theta, space), toy.sequence_logprobs(ref, space)
    return jnp.sum(jnp.exp(logp_N) * (logp_N - ref_logp_N))


def _forward_kl(theta, ref, space):
    logp_N, ref_logp_N = toy.sequence_logprobs(theta, space), toy.sequence_logprobs(ref, space)
    return jnp.sum(jnp.exp(ref_logp_N) * (ref_logp_N - logp_N))


def _expected_per_token_term(theta, ref, space, estimator):
    """E_{y ~ stop_gradient(pi)}[sum_t k(x_t)]: the value of k used as a loss term."""
    logp_NT = toy.token_logprobs(theta, space)
    p_N = jax.lax.stop_gradient(jnp.exp(jnp.sum(logp_NT, axis=1)))
    k_NT = kl_estimate(logp_NT, toy.token_logprobs(ref, space), estimator=estimator)
    return jnp.sum(p_N * jnp.sum(k_NT * space.mask_NT, axis=1))


@pytest.mark.parametrize("eos_id", [None, 2])
def test_k1_and_k3_values_unbiased_k2_not(x64, eos_id):
    space = toy.enumerate_sequences(3, 3, eos_id=eos_id)
    theta, ref = _policies(space)
    kl = _reverse_kl(theta, ref, space)
    for estimator in ("k1", "k3"):
        np.testing.assert_allclose(_expected_per_token_term(theta, ref, space, estimator), kl, rtol=1e-12)
    assert abs(_expected_per_token_term(theta, ref, space, "k2") - kl) > 1e-2


def test_gradient_table_one_token(x64):
    """T = 1: k2 gives grad KL(pi||ref); k1 gives 0; k3 gives grad KL(ref||pi)."""
    space = toy.enumerate_sequences(5, 1)
    theta, ref = _policies(space)
    grad = {
        e: jax.jit(jax.grad(lambda t, e=e: _expected_per_token_term(t, ref, space, e)))(theta)
        for e in ("k1", "k2", "k3")
    }
    grad_reverse = jax.grad(_reverse_kl)(theta, ref, space)
    grad_forward = jax.grad(_forward_kl)(theta, ref, space)
    np.testing.assert_allclose(grad["k2"], grad_reverse, atol=1e-12)
    np.testing.assert_allclose(grad["k1"], 0.0, atol=1e-12)
    np.testing.assert_allclose(grad["k3"], grad_forward, atol=1e-12)
    # The biased ones really differ from the reverse-KL gradient.
    assert jnp.max(jnp.abs(grad["k1"] - grad_reverse)) > 1e-2
    assert jnp.max(jnp.abs(grad["k3"] - grad_reverse)) > 1e-2


@pytest.mark.parametrize("eos_id", [None, 2])
def test_per_token_k2_biased_for_sequences_but_sequence_level_k2_unbiased(x64, eos_id):
    space = toy.enumerate_sequences(3, 3, eos_id=eos_id)
    theta, ref = _policies(space)
    grad_reverse = jax.grad(_reverse_kl)(theta, ref, space)
    grad_k2 = jax.jit(jax.grad(lambda t: _expected_per_token_term(t, ref, space, "k2")))(theta)
    assert jnp.max(jnp.abs(grad_k2 - grad_reverse)) > 1e-2

    def sequence_level_k2(theta):
        logp_N1 = toy.sequence_logprobs(theta, space)[:, None]
        ref_logp_N1 = toy.sequence_logprobs(ref, space)[:, None]
        p_N = jax.lax.stop_gradient(jnp.exp(logp_N1[:, 0]))
        return jnp.sum(p_N * kl_estimate(logp_N1, ref_logp_N1, estimator="k2")[:, 0])

    np.testing.assert_allclose(jax.jit(jax.grad(sequence_level_k2))(theta), grad_reverse, atol=1e-12)


@pytest.mark.parametrize("eos_id", [None, 2])
def test_k1_in_the_reward_is_unbiased_for_sequences(x64, eos_id):
    """The paper's route: R = L_ref - L_pol = -k1 summed, through the RLOO estimator."""
    space = toy.enumerate_sequences(3, 3, eos_id=eos_id)
    theta, ref = _policies(space)
    groups_MK = toy.all_groups(space.num_sequences, 2)
    config = LossConfig(aggregation="sum", sum_normalizer=2.0)

    def expected_loss(theta):
        logp_N = jax.lax.stop_gradient(toy.sequence_logprobs(theta, space))
        rewards_N = toy.sequence_logprobs(ref, space) - logp_N
        weights_M = toy.group_probs(jnp.exp(logp_N), groups_MK)
        return toy.group_loss(theta, rewards_N, groups_MK, weights_M, space=space, config=config)[0]

    np.testing.assert_allclose(
        jax.jit(jax.grad(expected_loss))(theta), jax.grad(_reverse_kl)(theta, ref, space), atol=1e-12
    )


@pytest.mark.parametrize(
    "estimator, target", [("k2", _reverse_kl), ("k3", _forward_kl), ("k1", None)]
)
def test_kl_term_of_the_loss_one_token(x64, estimator, target):
    """kl_coef * token_mean(k) in policy_gradient_loss, advantages all 0 (equal rewards)."""
    space = toy.enumerate_sequences(4, 1)
    theta, ref = _policies(space, seed=3)
    beta, k = 0.3, 2
    config = LossConfig(kl_coef=beta, kl_estimator=estimator)
    groups_MK = toy.all_groups(space.num_sequences, k)

    def expected_loss(theta):
        p_N = jax.lax.stop_gradient(toy.sequence_probs(theta, space))
        weights_M = toy.group_probs(p_N, groups_MK)
        rewards_N = jnp.ones(space.num_sequences)
        loss, _ = toy.group_loss(
            theta, rewards_N, groups_MK, weights_M, space=space, config=config, ref_logits_SV=ref
        )
        return loss

    expected = 0.0 if target is None else beta * jax.grad(target)(theta, ref, space)
    np.testing.assert_allclose(jax.jit(jax.grad(expected_loss))(theta), expected, atol=1e-12)
