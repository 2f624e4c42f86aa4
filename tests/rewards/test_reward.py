"""The reward closure against PAPER.md's four formulas, computed independently in numpy."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sharpjax.rewards import RewardConfig, RewardOutput, make_reward

B, T = 4, 7
HUGE = 1e30


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    # Prompt of 2 tokens, then responses of lengths 5, 3, 1, 0 (right padding).
    lengths = np.array([5, 3, 1, 0])
    mask = np.zeros((B, T), np.int32)
    for b, n in enumerate(lengths):
        mask[b, 2 : 2 + n] = 1
    ref = -rng.uniform(0.1, 3.0, (B, T)).astype(np.float32)
    pol = -rng.uniform(0.1, 3.0, (B, T)).astype(np.float32)
    r = rng.integers(0, 2, B).astype(np.float32)
    # Masked positions carry values that would dominate any sum they leaked into.
    ref_poison = np.where(mask > 0, ref, HUGE).astype(np.float32)
    pol_poison = np.where(mask > 0, pol, -HUGE).astype(np.float32)
    return mask, ref, pol, r, ref_poison, pol_poison, lengths


def _expected(mode, alpha, beta_inv, norm, w, mask, ref, pol, r):
    """PAPER.md 'Reward family', written out case by case with plain loops."""
    out = []
    for b in range(B):
        toks = [t for t in range(T) if mask[b, t]]
        n = len(toks)
        l_ref = sum(float(ref[b, t]) for t in toks)
        l_pol = sum(float(pol[b, t]) for t in toks)
        if norm == "mean":
            l_ref = l_ref / max(n, 1)
        elif norm == "weighted_mean":
            l_ref = l_ref / max(n, 1) ** w
        if mode == "optimization" and beta_inv == 0:
            out.append(alpha * l_ref)
        elif mode == "optimization":
            out.append(r[b] + (alpha / beta_inv) * l_ref)
        elif beta_inv == 0:
            out.append(alpha * l_ref - l_pol)
        else:
            out.append(r[b] + (alpha / beta_inv) * l_ref - (1 / beta_inv) * l_pol)
    return np.array(out)


CASES = [
    ("optimization", 0.0, 1.0),  # task reward
    ("optimization", 1.0, 0.0),  # likelihood maximization
    ("optimization", 2.0, 100.0),
    ("sampling", 0.5, 0.0),
    ("sampling", 4.0, 0.0),
    ("sampling", 1.25, 100.0),
    ("sampling", 2.0, 10000.0),
]
NORMS = [("sum", None), ("mean", None), ("weighted_mean", 0.5), ("weighted_mean", 2.0)]


@pytest.mark.parametrize("mode,alpha,beta_inv", CASES)
@pytest.mark.parametrize("norm,w", NORMS)
@pytest.mark.parametrize("use_jit", [False, True])
def test_formula_and_masking(mode, alpha, beta_inv, norm, w, use_jit):
    mask, ref, pol, r, ref_p, pol_p, lengths = _batch()
    cfg = RewardConfig(mode=mode, alpha=alpha, beta_inv=beta_inv, normalization=norm, length_power=w)
    fn = make_reward(cfg)
    if use_jit:
        fn = jax.jit(fn)
    out = fn(
        task_reward_B=jnp.asarray(r),
        ref_logp_BT=jnp.asarray(ref_p),
        pol_logp_BT=jnp.asarray(pol_p),
        mask_BT=jnp.asarray(mask),
    )
    assert isinstance(out, RewardOutput)
    want = _expected(mode, alpha, beta_inv, norm, w, mask, ref, pol, r)
    np.testing.assert_allclose(np.asarray(out.reward_B), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(out.length_B), lengths)
    np.testing.assert_allclose(
        np.asarray(out.ref_logp_sum_B), (ref * mask).sum(-1), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(out.pol_logp_sum_B), (pol * mask).sum(-1), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(np.asarray(out.task_B), r)


def test_masked_inf_and_nan_do_not_leak():
    mask, ref, pol, r, *_ = _batch(1)
    ref_bad = np.where(mask > 0, ref, -np.inf).astype(np.float32)
    pol_bad = np.where(mask > 0, pol, np.nan).astype(np.float32)
    cfg = RewardConfig.tilted_sampling(alpha=2.0, beta_inv=100.0)
    out = make_reward(cfg)(
        task_reward_B=jnp.asarray(r),
        ref_logp_BT=jnp.asarray(ref_bad),
        pol_logp_BT=jnp.asarray(pol_bad),
        mask_BT=jnp.asarray(mask),
    )
    assert np.all(np.isfinite(np.asarray(out.reward_B)))
    want = _expected("sampling", 2.0, 100.0, "sum", None, mask, ref, pol, r)
    np.testing.assert_allclose(np.asarray(out.reward_B), want, rtol=1e-5)


def test_empty_response_is_zero_not_nan():
    mask, ref, pol, r, *_ = _batch()
    for norm, w in NORMS:
        cfg = RewardConfig.power_sampling(alpha=2.0, normalization=norm, length_power=w)
        out = make_reward(cfg)(
            ref_logp_BT=jnp.asarray(ref), pol_logp_BT=jnp.asarray(pol), mask_BT=jnp.asarray(mask)
        )
        assert float(out.reward_B[3]) == 0.0  # Row 3 has no response tokens.


def test_named_constructors_match_paper_weights():
    # (w_task, w_ref, w_pol) from PAPER.md's formulas, by hand.
    assert RewardConfig() == RewardConfig.task_reward()
    c = RewardConfig.task_reward()
    assert (c.w_task, c.w_ref, c.w_pol) == (1.0, 0.0, 0.0)
    assert c.needs_task_reward and not c.needs_ref_logprobs and not c.needs_policy_logprobs
    c = RewardConfig.likelihood_maximization()
    assert (c.mode, c.alpha, c.beta_inv) == ("optimization", 1.0, 0.0)
    assert (c.w_task, c.w_ref, c.w_pol) == (0.0, 1.0, 0.0)
    assert not c.needs_task_reward and c.needs_ref_logprobs and not c.needs_policy_logprobs
    c = RewardConfig.power_sampling(alpha=4.0)
    assert (c.w_task, c.w_ref, c.w_pol) == (0.0, 4.0, 1.0)
    assert not c.needs_task_reward and c.needs_policy_logprobs
    c = RewardConfig.tilted_sampling(alpha=2.0, beta_inv=100.0)
    assert (c.w_task, c.w_ref, c.w_pol) == (1.0, 0.02, 0.01)
    assert c.needs_task_reward and c.needs_ref_logprobs and c.needs_policy_logprobs
    with pytest.raises(ValueError, match="beta_inv > 0"):
        RewardConfig.tilted_sampling(alpha=2.0, beta_inv=0.0)


def test_no_task_reward_needed_when_weight_zero():
    mask, ref, pol, *_ = _batch()
    out = make_reward(RewardConfig.power_sampling(alpha=2.0))(
        ref_logp_BT=jnp.asarray(ref), pol_logp_BT=jnp.asarray(pol), mask_BT=jnp.asarray(mask)
    )
    np.testing.assert_array_equal(np.asarray(out.task_B), 0.0)
    # A task reward given anyway (for monitoring) is logged, never added: nan stays out.
    out2 = make_reward(RewardConfig.power_sampling(alpha=2.0))(
        task_reward_B=jnp.full((B,), jnp.nan),
        ref_logp_BT=jnp.asarray(ref),
        pol_logp_BT=jnp.asarray(pol),
        mask_BT=jnp.asarray(mask),
    )
    np.testing.assert_array_equal(np.asarray(out2.reward_B), np.asarray(out.reward_B))
    # The task-reward run needs neither model's log-probs.
    out3 = make_reward(RewardConfig.task_reward())(
        task_reward_B=jnp.array([1.0, 0.0, 1.0, 0.0]), mask_BT=jnp.asarray(mask)
    )
    np.testing.assert_array_equal(np.asarray(out3.reward_B), [1.0, 0.0, 1.0, 0.0])


@pytest.mark.parametrize(
    "cfg,missing",
    [
        (RewardConfig.task_reward(), "task_reward_B"),
        (RewardConfig.tilted_sampling(alpha=1.0, beta_inv=10.0), "task_reward_B"),
        (RewardConfig.likelihood_maximization(), "ref_logp_BT"),
        (RewardConfig.power_sampling(alpha=2.0), "pol_logp_BT"),
    ],
)
def test_missing_required_input_is_a_clear_error(cfg, missing):
    mask, ref, pol, r, *_ = _batch()
    kw = dict(
        task_reward_B=jnp.asarray(r), ref_logp_BT=jnp.asarray(ref), pol_logp_BT=jnp.asarray(pol)
    )
    kw[missing] = None
    with pytest.raises(ValueError, match=f"{missing} is required"):
        make_reward(cfg)(mask_BT=jnp.asarray(mask), **kw)


def test_shape_mismatch_is_a_clear_error():
    mask, ref, *_ = _batch()
    with pytest.raises(ValueError, match="aligned with the response mask"):
        make_reward(RewardConfig.likelihood_maximization())(
            ref_logp_BT=jnp.asarray(ref[:, :-1]), mask_BT=jnp.asarray(mask)
        )


@pytest.mark.parametrize(
    "kw,field",
    [
        (dict(mode="optimisation"), "mode"),
        (dict(alpha=-1.0), "alpha"),
        (dict(alpha=float("nan")), "alpha"),
        (dict(beta_inv=-0.5), "beta_inv"),
        (dict(normalization="median"), "normalization"),
        (dict(normalization="weighted_mean"), "length_power"),
        (dict(length_power=0.5), "length_power"),
        (dict(alpha=0.0, beta_inv=0.0), "R = 0"),
    ],
)
def test_config_validation_names_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        RewardConfig(**kw)


def test_config_is_frozen_and_hashable():
    c = RewardConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.alpha = 2.0  # type: ignore[misc]
    assert hash(c) == hash(RewardConfig.task_reward())


def test_reward_has_no_gradient():
    mask, ref, pol, r, *_ = _batch()
    fn = make_reward(RewardConfig.tilted_sampling(alpha=2.0, beta_inv=10.0))

    def total(ref_lp, pol_lp):
        return fn(
            task_reward_B=jnp.asarray(r), ref_logp_BT=ref_lp, pol_logp_BT=pol_lp,
            mask_BT=jnp.asarray(mask),
        ).reward_B.sum()

    g_ref, g_pol = jax.grad(total, argnums=(0, 1))(jnp.asarray(ref), jnp.asarray(pol))
    assert not np.any(np.asarray(g_ref)) and not np.any(np.asarray(g_pol))


def test_output_is_a_pytree_and_metrics():
    mask, ref, *_ = _batch()
    out = jax.jit(make_reward(RewardConfig.likelihood_maximization()))(
        ref_logp_BT=jnp.asarray(ref), mask_BT=jnp.asarray(mask)
    )
    leaves = jax.tree_util.tree_leaves(out)
    assert len(leaves) == 6 and all(leaf.shape == (B,) for leaf in leaves)
    m = out.metrics()
    assert set(m) == {
        "reward/reward", "reward/task", "reward/ref_logp_sum", "reward/ref_term",
        "reward/pol_logp_sum", "reward/length",
    }
    np.testing.assert_allclose(float(m["reward/length"]), np.mean([5, 3, 1, 0]))
