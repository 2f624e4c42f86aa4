"""`train.group_by_length`: micro-batches of rows of similar length, each trimmed to its own
longest row (`train.step.length_grouped_update`): the same update as `train_step`, on fewer columns."""

import dataclasses

import jax
import numpy as np
import pytest

from sharpjax.train.optim import make_optimizer
from sharpjax.train.step import (
    init_train_state,
    length_grouped_micro_batches,
    length_grouped_update,
    make_grouped_update,
    make_train_step,
)
from tests.tiny import GROUP, tiny_setup

PROMPT = 6


def _varied_lengths_batch():
    """A tiny policy's rollout of 4 prompts x GROUP with responses of many lengths (up to 56
    tokens, stop tokens 2, 3, 4), scored; eps = 1 so that the first AdamW step is Lipschitz in
    the gradient (see test_step.py's trimming test: with eps = 1e-8 it is sign-like)."""
    from sharpjax.rewards import RewardConfig
    from sharpjax.rollout import SamplingConfig, sample
    from sharpjax.train.step import compute_rewards

    params, _, _, cfg = tiny_setup()
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, eps=1.0))
    prompts = np.random.default_rng(1).integers(12, 48, (4, PROMPT)).astype(np.int32)
    sampling = SamplingConfig(max_new_tokens=56, num_samples=GROUP, stop_token_ids=(2, 3, 4))
    rollout = sample(params, prompts, np.ones_like(prompts), jax.random.key(3), config=cfg.model, sampling=sampling)
    reward = RewardConfig(mode="sampling", alpha=2.0, beta_inv=0.0)
    scored = compute_rewards(params, rollout, None, model=cfg.model, reward=reward, loss=cfg.loss, group_size=GROUP)
    return params, cfg, scored.batch, np.asarray(rollout.lengths)


def test_micro_batches_cover_every_row_once_each_as_wide_as_its_longest_row():
    lengths = np.random.default_rng(0).integers(1, 200, 64)
    groups = length_grouped_micro_batches(lengths, 8, prompt_len=32, budget=200, width_step=16)
    assert sorted(np.concatenate([idx for idx, _ in groups]).tolist()) == list(range(64))
    widths = [w for _, w in groups]
    assert widths == sorted(widths, reverse=True)  # longest rows first
    for idx, width in groups:
        assert len(idx) == 8
        longest = 32 + int(lengths[idx].max())
        assert longest <= width < longest + 16 or width == 32 + 200  # on the grid, nothing cut
        assert width % 16 == 0 or width == 32 + 200
    # The rows the micro-batches hold are all the rows' lengths, sorted: the narrow ones hold the short rows.
    assert [int(lengths[idx].max()) for idx, _ in groups] == sorted(lengths, reverse=True)[::8]
    with pytest.raises(ValueError, match="not divisible"):
        length_grouped_micro_batches(lengths[:63], 8, prompt_len=32, budget=200, width_step=16)


def test_length_grouped_update_is_the_train_steps_update():
    """Same state, same batch: the grouped update (4 micro-batches, each cut to its own rows'
    width) against `train_step` over the untrimmed batch in 4 micro-batches of the original rows."""
    params, cfg, batch, lengths = _varied_lengths_batch()
    cfg = dataclasses.replace(cfg, micro_batches=4)
    assert len(set(lengths.tolist())) > 4 and lengths.max() > 3 * np.median(lengths), lengths  # not vacuous

    state = init_train_state(params, make_optimizer(cfg.optim))
    want, m_want = make_train_step(cfg, state, None)(state, batch)
    state = init_train_state(params, make_optimizer(cfg.optim))
    host = jax.tree.map(np.asarray, batch)
    groups = length_grouped_micro_batches(lengths, 4, prompt_len=PROMPT, budget=56, width_step=8)
    assert sum(len(i) * w for i, w in groups) < 0.8 * host.tokens.size  # fewer columns
    got, m_got = length_grouped_update(make_grouped_update(cfg, state, None), state, host, lengths,
                                       micro_batches=4, prompt_len=PROMPT, width_step=8)

    assert float(m_got["update_skipped"]) == 0.0 and int(got.step) == 1
    for k in ("loss", "pg_loss", "grad_norm"):
        np.testing.assert_allclose(float(m_got[k]), float(m_want[k]), rtol=1e-4, atol=1e-7)
    # Each gradient component is the same sum over rows and positions in another fp32 order (other
    # widths, other micro-batches): within ~1e-5 max|g|, through the eps = 1 step within 1e-5 max|update|,
    # plus the rounding of p + update (an ulp of |p|, twice). As test_step.py's trimming test.
    p0 = jax.tree.leaves(params)
    u_want = [np.asarray(b) - np.asarray(a) for a, b in zip(p0, jax.tree.leaves(want.params))]
    u_got = [np.asarray(b) - np.asarray(a) for a, b in zip(p0, jax.tree.leaves(got.params))]
    scale = max(float(np.max(np.abs(u))) for u in u_want)
    assert scale > 1e-4, scale
    ulp = 6e-8 * max(float(np.max(np.abs(np.asarray(a)))) for a in p0)
    for a, b in zip(u_got, u_want):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * scale + 2 * ulp)
    for a, b in zip(jax.tree.leaves(got.opt_state), jax.tree.leaves(want.opt_state)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5 * float(m_want["grad_norm"]))


def test_a_non_finite_micro_batch_skips_the_whole_update():
    params, cfg, batch, lengths = _varied_lengths_batch()
    cfg = dataclasses.replace(cfg, micro_batches=2)
    state = init_train_state(params, make_optimizer(cfg.optim))
    before = jax.tree.map(np.array, state.params)
    host = jax.tree.map(np.asarray, batch)
    shortest = int(np.argmin(lengths))  # in the last, narrowest micro-batch
    host = host.replace(advantages=host.advantages.copy())
    host.advantages[shortest] = np.nan
    got, metrics = length_grouped_update(make_grouped_update(cfg, state, None), state, host, lengths,
                                         micro_batches=2, prompt_len=PROMPT)
    assert float(metrics["update_skipped"]) == 1.0 and int(got.step) == 1
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(before)):
        np.testing.assert_array_equal(np.asarray(a), b)


def test_the_compile_budget_counts_the_grouped_programs():
    from sharpjax.train.compiles import CompileBudget

    budget = CompileBudget(sampler=3, widths=5, grouped=True)
    assert budget.width_programs == ("reference", "rewards", "train_micro")
    assert budget.programs == 3 + 3 * 5 + 2 and "train_start" in str(budget)
    assert CompileBudget(sampler=3, widths=5).programs == 3 + 3 * 5


def test_grouped_reference_scoring_is_the_batchs_on_every_response_token():
    """The reference's log-probs scored in length groups (each cut to its rows' width) and put
    back in place equal one pass over the batch on every response token (causal: the dropped
    columns are past every response of the group); 0 past a group's width."""
    from sharpjax.train.step import assemble_rows, dispatch_grouped_reference, reference_logprobs, reference_rows

    params, cfg, batch, lengths = _varied_lengths_batch()
    tokens, mask = np.asarray(batch.tokens), np.asarray(batch.attention_mask)
    ref_rows = jax.jit(reference_rows, static_argnames=("model", "logits_chunk"))
    whole = np.asarray(ref_rows(params, tokens, mask, model=cfg.model, logits_chunk=5))
    groups = dispatch_grouped_reference(ref_rows, params, tokens, mask, lengths, rows_per_group=4, prompt_len=PROMPT,
                                        width_step=8, model=cfg.model, logits_chunk=5)
    assert len(groups) == len(tokens) // 4 and len({w for _, w, _ in groups}) > 1
    got = assemble_rows(groups, tokens.shape)
    response = np.asarray(batch.response_mask).astype(bool)
    assert response.sum() > 0
    # Another width is another fp32 summation order in the matmuls: ~1e-6 relative to the logits.
    np.testing.assert_allclose(got[response], whole[response], rtol=1e-5, atol=1e-5)
    for idx, width, _ in groups:
        assert not got[idx, width:].any()
    # The batch's own scoring function agrees with the one-pass rows.
    from sharpjax.rollout.sampler import RolloutBatch

    zeros = np.zeros(tokens.shape, np.float32)
    rollout = RolloutBatch(tokens=tokens, attention_mask=mask, response_mask=np.asarray(batch.response_mask),
                           logprobs=zeros, sampling_logprobs=zeros, lengths=lengths,
                           finished=np.ones(len(tokens), bool), prompt_index=np.zeros(len(tokens), np.int32))
    batch_logp = reference_logprobs(params, rollout, model=cfg.model, logits_chunk=5)
    np.testing.assert_allclose(np.asarray(batch_logp), whole, rtol=1e-6, atol=1e-6)
