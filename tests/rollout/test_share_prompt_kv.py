"""RLOO samples sharing their prompt's KV cache (`SamplingConfig.share_prompt_kv`).

With sharing the decode attends over two parts, the prompt's keys (one copy per prompt) and
the row's own response keys, and merges them by their softmax statistics. That is the same
softmax over the same visible keys as the repeated [B, P + M] cache, summed in a different
order: everything here is compared with the unshared path at fp32 rounding.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sharpjax.models import ModelConfig, init_params
from sharpjax.models.transformer import (
    _attention,
    _attention_part,
    _combine_partials,
    _shared_prompt_decode_attention,
    apply,
)
from sharpjax.rollout import SamplingConfig, sample, sampling_config_for

EPS = float(np.finfo(np.float32).eps)


def _config(**kw):
    return ModelConfig(model_type="qwen3", vocab_size=40, hidden_size=24, intermediate_size=56, num_layers=3,
                       num_heads=4, num_kv_heads=2, head_dim=8, qk_norm=True, dtype="float32", **kw)


def _attention_tolerance(v, num_slots):
    # Each output is a convex combination of the values: summing n terms in another order
    # moves it by at most ~n eps max|v| (the rescaling by exp(m_part - m) adds a few eps).
    return (num_slots + 4) * EPS * float(np.abs(v).max())


def test_combine_partials_of_two_parts_equals_one_softmax():
    """Two parts' (o, l, m) combined == one softmax over the union of their visible keys,
    including a part with no visible key (weight exactly 0) and parts with very different maxima."""
    rng = np.random.default_rng(0)
    r, k, g, s, h = 3, 2, 2, 12, 8
    q_RKGH = jnp.asarray(rng.normal(size=(r, k, g, h)), jnp.float32)
    k_RKSH = jnp.asarray(rng.normal(size=(r, k, s, h)), jnp.float32)
    v_RKSH = jnp.asarray(rng.normal(size=(r, k, s, h)), jnp.float32)
    # Row 2's keys are scaled up so one part's max dominates the other's by a wide margin.
    k_RKSH = k_RKSH.at[2, :, :5].multiply(6.0)
    visible_RS = np.ones((r, s), bool)
    visible_RS[0, :3] = False  # left padding in part a
    visible_RS[1, :5] = False  # part a (slots 0..4) entirely hidden for row 1
    visible_RS[2, 9:] = False  # right end of part b hidden
    visible_RS = jnp.asarray(visible_RS)
    split = 5
    part = lambda sl: _attention_part(q_RKGH, k_RKSH[:, :, sl], v_RKSH[:, :, sl], visible_RS[:, sl],  # noqa: E731
                                      None, None, impl="xla")
    merged_RKGH = _combine_partials(part(slice(0, split)), part(slice(split, s)))
    # Reference: the dense decode attention over all S slots (one query per row).
    ref_B1NH = _attention(q_RKGH.reshape(r, 1, k * g, h), k_RKSH, v_RKSH, visible_RS[:, None, :], k)
    np.testing.assert_allclose(merged_RKGH.reshape(r, 1, k * g, h), ref_B1NH, rtol=0,
                               atol=_attention_tolerance(v_RKSH, s))


BF16_U = 2.0**-8  # bf16's unit roundoff: 8 significant bits, round to nearest


def _split_partials_f64(q_RKGH, k_RKSH, v_RKSH, visible_RS, splits):
    """Exact (float64) flash partials of each split of the slots, as the kernel defines them:
    a split with no visible slot has m = fp32 min, l = 0, o = 0. o [R, K, P, G, H], l, m [R, K, P, G]."""
    h = q_RKGH.shape[-1]
    scores_RKGS = np.einsum("rkgh,rksh->rkgs", q_RKGH, k_RKSH) / np.sqrt(h)
    os, ls, ms = [], [], []
    for sl in splits:
        vis = visible_RS[:, None, None, sl]
        sc = np.where(vis, scores_RKGS[..., sl], -np.inf)
        m = sc.max(-1)
        e = np.where(vis, np.exp(sc - np.where(np.isfinite(m), m, 0)[..., None]), 0.0)
        os.append(np.einsum("rkgs,rksh->rkgh", e, v_RKSH[:, :, sl]))
        ls.append(e.sum(-1))
        ms.append(np.where(np.isfinite(m), m, np.finfo(np.float32).min))
    return np.stack(os, 2), np.stack(ls, 2), np.stack(ms, 2)


@pytest.mark.parametrize("o_dtype", ["float32", "bfloat16"])
def test_combine_partials_over_splits_equals_dense_softmax(o_dtype):
    """Every split of two parts (3 + 4 splits, as the kernel returns them, o stored in fp32 or
    bf16) combined at once == one float64 softmax over all visible slots. Row 1: the first
    part has no visible slot (all its splits weigh exactly 0); row 2: no slot visible in either
    part (a finished row): output exactly 0, not NaN; row 3: maxima far apart across splits.

    Tolerance: the partials are the exact ones rounded once when stored (o by u_o = 2^-24 in
    fp32 or 2^-8 in bf16, l and m by 2^-24), then combined in fp32. Each |o_split| <= l_split
    max|v|, so out = sum w o / sum w l moves by <= u_o max|v| from o's rounding, and by a few
    fp32 ulps per split (the exps, the sums of P terms, the division): (u_o + (2P + 8) 2^-24) max|v|.
    """
    rng = np.random.default_rng(7)
    r, k, g, h = 4, 2, 3, 8
    splits_a = [slice(0, 8), slice(8, 16), slice(16, 24)]
    splits_b = [slice(24, 28), slice(28, 32), slice(32, 36), slice(36, 40)]
    s = 40
    q_RKGH = rng.normal(size=(r, k, g, h))
    k_RKSH = rng.normal(size=(r, k, s, h))
    v_RKSH = rng.normal(size=(r, k, s, h))
    k_RKSH[3, :, 10:14] *= 8.0  # row 3: one split's scores dominate the others by a wide margin
    visible_RS = np.ones((r, s), bool)
    visible_RS[0, :5] = False  # left padding of the prompt part
    visible_RS[0, 30:] = False  # unfilled response slots: splits 2 and 3 of part b are empty
    visible_RS[1, :24] = False  # row 1: no prompt slot
    visible_RS[2, :] = False  # row 2: nothing visible (a finished row reads nothing)
    o_a, l_a, m_a = _split_partials_f64(q_RKGH, k_RKSH, v_RKSH, visible_RS, splits_a)
    o_b, l_b, m_b = _split_partials_f64(q_RKGH, k_RKSH, v_RKSH, visible_RS, splits_b)
    store = lambda o, ls, m: (jnp.asarray(o, o_dtype), jnp.asarray(ls, jnp.float32), jnp.asarray(m, jnp.float32))  # noqa: E731
    out_RKGH = np.asarray(_combine_partials(store(o_a, l_a, m_a), store(o_b, l_b, m_b)))
    assert out_RKGH.dtype == np.float32 and np.isfinite(out_RKGH).all()
    # Reference: softmax over the visible slots in float64.
    scores_RKGS = np.einsum("rkgh,rksh->rkgs", q_RKGH, k_RKSH) / np.sqrt(h)
    scores_RKGS = np.where(visible_RS[:, None, None], scores_RKGS, -np.inf)
    live = visible_RS.any(1)
    p_RKGS = np.exp(scores_RKGS[live] - scores_RKGS[live].max(-1, keepdims=True))
    ref = np.einsum("rkgs,rksh->rkgh", p_RKGS / p_RKGS.sum(-1, keepdims=True), v_RKSH[live])
    u_o = BF16_U if o_dtype == "bfloat16" else 2.0**-24
    atol = (u_o + (2 * (len(splits_a) + len(splits_b)) + 8) * 2.0**-24) * np.abs(v_RKSH).max()
    np.testing.assert_allclose(out_RKGH[live], ref, rtol=0, atol=atol)
    np.testing.assert_array_equal(out_RKGH[2], 0.0)


def test_kernel_split_partials_combined_equal_dense_softmax():
    """`decode_kernel.mqa(split_partials=True)` (interpreted) + `_combine_partials` == a float64 softmax over
    each row's slots [start, end), and == the vendored `mqa` (its own per-call combine): rows
    with left padding, an end mid-block, a window in one split only, and end <= start (no slot:
    every split has l = 0, m = fp32 min, and the combined output is exactly 0)."""
    from sharpjax.models import decode_kernel

    rng = np.random.default_rng(3)
    x, g, s, h, k_splits = 5, 3, 64, 8, 4
    q = rng.normal(size=(x, g, h)).astype(np.float32)
    k = rng.normal(size=(x, s, h)).astype(np.float32)
    v = rng.normal(size=(x, s, h)).astype(np.float32)
    start = np.array([0, 5, 20, 17, 40], np.int32)
    end = np.array([64, 37, 30, 50, 40], np.int32)
    o, l, m = decode_kernel.mqa(q, k, v, start, end, block_k=16, k_splits=k_splits, interpret=True,  # noqa: E741
                                split_partials=True)
    assert o.shape == (x, k_splits, g, h) and l.shape == m.shape == (x, k_splits, g)
    split_start = np.arange(k_splits)[None] * (s // k_splits)
    empty = (end[:, None] <= split_start) | (start[:, None] >= split_start + s // k_splits)
    np.testing.assert_array_equal(np.asarray(l)[empty], 0.0)
    np.testing.assert_array_equal(np.asarray(m)[empty], np.finfo(np.float32).min)
    # _combine_partials takes [R, K, P, G(, H)]: one kv head per row here.
    out = np.asarray(_combine_partials((o[:, None], l[:, None], m[:, None])))[:, 0]
    np.testing.assert_array_equal(out[4], 0.0)
    live = end > start
    scores = np.einsum("xgh,xsh->xgs", q.astype(np.float64), k.astype(np.float64)) / np.sqrt(h)
    visible = (np.arange(s)[None] >= start[:, None]) & (np.arange(s)[None] < end[:, None])
    scores = np.where(visible[:, None], scores, -np.inf)[live]
    p = np.exp(scores - scores.max(-1, keepdims=True))
    ref = np.einsum("xgs,xsh->xgh", p / p.sum(-1, keepdims=True), v[live].astype(np.float64))
    # Blockwise online softmax in fp32 inside the kernel, then the combine: as `_attention_tolerance`.
    atol = _attention_tolerance(v, s)
    np.testing.assert_allclose(out[live], ref, rtol=0, atol=atol)
    upstream = np.asarray(decode_kernel.mqa(q, k, v, start, end, block_k=16, k_splits=k_splits, interpret=True))
    np.testing.assert_allclose(out[live], upstream[live], rtol=0, atol=atol)


@pytest.mark.parametrize("impl", ["xla", "pallas_interpret"])
def test_shared_prompt_attention_matches_repeated_cache(impl):
    """Q prompts x C rows: the two-part attention == dense attention over each row's own
    [prompt, response] cache. Prompts are left-padded (0, 5, and all 16 slots: an empty prompt);
    the response part is filled up to a slot mid-block; unfilled slots hold garbage."""
    rng = np.random.default_rng(1)
    q_rows, c, k, g, t, s, h = 3, 2, 2, 2, 16, 16, 8
    b = q_rows * c
    q_B1NH = jnp.asarray(rng.normal(size=(b, 1, k * g, h)), jnp.float32)
    prompt_k = jnp.asarray(rng.normal(size=(q_rows, k, t, h)), jnp.float32)
    prompt_v = jnp.asarray(rng.normal(size=(q_rows, k, t, h)), jnp.float32)
    k_BKSH = jnp.asarray(rng.normal(size=(b, k, s, h)), jnp.float32)
    v_BKSH = jnp.asarray(rng.normal(size=(b, k, s, h)), jnp.float32)
    first_Q = jnp.array([0, 5, 16], jnp.int32)
    prompt_visible_QT = jnp.arange(t)[None, :] >= first_Q[:, None]
    num_filled = 7
    visible_B1S = jnp.broadcast_to(jnp.arange(s) < num_filled, (b, 1, s))
    out = _shared_prompt_decode_attention(
        q_B1NH, prompt_k, prompt_v, prompt_visible_QT, first_Q, k_BKSH, v_BKSH, visible_B1S, k,
        first_slot_B=jnp.zeros((b,), jnp.int32), num_filled=jnp.int32(num_filled), impl=impl,
    )
    rep = lambda x: jnp.repeat(x, c, axis=0)  # noqa: E731
    full_k, full_v = jnp.concatenate([rep(prompt_k), k_BKSH], 2), jnp.concatenate([rep(prompt_v), v_BKSH], 2)
    full_visible = jnp.concatenate([rep(prompt_visible_QT)[:, None], visible_B1S], 2)
    ref = _attention(q_B1NH, full_k, full_v, full_visible, k)
    # The kernel's blockwise online softmax and its (l + eps) normalisation add ~1e-6 relative.
    atol = _attention_tolerance(full_v, t + s) if impl == "xla" else 1e-5
    np.testing.assert_allclose(out, ref, rtol=0, atol=atol)


def _ragged_prompts():
    # Lengths 6, 3 and 5, left-padded; ids > 0 so the mask is tokens > 0.
    tokens = np.array([[5, 6, 7, 8, 9, 10], [0, 0, 0, 11, 12, 13], [0, 14, 15, 16, 17, 18]], np.int32)
    return tokens, (tokens > 0).astype(np.int32)


def _both(params, tokens, mask, config, key=5, **kw):
    outs = {}
    for share in (False, True):
        sampling = SamplingConfig(share_prompt_kv=share, **kw)
        outs[share] = sample(params, tokens, mask, jax.random.key(key), config=config, sampling=sampling)
    return outs[False], outs[True]


# Log-probs: the attention outputs differ by O(S eps) relative (see above); through 3 layers
# of O(1) weights and a log-softmax over logits of magnitude <~ 10 that is <~ 2e-5 absolute.
LOGPROB_ATOL = 2e-5
# A sampled token can only differ between the two paths where the draw is a near-tie: the two
# largest logits / T + Gumbel noise within the logits' difference (~1e-5). Seen once in
# these tests (a gap of 1.4e-6, P = 6 below); draws with a gap under this are not compared.
TIE_GAP = 1e-4


def _draw_gaps(params, config, out, key, *, temperature, prompt_len):
    """[B, M] gap between the two largest logits / T + Gumbel noise of each draw the sampler
    made (inf after a row ended), recomputed from teacher-forced logits.

    The sampler splits its key once per step and `jax.random.categorical` is the Gumbel-max
    argmax; the recomputation is checked to give back every sampled token whose gap is clear.
    """
    logits_BSV = np.asarray(apply(params, out.tokens, out.attention_mask, config=config))
    b, v = logits_BSV.shape[0], logits_BSV.shape[2]
    m = out.tokens.shape[1] - prompt_len
    gaps_BM = np.full((b, m), np.inf)
    alive_BM = np.asarray(out.response_mask[:, prompt_len:], bool)
    for t in range(m):
        key, step_key = jax.random.split(key)
        z_BV = logits_BSV[:, prompt_len - 1 + t] / temperature + np.asarray(jax.random.gumbel(step_key, (b, v)))
        top2_B2 = np.sort(z_BV, axis=-1)[:, -2:]
        gap_B = top2_B2[:, 1] - top2_B2[:, 0]
        clear_B = alive_BM[:, t] & (gap_B > TIE_GAP)
        np.testing.assert_array_equal(z_BV.argmax(-1)[clear_B], np.asarray(out.tokens)[clear_B, prompt_len + t])
        gaps_BM[:, t] = np.where(alive_BM[:, t], gap_B, np.inf)
    return gaps_BM


def _assert_same_rollouts(on, off, gaps_BM, prompt_len, *, atol):
    """Tokens identical and log-probs within atol up to each row's first near-tie draw (all
    of it for most rows: at most one row may have one); lengths and finish flags on tie-free rows."""
    m = gaps_BM.shape[1]
    first_tie_B = np.where((gaps_BM <= TIE_GAP).any(1), (gaps_BM <= TIE_GAP).argmax(1), m)
    assert (first_tie_B < m).sum() <= 1, first_tie_B  # the comparison covers nearly everything
    for row, upto in enumerate(first_tie_B):
        cols = slice(0, prompt_len + upto)
        np.testing.assert_array_equal(on.tokens[row, cols], off.tokens[row, cols])
        for field in ("logprobs", "sampling_logprobs"):
            np.testing.assert_allclose(getattr(on, field)[row, cols], getattr(off, field)[row, cols], rtol=0, atol=atol)
    free_B = first_tie_B == m
    for field in ("lengths", "finished", "response_mask"):
        np.testing.assert_array_equal(np.asarray(getattr(on, field))[free_B], np.asarray(getattr(off, field))[free_B])


@pytest.mark.parametrize("num_samples", [1, 3])
def test_sharing_matches_repeated_cache_with_eos_mid_sequence(num_samples):
    """Sampled (T = 0.9) rows from ragged left-padded prompts, with a stop token that ends
    some rows mid-sequence: same tokens, lengths and finish flags, log-probs to fp32 rounding
    (up to a near-tie draw, see TIE_GAP)."""
    config = _config()
    params = init_params(config, jax.random.key(4), init_std=0.4)
    tokens, mask = _ragged_prompts()
    p = tokens.shape[1]
    common = dict(max_new_tokens=10, num_samples=num_samples, temperature=0.9, decode_attention="xla")
    free = sample(params, tokens, mask, jax.random.key(5), config=config,
                  sampling=SamplingConfig(ignore_eos=True, share_prompt_kv=False, **common))
    # Stop on row 0's 4th token: keys are per step, so row 0 (and any row drawing it) stops there.
    stop = int(free.tokens[0, p + 3])
    off, on = _both(params, tokens, mask, config, stop_token_ids=(stop,), **common)
    assert bool(off.finished[0]) and int(off.lengths[0]) <= 4 and int(off.lengths.max()) > 4  # not vacuous
    gaps_BM = _draw_gaps(params, config, off, jax.random.key(5), temperature=0.9, prompt_len=p)
    _assert_same_rollouts(on, off, gaps_BM, p, atol=LOGPROB_ATOL)


def test_sharing_greedy_tokens_identical():
    """Greedy rows (a flip would need a top-2 logit tie within ~2e-5; the margins are checked
    below so the equality cannot hinge on one) with G = 2 copies of each prompt."""
    config = _config()
    params = init_params(config, jax.random.key(7), init_std=0.4)
    tokens, mask = _ragged_prompts()
    off, on = _both(params, tokens, mask, config, max_new_tokens=12, num_samples=2, greedy=True, ignore_eos=True,
                    decode_attention="xla")
    logits_BSV = np.asarray(apply(params, off.tokens, off.attention_mask, config=config))
    p = tokens.shape[1]
    top2 = np.sort(logits_BSV[:, p - 1 : -1], axis=-1)[..., -2:]
    assert (top2[..., 1] - top2[..., 0]).min() > TIE_GAP
    np.testing.assert_array_equal(on.tokens, off.tokens)
    np.testing.assert_allclose(on.logprobs, off.logprobs, rtol=0, atol=LOGPROB_ATOL)


@pytest.mark.parametrize("prompt_len", [16, 6])
def test_sharing_with_pallas_interpret_matches_dense_unshared(prompt_len):
    """The length-aware kernel on the response part (M = 16) and on the prompt part when P = 16
    (P = 6: not a multiple of 16, so that part is dense XLA, merged with the kernel's part)
    vs the unshared dense path. With P = 6, row 0's 4th draw is a near-tie (gap 1.4e-6) that
    the paths' rounding resolves differently: the rows are compared up to it (`TIE_GAP`)."""
    config = _config()
    params = init_params(config, jax.random.key(4), init_std=0.4)
    tokens = np.zeros((2, prompt_len), np.int32)
    tokens[0, 3:] = np.arange(prompt_len - 3) + 1
    tokens[1, prompt_len - 2 :] = np.arange(2) + 20
    mask = (tokens > 0).astype(np.int32)
    outs = {}
    for share, impl in ((False, "xla"), (True, "pallas_interpret")):
        sampling = SamplingConfig(max_new_tokens=16, num_samples=2, temperature=0.9, ignore_eos=True,
                                  decode_attention=impl, share_prompt_kv=share)
        outs[share] = sample(params, tokens, mask, jax.random.key(3), config=config, sampling=sampling)
    gaps_BM = _draw_gaps(params, config, outs[False], jax.random.key(3), temperature=0.9, prompt_len=prompt_len)
    # The kernel's blockwise sums add ~1e-6 relative on top: 1e-5 as in test_decode.
    _assert_same_rollouts(outs[True], outs[False], gaps_BM, prompt_len, atol=1e-5)


def _buffer_shapes(hlo: str) -> set[str]:
    return set(re.findall(r"f32\[[\d,]+\]", hlo))


def test_shared_cache_is_one_copy_per_prompt():
    """The compiled sampler holds the prompt KV as [Bp, K, P, H] and the responses' as
    [B, K, M, H]: no [B, K, P(+M), H] cache (the G-fold copy).

    (Temp memory is not compared: at this size the CPU compile's peak is the prefill's
    activations, not the cache; the 3B GPU-target compile's numbers are in BENCHMARKS.md.)"""
    config = _config()
    params = init_params(config, jax.random.key(0))
    bp, g, p, m = 2, 3, 5, 7  # distinct from every other dim, so a shape names one buffer
    tokens = np.arange(1, bp * p + 1, dtype=np.int32).reshape(bp, p)
    hlo = {}
    for share in (False, True):
        sampling = SamplingConfig(max_new_tokens=m, num_samples=g, ignore_eos=True, share_prompt_kv=share,
                                  decode_attention="xla")
        hlo[share] = sample.lower(params, tokens, np.ones_like(tokens), jax.random.key(0), config=config,
                                  sampling=sampling).compile().as_text()
    k, h, b = config.num_kv_heads, config.head_dim, bp * g
    shape = lambda *d: f"f32[{','.join(map(str, d))}]"  # noqa: E731
    off, on = _buffer_shapes(hlo[False]), _buffer_shapes(hlo[True])
    assert shape(b, k, p + m, h) in off  # the check finds the repeated cache where it is
    assert shape(b, k, p + m, h) not in on and shape(b, k, p, h) not in on
    assert shape(bp, k, p, h) in on and shape(b, k, m, h) in on


def test_sampling_config_for_threads_share_prompt_kv():
    class Tok:
        eos_token_id, pad_token_id = 2, 0

    config = _config(eos_token_ids=(2,))
    assert sampling_config_for(config, Tok(), max_new_tokens=4).share_prompt_kv is True
    assert sampling_config_for(config, Tok(), max_new_tokens=4, share_prompt_kv=False).share_prompt_kv is False


def test_one_sample_per_prompt_keeps_one_cache():
    """At G = 1 there is nothing to share: `share_prompt_kv` lowers to the very program of the
    one [B, K, P + M, H] cache (one attention call per layer, no merge). At G = 2 it does not."""
    config = _config()
    params = init_params(config, jax.random.key(0))
    b, p, m = 4, 5, 7
    tokens = np.arange(1, b * p + 1, dtype=np.int32).reshape(b, p)

    def program(share, g):
        sampling = SamplingConfig(max_new_tokens=m, num_samples=g, ignore_eos=True, share_prompt_kv=share,
                                  decode_attention="xla")
        assert sampling.uses_shared_prompt_kv == (share and g > 1)
        return sample.lower(params, tokens[: b // g], np.ones_like(tokens[: b // g]), jax.random.key(0),
                            config=config, sampling=sampling).as_text()

    assert program(True, 1) == program(False, 1)
    assert program(True, 2) != program(False, 2)  # the comparison can tell the two layouts apart
