"""The train step against a hand-composed reference, micro-batching, NaN skipping, no aliasing."""

import dataclasses
import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sharpjax.losses import policy_gradient_loss
from sharpjax.models import apply
from sharpjax.models.hf import save_model
from sharpjax.train.optim import make_optimizer
from sharpjax.train.step import init_train_state, make_train_step
from tests.tiny import GROUP, require_torch, tiny_setup

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def torch_sequence_logprobs(model_dir, tokens, attn, resp):
    """Teacher-forced log-likelihood of the response tokens with transformers (independent)."""
    torch = require_torch()
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    pos = np.maximum(np.cumsum(attn, -1) - 1, 0)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(attn),
                       position_ids=torch.tensor(pos, dtype=torch.long)).logits.double()
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, torch.tensor(tokens[:, 1:], dtype=torch.long)[..., None])[..., 0]
    per_token = np.pad(logp.numpy(), ((0, 0), (1, 0)))
    return per_token, (per_token * resp).sum(-1)


def test_step_matches_hand_composed_reference(tmp_path):
    """Sharpening reward R = 2 L_ref - L_pol, KL (k3) in the loss, one AdamW step."""
    params, rollout, scored, cfg = tiny_setup(kl_coef=0.1)
    save_model(str(tmp_path), params, cfg.model)
    tokens, attn, resp = (np.asarray(x) for x in (rollout.tokens, rollout.attention_mask, rollout.response_mask))

    # Rewards by hand: L_ref from the transformers model, L_pol from the sampler, RLOO in numpy.
    ref_tok, l_ref = torch_sequence_logprobs(str(tmp_path), tokens, attn, resp)
    l_pol = (np.asarray(rollout.logprobs, np.float64) * resp).sum(-1)
    rewards = (2.0 * l_ref - l_pol).reshape(-1, GROUP)
    adv = (rewards - (rewards.sum(1, keepdims=True) - rewards) / (GROUP - 1)).reshape(-1)
    np.testing.assert_allclose(np.asarray(scored.rewards), rewards.reshape(-1), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(np.asarray(scored.batch.advantages), adv, rtol=1e-4, atol=1e-3)

    # Gradient by hand: plain full forward (not the chunked scorer), the losses module's loss.
    def loss_fn(p):
        logp = jax.nn.log_softmax(apply(p, tokens, attn, config=cfg.model)[:, :-1], -1)
        logp = jnp.pad(jnp.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0], ((0, 0), (1, 0)))
        return policy_gradient_loss(logp, rollout_logp_BT=rollout.logprobs, advantages_B=jnp.asarray(adv, jnp.float32),
                                    mask_BT=resp, config=cfg.loss, ref_logp_BT=jnp.asarray(ref_tok, jnp.float32))[0]

    grads = jax.grad(loss_fn)(params)
    # First AdamW step in closed form: m_hat = g, v_hat = g^2 after clipping g to norm <= 1.
    gnorm = np.sqrt(sum(float((g.astype(jnp.float64) ** 2).sum()) for g in jax.tree.leaves(grads)))
    scale = min(1.0, cfg.optim.max_grad_norm / gnorm)
    lr, wd, eps = cfg.optim.learning_rate, cfg.optim.weight_decay, cfg.optim.eps
    expected = jax.tree.map(
        lambda p, g: np.asarray(p) - lr * (np.asarray(g) * scale / (np.abs(np.asarray(g) * scale) + eps) + wd * np.asarray(p)),
        params, grads)

    state = init_train_state(params, make_optimizer(cfg.optim))
    new_state, metrics = make_train_step(cfg, state, None)(state, scored.batch)
    assert float(metrics["update_skipped"]) == 0.0
    np.testing.assert_allclose(float(metrics["grad_norm"]), gnorm, rtol=1e-3)
    # Adam's first step is sign-like: a tiny gradient entry flips with fp noise; compare robustly.
    diffs = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - b), new_state.params, expected)
    leaves = np.concatenate([d.ravel() for d in jax.tree.leaves(diffs)])
    assert np.quantile(leaves, 0.99) < 1e-5 and leaves.max() < 2.5 * lr


def test_micro_batching_gives_the_same_update():
    params, _, scored, cfg = tiny_setup(kl_coef=0.0)
    state = init_train_state(params, make_optimizer(cfg.optim))
    one, m1 = make_train_step(cfg, state, None)(state, scored.batch)
    state = init_train_state(params, make_optimizer(cfg.optim))
    cfg4 = cfg.__class__(**{**cfg.__dict__, "micro_batches": 4})
    four, m4 = make_train_step(cfg4, state, None)(state, scored.batch)
    np.testing.assert_allclose(float(m1["grad_norm"]), float(m4["grad_norm"]), rtol=1e-5)
    np.testing.assert_allclose(float(m1["loss"]), float(m4["loss"]), rtol=1e-5, atol=1e-7)
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_non_finite_loss_skips_the_update_and_reference_is_untouched():
    params, _, scored, cfg = tiny_setup()
    ref_copy = jax.tree.map(np.array, params)
    state = init_train_state(params, make_optimizer(cfg.optim))
    before = jax.tree.map(np.array, state.params)
    bad = scored.batch.replace(advantages=scored.batch.advantages.at[0].set(jnp.nan))
    step = make_train_step(cfg, state, None)
    new_state, metrics = step(state, bad)
    assert float(metrics["update_skipped"]) == 1.0
    assert int(new_state.step) == 1
    for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(before)):
        np.testing.assert_array_equal(np.asarray(a), b)
    new_state, metrics = step(new_state, scored.batch)
    assert float(metrics["update_skipped"]) == 0.0
    # The policy state was donated and updated; the reference arrays are still intact.
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_copy)):
        np.testing.assert_array_equal(np.asarray(a), b)


def test_sharded_step_matches_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "train", "_sharded_step.py")], env=env,
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fsdp=4 tensor=2" in proc.stdout and "data=8" in proc.stdout


def test_trimming_trailing_padding_changes_no_reward_loss_or_update():
    from sharpjax.rewards import RewardConfig
    from sharpjax.rollout import SamplingConfig, sample, trim_padding
    from sharpjax.train.step import compute_rewards

    reward = RewardConfig(mode="sampling", alpha=2.0, beta_inv=0.0)  # uses the policy's and the base's log-probs
    params, _, _, cfg = tiny_setup()
    # eps=1 (not Adam's 1e-8): the first AdamW step is then lr * g / (|g| + 1) (+ decay), Lipschitz in the
    # gradient g with constant lr, so comparing updates compares gradients. With eps=1e-8 the step is
    # lr * sign(g) wherever |g| >> 1e-8, and a component that sums to ~0 (its value at the fp32 rounding
    # floor) can take either sign on another summation order: a difference anywhere in [0, 2 lr] that says
    # nothing about trimming (the cross-machine failure: one parameter of 1536 off by 1e-6 at lr 1e-2).
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, eps=1.0))
    prompts = np.random.default_rng(1).integers(12, 48, (4, 6)).astype(np.int32)
    sampling = SamplingConfig(max_new_tokens=56, num_samples=GROUP, stop_token_ids=(2, 3, 4))
    full = sample(params, prompts, np.ones_like(prompts), jax.random.key(3), config=cfg.model, sampling=sampling)
    longest = int(np.max(full.lengths))
    trimmed = trim_padding(full, prompts.shape[1], longest)
    assert 16 < longest <= trimmed.tokens.shape[1] - 6 < 56, (longest, trimmed.tokens.shape)  # trimmed, nothing lost
    outs = []
    for rollout in (full, trimmed):
        scored = compute_rewards(params, rollout, None, model=cfg.model, reward=reward, loss=cfg.loss, group_size=GROUP)
        state = init_train_state(params, make_optimizer(cfg.optim))
        new_state, metrics = make_train_step(cfg, state, None)(state, scored.batch)
        outs.append((np.asarray(scored.rewards), metrics, new_state.params))
    (r_full, m_full, p_full), (r_trim, m_trim, p_trim) = outs
    np.testing.assert_allclose(r_trim, r_full, rtol=1e-5, atol=1e-6)
    for k in ("loss", "grad_norm", "kl"):
        np.testing.assert_allclose(float(m_trim[k]), float(m_full[k]), rtol=1e-4, atol=1e-6)
    # Trimming changes the length of every sum over T, hence XLA's summation order: each gradient component
    # differs by ~1e-6 relative to the largest terms summed into it (fp32 rounding, sqrt(T)-ish growth
    # through two layers), i.e. by <= ~1e-5 * max|g|. Through the eps=1 step that is <= lr * 1e-5 * max|g|
    # <= 1e-5 * max|update| + the rounding of p + update in fp32 (an ulp of |p|, 6e-8 * |p|, twice).
    p0 = jax.tree.leaves(params)
    updates_full = [np.asarray(b) - np.asarray(a) for a, b in zip(p0, jax.tree.leaves(p_full))]
    updates_trim = [np.asarray(b) - np.asarray(a) for a, b in zip(p0, jax.tree.leaves(p_trim))]
    scale = max(float(np.max(np.abs(u))) for u in updates_full)
    # Measured here: max|update| 1.0e-3 (lr 1e-2, max|g| ~0.1), max difference 4e-11 against a tolerance of
    # 1.5e-7 (with eps=1e-8: 2.8e-9 here, 1.07e-6 on another CPU).
    assert scale > 1e-4, scale  # the update is not vacuous
    ulp = 6e-8 * max(float(np.max(np.abs(np.asarray(a)))) for a in p0)
    for u_trim, u_full in zip(updates_trim, updates_full):
        np.testing.assert_allclose(u_trim, u_full, rtol=0, atol=1e-5 * scale + 2 * ulp)


def test_non_finite_update_is_skipped_even_with_finite_loss_and_gradient(monkeypatch):
    """A NaN learning rate (from a schedule bug) leaves loss and gradient finite; the update is NaN."""
    params, _, scored, cfg = tiny_setup()
    state = init_train_state(params, make_optimizer(cfg.optim))
    before = jax.tree.map(np.array, state.params)
    monkeypatch.setattr("sharpjax.train.optim.make_schedule", lambda config: lambda count: jnp.float32(jnp.nan))
    new_state, metrics = make_train_step(cfg, state, None)(state, scored.batch)
    assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
    assert np.isnan(float(metrics["update_norm"]))
    assert float(metrics["update_skipped"]) == 1.0
    for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(before)):
        np.testing.assert_array_equal(np.asarray(a), b)


def test_update_that_overflows_the_params_is_skipped():
    """lr = 3.4e38 passes the config check (finite) but p - lr * u overflows fp32 to inf."""
    import dataclasses

    params, _, scored, cfg = tiny_setup()
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, learning_rate=3.4e38, max_grad_norm=0.0))
    state = init_train_state(params, make_optimizer(cfg.optim))
    before = jax.tree.map(np.array, state.params)
    new_state, metrics = make_train_step(cfg, state, None)(state, scored.batch)
    assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
    assert float(metrics["update_skipped"]) == 1.0
    for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(before)):
        np.testing.assert_array_equal(np.asarray(a), b)


def test_rows_per_micro_batch():
    from sharpjax.rollout.scoring import rows_per_micro_batch

    assert rows_per_micro_batch(256, 2048, tokens_per_micro_batch=65536) == 32
    assert rows_per_micro_batch(256, 2048, tokens_per_micro_batch=65536, row_shards=8) == 256  # 32 rows per device
    assert rows_per_micro_batch(512, 128, tokens_per_micro_batch=65536) == 512  # the toy presets: one pass
    assert rows_per_micro_batch(12, 10, tokens_per_micro_batch=50) == 4  # budget 5 rows: largest divisor
    assert rows_per_micro_batch(13, 10, tokens_per_micro_batch=50) == 1
    assert rows_per_micro_batch(4, 100, tokens_per_micro_batch=10) == 1  # at least one row
    assert rows_per_micro_batch(48, 10, tokens_per_micro_batch=20, row_shards=4) == 8  # 2 rows per device


def test_micro_batched_scoring_gives_the_same_rewards_and_update():
    """Reference scoring 4 rows at a time (one fully padded row added) == all rows at once."""
    from sharpjax.rewards import RewardConfig
    from sharpjax.rollout import score_tokens
    from sharpjax.train.step import compute_rewards

    params, rollout, whole, cfg = tiny_setup(kl_coef=0.1)
    b, t = rollout.tokens.shape
    reward = RewardConfig(mode="sampling", alpha=2.0, beta_inv=0.0)
    chunked = compute_rewards(params, rollout, None, model=cfg.model, reward=reward, loss=cfg.loss, group_size=GROUP,
                              tokens_per_micro_batch=4 * t)
    # The same computation on fewer rows at a time: only fp32 summation order differs (XLA blocks
    # the matmuls by batch size). Per-token log-probs are ~1-10 in size: a few ulps, 1e-5; a
    # reward sums at most 8 of them times alpha = 2: 1.6e-4; an RLOO advantage two rewards.
    tok = 1e-5
    np.testing.assert_allclose(np.asarray(chunked.batch.ref_logprobs), np.asarray(whole.batch.ref_logprobs), atol=tok)
    np.testing.assert_allclose(np.asarray(chunked.rewards), np.asarray(whole.rewards), atol=16 * tok)
    np.testing.assert_allclose(np.asarray(chunked.batch.advantages), np.asarray(whole.batch.advantages), atol=32 * tok)
    outs = []
    for scored in (whole, chunked):
        state = init_train_state(params, make_optimizer(cfg.optim))
        outs.append(make_train_step(cfg, state, None)(state, scored.batch))
    (p_whole, m_whole), (p_chunk, m_chunk) = outs
    for k in ("loss", "grad_norm", "kl"):
        np.testing.assert_allclose(float(m_chunk[k]), float(m_whole[k]), rtol=1e-5, atol=1e-6)
    for a, b_ in zip(jax.tree.leaves(p_chunk.params), jax.tree.leaves(p_whole.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b_), atol=1e-5)  # lr 1e-2 x (Adam's g/|g| reordered)

    # A fully padded filler row among real ones changes no real row's log-probs and is finite.
    tokens = jnp.concatenate([rollout.tokens, jnp.zeros((4, t), jnp.int32)])
    mask = jnp.concatenate([rollout.attention_mask, jnp.zeros((4, t), jnp.int32)])
    padded = np.asarray(score_tokens(params, tokens, mask, config=cfg.model, micro_batch_rows=5))
    assert np.isfinite(padded).all()
    np.testing.assert_allclose(padded[:b], np.asarray(whole.batch.ref_logprobs), atol=1e-5)


def test_reference_scored_ahead_gives_the_same_rewards_bit_for_bit():
    """The trainer's overlap: `reference_logprobs` jitted on its own, dispatched before the host
    verifies, then fed to `compute_rewards` == scoring inside `compute_rewards` (same program
    for the scoring, so the same bits)."""
    from sharpjax.rewards import RewardConfig
    from sharpjax.train.step import compute_rewards, reference_logprobs

    params, rollout, _, cfg = tiny_setup(kl_coef=0.0)
    reward = RewardConfig(mode="sampling", alpha=2.0, beta_inv=0.0)
    kw = dict(model=cfg.model, reward=reward, loss=cfg.loss, group_size=GROUP, logits_chunk=5, score_reference=True)
    statics = ("model", "reward", "loss", "group_size", "logits_chunk", "score_reference")
    rewards = jax.jit(compute_rewards, static_argnames=statics)
    inside = rewards(params, rollout, None, **kw)
    ref = jax.jit(reference_logprobs, static_argnames=("model", "logits_chunk"))(
        params, rollout, model=cfg.model, logits_chunk=5)
    ahead = rewards(None, rollout, None, **kw, ref_logp_BT=ref)
    for a, b in zip(jax.tree.leaves(ahead), jax.tree.leaves(inside), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert "reward/ref_logp_sum" in ahead.metrics
    # Without the reference (kl_every's other steps): nothing needs it, zeros stand in.
    no_ref = RewardConfig(mode="sampling", alpha=0.0, beta_inv=0.0)  # R = -L_pol: no w_ref
    assert not no_ref.needs_ref_logprobs
    skipped = rewards(None, rollout, None, **kw | dict(reward=no_ref, score_reference=False))
    assert not np.asarray(skipped.batch.ref_logprobs).any()


def test_chunked_projection_loss_and_gradient_equal_full_logits():
    """The chunked, checkpointed vocabulary projection + log-softmax (the train step's fused
    path: fp32 logits exist one chunk at a time, recomputed per chunk in the backward) gives
    the loss and gradient of the plain [B, T, V] computation, to fp32 reordering."""
    from sharpjax.models.transformer import logits as project
    from sharpjax.rollout.scoring import token_logprobs_from_hidden

    params, rollout, _, cfg = tiny_setup()
    b, t = 3, 11
    hidden = jax.random.normal(jax.random.key(2), (b, t, cfg.model.hidden_size))
    targets = jax.random.randint(jax.random.key(3), (b, t), 0, cfg.model.vocab_size)
    weights = jax.random.normal(jax.random.key(4), (b, t))

    def chunked(p, h):  # chunk 4 does not divide T = 11: the padded tail is exercised too
        return jnp.sum(weights * token_logprobs_from_hidden(p, h, targets, chunk_size=4, temperature=0.7))

    def full(p, h):
        logp = jax.nn.log_softmax(project(p, h).astype(jnp.float32) / 0.7, axis=-1)
        return jnp.sum(weights * jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0])

    (la, ga), (lb, gb) = (jax.value_and_grad(f, argnums=(0, 1))(params, hidden) for f in (chunked, full))
    np.testing.assert_allclose(float(la), float(lb), rtol=1e-6)
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb), strict=True):
        scale = float(np.abs(np.asarray(y)).max()) or 1.0
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5 * scale)
    assert any(float(np.abs(np.asarray(x)).max()) > 0 for x in jax.tree.leaves(ga[0]))


def _tempered_expected_gradient(temperature: float, *, length: int = 1, behaviour_from_batch: bool = True):
    """Exact expected loss gradient at `temperature` vs the on-policy gradient, by enumeration.

    Responses of `length` tokens (1: over a vocabulary of 4, the policy a logits table; more:
    over a vocabulary of 3, random logits per prefix), groups of K = 3 drawn i.i.d. from
    q_T = softmax(theta / T) per token; every group is listed with its probability under q_T,
    built into a RolloutBatch (logprobs: log pi, sampling_logprobs: log q_T per token), and
    passed through `compute_rewards` (R = r - L_pol, RLOO) and the paper's loss. The
    on-policy gradient is -grad J, J = E_pi[r] + H(pi), divided by `length` (the token mean
    of fixed-length responses). behaviour_from_batch=False uses the temperature-1 log-probs
    as the weight's denominator instead (the uncorrected estimator).
    """
    from sharpjax.losses import LossConfig, toy
    from sharpjax.rewards import RewardConfig
    from sharpjax.rollout.sampler import RolloutBatch
    from sharpjax.train.step import compute_rewards

    k = 3
    if length == 1:
        space = toy.enumerate_sequences(4, 1)
        theta_SV = jnp.asarray([[0.9, -0.4, 0.3, -1.1]], jnp.float64)
        task_N = jnp.asarray([1.0, 0.0, 0.0, 1.0])
    else:
        space = toy.enumerate_sequences(3, length)
        theta_SV = toy.random_logits(jax.random.key(length), space).astype(jnp.float64)
        task_N = jnp.asarray(np.arange(space.num_sequences) % 2, jnp.float64)
    log_q_N = toy.sequence_logprobs(theta_SV / temperature, space)
    groups_MK = toy.all_groups(space.num_sequences, k)
    rows_B = groups_MK.reshape(-1)
    b = rows_B.shape[0]
    ones_BL = jnp.ones((b, length), jnp.int32)
    rollout = RolloutBatch(
        tokens=jnp.asarray(space.tokens_NT[rows_B]), attention_mask=ones_BL, response_mask=ones_BL,
        logprobs=toy.token_logprobs(theta_SV, space)[rows_B],
        sampling_logprobs=toy.token_logprobs(theta_SV / temperature, space)[rows_B],
        lengths=ones_BL.sum(1), finished=jnp.ones((b,), bool), prompt_index=jnp.repeat(jnp.arange(b // k), k),
    )
    config = LossConfig()  # the paper's: RLOO, token mean, importance weights capped at 20
    scored = compute_rewards(
        None, rollout, task_N[rows_B], model=None, reward=RewardConfig.tilted_sampling(alpha=0.0, beta_inv=1.0),
        loss=config, group_size=k,
    )
    weights_M = toy.group_probs(jnp.exp(log_q_N), groups_MK)
    behaviour_BT = scored.batch.rollout_logprobs if behaviour_from_batch else rollout.logprobs
    split = lambda x: x.reshape(-1, k, *x.shape[1:])  # noqa: E731

    def expected_loss(theta_SV):
        logp_MKL = split(toy.token_logprobs(theta_SV, space)[rows_B])
        loss_M, metrics = jax.vmap(
            lambda logp, rollout_logp, adv, mask: policy_gradient_loss(
                logp, rollout_logp_BT=rollout_logp, advantages_B=adv, mask_BT=mask, config=config
            )
        )(logp_MKL, split(behaviour_BT), split(scored.batch.advantages), split(ones_BL))
        return jnp.sum(weights_M * loss_M), metrics

    grad_SV, metrics = jax.grad(expected_loss, has_aux=True)(theta_SV)
    assert float(jnp.max(metrics["is_clip_frac"])) == 0.0  # the cap does not act on this toy
    on_policy_SV = -jax.grad(
        lambda t: toy.objective(t, space, task_reward_N=task_N, ref_logp_N=jnp.zeros(space.num_sequences),
                                w_task=1.0, w_ref=0.0, w_pol=1.0)
    )(theta_SV)
    return np.asarray(grad_SV), np.asarray(on_policy_SV) / length


def test_tempered_one_token_rollouts_give_the_on_policy_gradient():
    """issue 16, item 1: at T = 0.7 the importance weight's behaviour policy is the tempered
    distribution the tokens were drawn from, so for ONE-token responses the expected gradient
    is the on-policy one (for longer ones it is not: the next test, and why training refuses T != 1)."""
    with jax.enable_x64(True):
        grad_SV, on_policy_SV = _tempered_expected_gradient(0.7)
        # Rewards are float32 by design (sharpjax.rewards): ~1e-7 relative, amplified by RLOO's differences.
        np.testing.assert_allclose(grad_SV, on_policy_SV, rtol=2e-6, atol=1e-9)
        # Not vacuous: with temperature-1 log-probs as the behaviour (weights ~1) the expected
        # gradient is far from the on-policy one at this temperature.
        uncorrected_SV, _ = _tempered_expected_gradient(0.7, behaviour_from_batch=False)
        assert np.max(np.abs(uncorrected_SV - on_policy_SV)) > 1e-2 * np.max(np.abs(on_policy_SV))


@pytest.mark.parametrize("length", [2, 3])
def test_multi_token_rollouts_on_policy_at_t1_biased_when_tempered(length):
    """issue 26, item 2: the loss's expected gradient over responses of 2 and 3 tokens is the
    on-policy one at T = 1, but at T = 0.7 the per-token weight pi / q_T leaves it 10% / 23% off
    (the prefix and the continuation behind the advantage are still drawn from q_T): the reason
    `RunConfig` refuses rollout.temperature != 1 in training."""
    with jax.enable_x64(True):
        grad_SV, on_policy_SV = _tempered_expected_gradient(1.0, length=length)
        # float32 rewards: ~1e-7 of the gradient's scale (entries near 0 have no relative accuracy).
        np.testing.assert_allclose(grad_SV, on_policy_SV, rtol=0, atol=2e-6 * np.abs(on_policy_SV).max())
        tempered_SV, on_policy_SV = _tempered_expected_gradient(0.7, length=length)
        assert np.linalg.norm(tempered_SV - on_policy_SV) > 0.05 * np.linalg.norm(on_policy_SV)


def test_gradient_wrt_the_compute_params_is_the_gradient_through_the_cast():
    """`train_step` casts the fp32 master to bf16 once, outside the micro-batch loop, and casts each
    gradient back: the cast's VJP, so bit-identical to differentiating through the cast."""
    from sharpjax.train.step import _loss_fn, cast_params

    params, _, scored, cfg = tiny_setup()
    cfg = dataclasses.replace(cfg, model=cfg.model.replace(dtype="bfloat16"))
    loss = functools.partial(_loss_fn, micro=scored.batch, cfg=cfg, num_tokens=jnp.float32(7.0),
                             num_sequences=jnp.float32(scored.batch.tokens.shape[0]))
    through = jax.grad(lambda p: loss(cast_params(p, jnp.bfloat16))[0])(params)
    compute = jax.grad(lambda c: loss(c)[0])(cast_params(params, jnp.bfloat16))
    assert all(c.dtype == jnp.bfloat16 for c in jax.tree.leaves(compute))
    for a, b in zip(jax.tree.leaves(through), jax.tree.leaves(compute), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b.astype(a.dtype)))
