"""The RLOO policy-gradient loss against closed forms on exactly enumerable toy policies.

A tabular autoregressive policy over vocab 3 and length 3 (27 responses; or 15 of lengths
1-3 with EOS) has every response listed, so the objective J(theta) is a finite sum whose
jax.grad is the reference, and the K-sample groups of the estimator can be enumerated
exactly (27^3 groups), so "the expected gradient of the loss equals grad J" is checked to
float64 precision, not within Monte-Carlo noise.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sharpjax.losses import LossConfig, toy


class Toy(NamedTuple):
    space: toy.SequenceSpace
    ref_SV: jax.Array  # base model logits
    theta_SV: jax.Array  # a policy away from the base model
    task_N: jax.Array  # r in {0, 1}
    ref_logp_N: jax.Array  # L_ref

    @property
    def config(self) -> LossConfig:
        # Fixed length T: the paper's token mean divides by K * T tokens per group. With EOS
        # the token count is random (a ratio estimator), so we use the sum / K instead.
        if self.space.eos_id is None:
            return LossConfig()
        return LossConfig(aggregation="sum", sum_normalizer=1.0)

    def loss_scale(self, group_size: int) -> float:
        """E[grad loss] = -grad J / loss_scale."""
        if self.space.eos_id is None:
            return float(self.space.max_len)  # (1 / (K T)) * K samples of grad J
        return 1.0 / group_size


def make_toy(eos_id, seed=0) -> Toy:
    space = toy.enumerate_sequences(3, 3, eos_id=eos_id)
    rng = np.random.default_rng(seed)
    ref_SV = jnp.asarray(1.5 * rng.normal(size=(space.num_states, 3)))
    theta_SV = jnp.asarray(rng.normal(size=(space.num_states, 3)))
    task_N = np.zeros(space.num_sequences)
    task_N[rng.choice(space.num_sequences, size=space.num_sequences // 3, replace=False)] = 1
    task_N = jnp.asarray(task_N)
    return Toy(space, ref_SV, theta_SV, task_N, toy.sequence_logprobs(ref_SV, space))


@pytest.fixture(params=[None, 2], ids=["fixed_length", "eos"])
def tiny(x64, request) -> Toy:
    return make_toy(request.param)


# (w_task, w_ref, w_pol) of R = w_task r + w_ref L_ref - w_pol L_pol, as in DESIGN.md.
def _sampling(alpha, beta_inv):
    if beta_inv == 0:
        return (0.0, alpha, 1.0)
    return (1.0, alpha / beta_inv, 1.0 / beta_inv)


REWARDS = {
    "task": (1.0, 0.0, 0.0),
    "likelihood": (0.0, 1.0, 0.0),
    **{f"power_{a}": _sampling(a, 0) for a in (0.5, 1.0, 1.25, 2.0, 4.0)},
    **{f"tilted_{a}_{b}": _sampling(a, b) for a, b in ((1.0, 1.0), (2.0, 100.0), (0.5, 1e4))},
}


def _expected_loss(t: Toy, theta_SV, weights_3, groups_MK, config, rollout_SV=None):
    """Exact expectation over all groups of the loss, rewards built from the sampling policy."""
    sample_SV = theta_SV if rollout_SV is None else rollout_SV
    pol_logp_N = jax.lax.stop_gradient(toy.sequence_logprobs(sample_SV, t.space))
    w_task, w_ref, w_pol = weights_3[0], weights_3[1], weights_3[2]
    rewards_N = w_task * t.task_N + w_ref * t.ref_logp_N - w_pol * pol_logp_N
    group_p_M = toy.group_probs(jnp.exp(pol_logp_N), groups_MK)
    loss, _ = toy.group_loss(
        theta_SV, rewards_N, groups_MK, group_p_M, space=t.space, config=config,
        rollout_logits_SV=rollout_SV,
    )
    return loss


def _objective(t: Toy, theta_SV, weights_3):
    return toy.objective(
        theta_SV, t.space, task_reward_N=t.task_N, ref_logp_N=t.ref_logp_N,
        w_task=weights_3[0], w_ref=weights_3[1], w_pol=weights_3[2],
    )


def test_spaces_enumerate_every_response(x64):
    fixed, eos = make_toy(None), make_toy(2)
    assert fixed.space.num_sequences == 27 and fixed.space.num_states == 13
    assert eos.space.num_sequences == 15 and eos.space.num_states == 7
    assert sorted(np.unique(eos.space.lengths_N)) == [1, 2, 3]
    for t in (fixed, eos):
        tokens = {tuple(row[m > 0]) for row, m in zip(t.space.tokens_NT, t.space.mask_NT)}
        assert len(tokens) == t.space.num_sequences
        np.testing.assert_allclose(jnp.sum(toy.sequence_probs(t.theta_SV, t.space)), 1.0, rtol=1e-12)


def test_score_times_minus_L_pol_is_the_entropy_gradient(tiny):
    """E_pi[grad log pi(y) * (-log pi(y))] = grad H(pi), the identity behind -L_pol."""
    space, theta = tiny.space, tiny.theta_SV

    def score_term(theta_SV):
        logp_N = toy.sequence_logprobs(theta_SV, space)
        p_N = jax.lax.stop_gradient(jnp.exp(logp_N))
        return jnp.sum(p_N * jax.lax.stop_gradient(-logp_N) * logp_N)

    def entropy(theta_SV):
        return toy.entropy(toy.sequence_probs(theta_SV, space))

    grad_h = jax.jit(jax.grad(entropy))(theta)
    assert jnp.max(jnp.abs(grad_h)) > 1e-2
    np.testing.assert_allclose(jax.jit(jax.grad(score_term))(theta), grad_h, atol=1e-13)


@pytest.mark.parametrize("group_size", [2, 3])
def test_expected_rloo_gradient_is_the_objective_gradient(tiny, group_size):
    """For every reward of the paper's family, E[grad loss] = -grad J / scale, exactly."""
    groups_MK = toy.all_groups(tiny.space.num_sequences, group_size)
    expected_grad = jax.jit(
        jax.grad(lambda th, w: _expected_loss(tiny, th, w, groups_MK, tiny.config))
    )
    objective_grad = jax.jit(jax.grad(lambda th, w: _objective(tiny, th, w)))
    scale = tiny.loss_scale(group_size)
    for name, weights in REWARDS.items():
        weights = jnp.asarray(weights)
        grad_j = objective_grad(tiny.theta_SV, weights)
        assert jnp.max(jnp.abs(grad_j)) > 1e-3, name
        np.testing.assert_allclose(
            -scale * expected_grad(tiny.theta_SV, weights), grad_j, atol=1e-12, err_msg=name
        )


def test_grpo_mean_baseline_shrinks_the_gradient_by_g_minus_one_over_g(x64):
    t = make_toy(None)
    groups_MK = toy.all_groups(t.space.num_sequences, 3)
    weights = jnp.asarray(REWARDS["tilted_1.0_1.0"])
    config = LossConfig(advantage_estimator="grpo")
    grad = jax.jit(jax.grad(lambda th: _expected_loss(t, th, weights, groups_MK, config)))(t.theta_SV)
    grad_j = jax.jit(jax.grad(lambda th: _objective(t, th, weights)))(t.theta_SV)
    np.testing.assert_allclose(-t.loss_scale(3) * grad, 2 / 3 * grad_j, atol=1e-12)


def test_base_model_is_the_fixed_point_of_power_one(tiny):
    """alpha = 1, beta_inv = 0: pi_ref itself is the optimum, so the gradient vanishes there."""
    groups_MK = toy.all_groups(tiny.space.num_sequences, 2)
    grad = jax.jit(jax.grad(lambda th, w: _expected_loss(tiny, th, w, groups_MK, tiny.config)))
    np.testing.assert_allclose(grad(tiny.ref_SV, jnp.asarray(REWARDS["power_1.0"])), 0.0, atol=1e-13)
    assert jnp.max(jnp.abs(grad(tiny.ref_SV, jnp.asarray(REWARDS["power_2.0"])))) > 1e-2


def test_importance_weights_correct_off_policy_samples(x64):
    """One token, samples from a behaviour policy mu != pi: with an untruncated importance
    weight pi/mu the expected gradient is grad E_pi[r]; without it (or truncated below the
    largest ratio) it is not."""
    space = toy.enumerate_sequences(6, 1)
    rng = np.random.default_rng(1)
    theta_SV, mu_SV = (jnp.asarray(s * rng.normal(size=(1, 6))) for s in (1.0, 2.0))
    t = Toy(space, mu_SV, theta_SV, jnp.asarray([1.0, 0, 0, 1, 0, 0]), jnp.zeros(6))
    groups_MK = toy.all_groups(6, 2)
    weights = jnp.asarray(REWARDS["task"])
    grad_j = jax.jit(jax.grad(lambda th: _objective(t, th, weights)))(theta_SV)
    ratio_max = float(jnp.max(toy.sequence_probs(theta_SV, space) / toy.sequence_probs(mu_SV, space)))

    def grad_with(cap):
        config = LossConfig(importance_weight_cap=cap)
        loss_fn = lambda th: _expected_loss(t, th, weights, groups_MK, config, mu_SV)  # noqa: E731
        return jax.jit(jax.grad(loss_fn))(theta_SV)

    np.testing.assert_allclose(-t.loss_scale(2) * grad_with(2 * ratio_max), grad_j, atol=1e-12)
    assert jnp.max(jnp.abs(-t.loss_scale(2) * grad_with(None) - grad_j)) > 1e-2
    assert jnp.max(jnp.abs(-t.loss_scale(2) * grad_with(ratio_max / 2) - grad_j)) > 1e-3


def test_sampled_gradient_matches_exact_within_its_standard_error(x64):
    """Monte Carlo with the paper's K = 8: the mean sampled gradient is within 5 standard
    errors of the exact one, coordinate by coordinate (fixed seed)."""
    t = make_toy(2)
    weights = jnp.asarray(REWARDS["power_2.0"])
    group_size, num_groups = 8, 4000
    p_N = toy.sequence_probs(t.theta_SV, t.space)
    groups_MK = toy.sample_groups(jax.random.PRNGKey(0), p_N, num_groups=num_groups, group_size=group_size)

    def one_group_loss(theta_SV, idx_K):
        return _expected_loss_sampled(t, theta_SV, weights, idx_K[None])

    grads_MSV = jax.jit(jax.vmap(jax.grad(one_group_loss), in_axes=(None, 0)))(t.theta_SV, groups_MK)
    mean_SV, stderr_SV = grads_MSV.mean(0), grads_MSV.std(0) / np.sqrt(num_groups)
    exact_groups = toy.all_groups(t.space.num_sequences, 2)
    exact_loss = lambda th: _expected_loss(t, th, weights, exact_groups, t.config)  # noqa: E731
    exact_SV = jax.jit(jax.grad(exact_loss))(t.theta_SV)
    exact_SV = exact_SV * t.loss_scale(2) / t.loss_scale(group_size)  # same normalization as K = 8
    z_SV = (mean_SV - exact_SV) / jnp.maximum(stderr_SV, 1e-12)
    assert jnp.max(jnp.abs(z_SV)) < 5.0
    assert jnp.max(jnp.abs(exact_SV)) > 20 * jnp.max(stderr_SV)  # the test has power


def _expected_loss_sampled(t: Toy, theta_SV, weights_3, groups_MK):
    pol_logp_N = jax.lax.stop_gradient(toy.sequence_logprobs(theta_SV, t.space))
    rewards_N = weights_3[0] * t.task_N + weights_3[1] * t.ref_logp_N - weights_3[2] * pol_logp_N
    uniform_M = jnp.full(groups_MK.shape[0], 1.0 / groups_MK.shape[0])
    return toy.group_loss(theta_SV, rewards_N, groups_MK, uniform_M, space=t.space, config=t.config)[0]


# --- Gradient ascent reaches the closed-form optima ---------------------------------------

ASCENT_STEPS = 800


def _ascend(t: Toy, weights_C3: jax.Array) -> jax.Array:
    """Exact expected-gradient descent on the loss (K = 2, all groups), one run per row of
    weights, vmapped; returns the final distributions [C, N]."""
    groups_MK = toy.all_groups(t.space.num_sequences, 2)
    optimizer = optax.adam(optax.cosine_decay_schedule(0.2, ASCENT_STEPS))

    def run(weights_3):
        loss_fn = lambda th, key: _expected_loss(t, th, weights_3, groups_MK, t.config)  # noqa: E731
        theta_SV, _ = toy.gradient_descent(
            loss_fn, t.ref_SV, space=t.space, steps=ASCENT_STEPS, optimizer=optimizer
        )
        return toy.sequence_probs(theta_SV, t.space)

    return jax.vmap(run)(weights_C3)


@pytest.mark.parametrize("eos_id", [None, 2], ids=["fixed_length", "eos"])
def test_gradient_ascent_converges_to_the_closed_forms(x64, eos_id):
    t = make_toy(eos_id)
    cases = [("power", a, 0.0) for a in (0.5, 2.0, 4.0)] + [("tilted", 1.0, 1.0), ("tilted", 0.5, 4.0)]
    weights_C3 = jnp.asarray([_sampling(a, b) for _, a, b in cases] + [REWARDS["likelihood"]])
    final_CN = _ascend(t, weights_C3)
    for (name, alpha, beta_inv), final_N in zip(cases, final_CN[:-1]):
        optimum_N = toy.tilted_optimum(t.ref_logp_N, t.task_N, alpha=alpha, beta_inv=beta_inv)
        tv = toy.total_variation(final_N, optimum_N)
        assert tv < 1e-3, (name, alpha, beta_inv, float(tv))
    # Likelihood maximization: the point mass on the base model's most likely response.
    tv = toy.total_variation(final_CN[-1], toy.likelihood_optimum(t.ref_logp_N))
    assert tv < 1e-3, float(tv)


def test_sharpening_shifts_toward_shorter_responses(x64):
    """With EOS, sequence likelihood favours short responses: the likelihood-maximization
    optimum and the power distributions with alpha > 1 are shorter on average than the base
    model, alpha < 1 longer; gradient ascent on the loss lands on those lengths."""
    t = make_toy(2)
    lengths_N = jnp.asarray(t.space.lengths_N)
    base_N = jnp.exp(t.ref_logp_N)

    def mean_length(p_N):
        return float(jnp.sum(p_N * lengths_N))

    alphas = (0.5, 1.0, 2.0, 4.0)
    power = [mean_length(toy.tilted_optimum(t.ref_logp_N, t.task_N, alpha=a, beta_inv=0)) for a in alphas]
    assert power[1] == pytest.approx(mean_length(base_N))
    assert power == sorted(power, reverse=True)  # longer for alpha < 1, shorter for alpha > 1
    likelihood_length = mean_length(toy.likelihood_optimum(t.ref_logp_N))
    assert likelihood_length < power[-1] < mean_length(base_N)

    final_CN = _ascend(t, jnp.asarray([_sampling(4.0, 0.0), REWARDS["likelihood"]]))
    assert mean_length(final_CN[0]) == pytest.approx(power[-1], abs=1e-2)
    assert mean_length(final_CN[1]) == pytest.approx(likelihood_length, abs=1e-2)
