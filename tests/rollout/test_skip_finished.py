"""Finished rows stop reading the KV cache (`SamplingConfig.skip_finished_rows`, issue 28 item 3).

A row that has stopped (stop token or its own budget) keeps riding in the batch until the
longest row ends; under the length-aware Pallas decode attention it now reads no cache block.
Its outputs are discarded, so every row's tokens, log-probs, lengths and flags are bitwise the
same as without skipping. The tests below check both halves: the equality (plain and shared
prompt caches, per-row budgets and a stop token), and that the skipped rows really read
nothing (a NaN cache in a skipped row would otherwise reach its output; a spy on the kernel's
length argument counts the rows read over a whole `sample` call).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sharpjax.models import ModelConfig, decode_kernel, init_params
from sharpjax.models.transformer import (
    KVCache,
    _decode_attention,
    _shared_prompt_decode_attention,
    decode_step,
    unstack_layers,
)
from sharpjax.rollout import SamplingConfig, sample


def _config():
    return ModelConfig(model_type="qwen3", vocab_size=40, hidden_size=24, intermediate_size=56, num_layers=3,
                       num_heads=4, num_kv_heads=2, head_dim=8, qk_norm=True, dtype="float32")


def _normal(rng, *shape):
    return jnp.asarray(rng.normal(size=shape), jnp.float32)


def test_finished_row_reads_no_block_plain():
    """A row that is not live gets exactly 0 from the kernel even when its cache is NaN (any
    block read would carry the NaN into its output); live rows are bitwise unchanged."""
    rng = np.random.default_rng(0)
    b, k, g, s, h = 4, 2, 2, 32, 8
    q_B1NH = _normal(rng, b, 1, k * g, h)
    k_BKSH, v_BKSH = _normal(rng, b, k, s, h), _normal(rng, b, k, s, h)
    live_B = jnp.array([True, False, True, False])
    k_nan, v_nan = (x.at[~live_B].set(jnp.nan) for x in (k_BKSH, v_BKSH))
    first_slot_B = jnp.array([0, 3, 5, 19], jnp.int32)
    num_filled = jnp.int32(21)
    slot_S = jnp.arange(s)
    visible_B1S = ((slot_S >= first_slot_B[:, None]) & (slot_S < num_filled))[:, None, :]
    run = lambda kk, vv, live: _decode_attention(  # noqa: E731
        q_B1NH, kk, vv, visible_B1S, k, first_slot_B=first_slot_B, num_filled=num_filled, impl="pallas_interpret",
        live_B=live)
    skipped = np.asarray(run(k_nan, v_nan, live_B))
    assert np.isnan(np.asarray(run(k_nan, v_nan, None))[~live_B]).all()  # the check is not vacuous
    assert (skipped[~live_B] == 0).all()
    np.testing.assert_array_equal(skipped[live_B], np.asarray(run(k_BKSH, v_BKSH, None))[live_B])


def test_finished_rows_read_no_block_shared_prompt():
    """Shared prompt caches (Q = 3 prompts x C = 2 rows): a finished row skips its response
    cache; a prompt whose C rows are all finished skips its prompt cache too. NaN there
    stays out of every output (no 0 / 0 in the merge either); live rows bitwise unchanged."""
    rng = np.random.default_rng(1)
    q_rows, c, k, g, t, s, h = 3, 2, 2, 2, 16, 16, 8
    b = q_rows * c
    q_B1NH = _normal(rng, b, 1, k * g, h)
    prompt_k, prompt_v = _normal(rng, q_rows, k, t, h), _normal(rng, q_rows, k, t, h)
    k_BKSH, v_BKSH = _normal(rng, b, k, s, h), _normal(rng, b, k, s, h)
    # Prompt 0: both rows live; prompt 1: one row finished; prompt 2: both finished.
    live_B = jnp.array([True, True, True, False, False, False])
    first_Q = jnp.array([0, 5, 2], jnp.int32)
    prompt_visible_QT = jnp.arange(t)[None, :] >= first_Q[:, None]
    num_filled = 7
    visible_B1S = jnp.broadcast_to(jnp.arange(s) < num_filled, (b, 1, s))

    def run(pk, pv, kk, vv, live):
        return np.asarray(_shared_prompt_decode_attention(
            q_B1NH, pk, pv, prompt_visible_QT, first_Q, kk, vv, visible_B1S, k,
            first_slot_B=jnp.zeros((b,), jnp.int32), num_filled=jnp.int32(num_filled), impl="pallas_interpret",
            live_B=live))

    nan_pk, nan_pv = (x.at[2].set(jnp.nan) for x in (prompt_k, prompt_v))
    nan_k, nan_v = (x.at[~live_B].set(jnp.nan) for x in (k_BKSH, v_BKSH))
    skipped = run(nan_pk, nan_pv, nan_k, nan_v, live_B)
    assert np.isnan(run(nan_pk, nan_pv, nan_k, nan_v, None)[~live_B]).all()  # not vacuous
    assert np.isfinite(skipped).all()
    assert (skipped[4:] == 0).all()  # prompt 2's rows read nothing at all
    np.testing.assert_array_equal(skipped[np.asarray(live_B)], run(prompt_k, prompt_v, k_BKSH, v_BKSH, None)[live_B])


@pytest.mark.parametrize("share_prompt_kv", [False, True])
def test_decode_step_skips_finished_rows(share_prompt_kv):
    """Through `decode_step` (every layer): NaN in a finished row's cache reaches no output,
    and the live rows' hidden states are bitwise those of the step without `live_B`."""
    config = _config()
    params = init_params(config, jax.random.key(0), init_std=0.4)
    layers = unstack_layers(params, config.num_layers)
    rng = np.random.default_rng(2)
    b, s = 4, 16
    shape = (b, config.num_kv_heads, s, config.head_dim)
    cache = KVCache(k=tuple(_normal(rng, *shape) for _ in range(3)), v=tuple(_normal(rng, *shape) for _ in range(3)),
                    index=jnp.int32(9))
    live_B = jnp.array([False, True, True, False])
    nan_cache = KVCache(k=tuple(x.at[~live_B].set(jnp.nan) for x in cache.k),
                        v=tuple(x.at[~live_B].set(jnp.nan) for x in cache.v), index=cache.index)
    kw = dict(config=config, positions_B=jnp.full((b,), 9, jnp.int32), key_mask_BS=jnp.ones((b, s), bool),
              first_slot_B=jnp.zeros((b,), jnp.int32), attention="pallas_interpret")
    if share_prompt_kv:  # 2 prompts x 2 rows; prompt 0's rows are row 0 (finished) and row 1 (live)
        pshape = (2, config.num_kv_heads, 16, config.head_dim)
        kw |= dict(prompt_cache=KVCache(k=tuple(_normal(rng, *pshape) for _ in range(3)),
                                        v=tuple(_normal(rng, *pshape) for _ in range(3)), index=jnp.int32(16)),
                   prompt_mask_QT=jnp.ones((2, 16), bool))
    tokens_B = jnp.array([1, 2, 3, 4], jnp.int32)
    step = jax.jit(lambda c, live: decode_step(params, layers, tokens_B, cache=c, live_B=live, **kw)[0])
    skipped = np.asarray(step(nan_cache, live_B))
    assert np.isnan(np.asarray(step(nan_cache, None))[~live_B]).all()  # not vacuous
    assert np.isfinite(skipped).all()
    np.testing.assert_array_equal(skipped[live_B], np.asarray(step(cache, None))[live_B])


def _prompts(prompt_len):
    tokens = np.zeros((3, prompt_len), np.int32)
    for i, n in enumerate((prompt_len, 3, 5)):  # left-padded, ids > 0
        tokens[i, prompt_len - n:] = np.arange(n) + 5 + 7 * i
    return tokens, (tokens > 0).astype(np.int32)


def _rollouts(share_prompt_kv, impl, skip, prompt_len, budgets=None):
    """G = 2 samples of 3 ragged prompts, a stop token and per-row budgets (`max_new_tokens_B`)."""
    config = _config()
    params = init_params(config, jax.random.key(4), init_std=0.4)
    tokens, mask = _prompts(prompt_len)
    sampling = SamplingConfig(max_new_tokens=16 if share_prompt_kv else 16 - prompt_len, num_samples=2,
                              temperature=0.9, stop_token_ids=(3, 11), decode_attention=impl,
                              share_prompt_kv=share_prompt_kv, skip_finished_rows=skip)
    budgets = np.array([16, 4, 9, 16, 2, 12]) if budgets is None else budgets
    budgets = np.minimum(budgets, sampling.max_new_tokens)
    return sample(params, tokens, mask, jax.random.key(5), config=config, sampling=sampling,
                  max_new_tokens_B=jnp.asarray(budgets, jnp.int32))


FIELDS = ("tokens", "attention_mask", "response_mask", "logprobs", "sampling_logprobs", "lengths", "finished")


@pytest.mark.parametrize("share_prompt_kv,prompt_len", [(False, 6), (True, 16)])
def test_skipping_keeps_every_output_bitwise(share_prompt_kv, prompt_len):
    """The Pallas kernel (interpreter) with and without skipping: every field bitwise equal,
    with rows ended by a stop token, by their budgets, and by the allocation. P + M = 16
    (plain) and P = M = 16 (shared): every part runs on the kernel."""
    on = _rollouts(share_prompt_kv, "pallas_interpret", True, prompt_len)
    off = _rollouts(share_prompt_kv, "pallas_interpret", False, prompt_len)
    lengths, finished = np.asarray(on.lengths), np.asarray(on.finished)
    m = on.tokens.shape[1] - prompt_len
    # Not vacuous: some rows stop on a token, some on their budget, and the rows end at different steps.
    assert finished.any() and (~finished & (lengths < m)).any() and len(set(lengths.tolist())) >= 3, (lengths, finished)
    for field in FIELDS:
        np.testing.assert_array_equal(np.asarray(getattr(on, field)), np.asarray(getattr(off, field)), err_msg=field)
    # And against the dense XLA path, within the bound of tests/rollout/test_decode.py.
    dense = _rollouts(share_prompt_kv, "xla", True, prompt_len)
    np.testing.assert_array_equal(on.tokens, dense.tokens)
    np.testing.assert_array_equal(on.lengths, dense.lengths)
    np.testing.assert_array_equal(on.finished, dense.finished)
    np.testing.assert_allclose(on.logprobs, dense.logprobs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("share_prompt_kv,prompt_len", [(False, 6), (True, 16)])
def test_sampler_reads_kv_only_for_live_rows(share_prompt_kv, prompt_len, monkeypatch):
    """A spy on the kernel's (start, end) arguments over a whole `sample` call: a row reads its
    response cache at step t only while it samples again (t + 1 < its length), so the kernel
    rows with a block to read number L * K * sum(length - 1), not L * K * B * steps."""
    calls = []

    def spy(real):
        def call(q, k, v, start_idx, kv_seq_len, **kw):
            jax.debug.callback(lambda s, e: calls.append((s.shape[0], int((e > s).sum()))), start_idx, kv_seq_len)
            return real(q, k, v, start_idx, kv_seq_len, **kw)
        return call

    monkeypatch.setattr(decode_kernel, "mqa", spy(decode_kernel.mqa))
    config = _config()
    sample.clear_cache()  # a trace cached by another test would not call the spy (nor would this one, after)
    try:
        out = _rollouts(share_prompt_kv, "pallas_interpret", True, prompt_len, budgets=np.array([7, 3, 16, 5, 1, 10]))
        jax.block_until_ready(out)
        jax.effects_barrier()
    finally:
        sample.clear_cache()
    lengths = np.asarray(out.lengths)
    steps, k, layers = int(lengths.max()), config.num_kv_heads, config.num_layers
    b = lengths.size
    response_calls = [n for rows, n in calls if rows == b * k]  # the shared prompt part has Q * K rows
    assert len(response_calls) == steps * layers, (len(response_calls), steps, layers)
    assert sum(response_calls) == layers * k * (lengths - 1).clip(0).sum() < layers * k * b * steps
    if share_prompt_kv:  # a prompt's part is read while any of its G = 2 rows samples again
        prompt_calls = [n for rows, n in calls if rows == b // 2 * k]
        alive_steps_Q = (lengths - 1).clip(0).reshape(-1, 2).max(1)
        assert sum(prompt_calls) == layers * k * alive_steps_Q.sum()


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="the compiled Pallas kernel needs an NVIDIA GPU")
@pytest.mark.parametrize("share_prompt_kv,prompt_len", [(False, 6), (True, 16)])
def test_gpu_kernel_skipping_keeps_every_output_bitwise(share_prompt_kv, prompt_len):
    """On a GPU, "auto" runs the compiled Triton kernel: skipping changes no output bit there either."""
    on = _rollouts(share_prompt_kv, "auto", True, prompt_len)
    off = _rollouts(share_prompt_kv, "auto", False, prompt_len)
    for field in FIELDS:
        np.testing.assert_array_equal(np.asarray(getattr(on, field)), np.asarray(getattr(off, field)), err_msg=field)
