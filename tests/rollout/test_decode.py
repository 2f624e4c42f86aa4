"""The decode path: per-layer weights hoisted out of the loop, and decode_step against forward."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sharpjax.models import ModelConfig, init_params
from sharpjax.models.transformer import KVCache, decode_step, forward, param_shapes, unstack_layers
from sharpjax.rollout import SamplingConfig, sample
from sharpjax.rollout.hlo import stacked_weight_slices, while_bodies


def _config(**kw):
    # Every dim distinct from the cache's and the batch's, so only a layer weight has a stacked shape.
    return ModelConfig(model_type="qwen3", vocab_size=40, hidden_size=24, intermediate_size=56, num_layers=3,
                       num_heads=4, num_kv_heads=2, head_dim=8, qk_norm=True, dtype="float32", **kw)


@pytest.mark.parametrize("share_prompt_kv", [False, True])
def test_decode_loop_body_slices_no_stacked_weight(share_prompt_kv):
    """A w[i] of the stacked [L, ...] params inside the while body is a per-step weight copy.

    XLA does not hoist a lone slice out of a loop; on the 3B GPU target that was 168 copies
    (~4 GB) per token. In fp32 the CPU compile keeps them visible too (in bf16 its f32 upcast
    hides them), so this fp32 compile guards the GPU behaviour.
    """
    config = _config()
    params = init_params(config, jax.random.key(0))
    tokens = np.array([[5, 6, 7, 8], [0, 0, 9, 10]], np.int32)
    sampling = SamplingConfig(max_new_tokens=6, num_samples=2, ignore_eos=True, share_prompt_kv=share_prompt_kv)
    hlo = sample.lower(params, tokens, (tokens > 0).astype(np.int32), jax.random.key(0), config=config,
                       sampling=sampling).compile().as_text()
    stacked = set(jax.tree.leaves(param_shapes(config)["layers"], is_leaf=lambda x: isinstance(x, tuple)))
    # The decode loop is the while that carries the [B, K, S, H] cache (S = P + M, or M
    # response slots with a shared prompt cache) and the [B, M] log-probs; the prefill's scan
    # over layers is another while, and slicing layer i there is its job.
    cache = "f32[4,2,6,8]" if share_prompt_kv else "f32[4,2,10,8]"
    decode_bodies = {
        body for line in hlo.splitlines() if " while(" in line and cache in line and "f32[4,6]" in line
        for body in re.findall(r"body=%?([\w.\-]+)", line)
    }
    assert decode_bodies  # found, so the check below is not vacuous
    bodies = {name: text for name, text in while_bodies(hlo).items() if name in decode_bodies}
    found = {b: stacked_weight_slices(text, stacked) for b, text in bodies.items()}
    assert not any(found.values()), found
    # The same scan finds the weight slices where they are meant to be: before the loop.
    assert stacked_weight_slices(hlo, stacked)


def test_decode_step_matches_forward_with_cache():
    """decode_step with unstacked layers == forward on the stacked params, over several steps."""
    config = _config(qkv_bias=True, o_bias=True)
    params = init_params(config, jax.random.key(1), init_std=0.3)
    params["layers"] = jax.tree.map(lambda w: w + 0.1 * jax.random.normal(jax.random.key(2), w.shape), params["layers"])
    tokens_BP = jnp.array([[5, 6, 7, 8], [0, 0, 9, 10], [0, 11, 12, 13]], jnp.int32)
    mask_BP = (tokens_BP > 0).astype(jnp.int32)
    steps, p = 5, tokens_BP.shape[1]
    key_mask_BS = jnp.concatenate([mask_BP, jnp.ones((3, steps), jnp.int32)], axis=1).astype(bool)
    positions_BP = jnp.maximum(jnp.cumsum(mask_BP, -1) - 1, 0)
    _, cache = forward(params, tokens_BP, config=config, positions_BT=positions_BP, key_mask_BS=key_mask_BS,
                       cache=KVCache.init(config, 3, p + steps))
    ref_cache, layers = cache, unstack_layers(params, config.num_layers)
    step_ref = jax.jit(lambda c, t, pos: forward(params, t[:, None], config=config, positions_BT=pos[:, None],
                                                 key_mask_BS=key_mask_BS, cache=c))
    step_new = jax.jit(lambda c, t, pos: decode_step(params, layers, t, config=config, positions_B=pos,
                                                     key_mask_BS=key_mask_BS, cache=c))
    token_B = jnp.array([1, 2, 3], jnp.int32)
    for t in range(steps):
        pos_B = mask_BP.sum(-1) + t
        hidden_ref_B1D, ref_cache = step_ref(ref_cache, token_B, pos_B)
        hidden_BD, cache = step_new(cache, token_B, pos_B)
        # The same operations; only fusion may reorder fp32 rounding.
        np.testing.assert_allclose(hidden_BD, hidden_ref_B1D[:, 0], rtol=1e-5, atol=1e-5)
        for new, ref in zip(cache.k + cache.v, ref_cache.k + ref_cache.v):
            np.testing.assert_allclose(new, ref, rtol=1e-5, atol=1e-6)
        assert int(cache.index) == int(ref_cache.index) == p + t + 1
        token_B = (token_B * 7 + 3) % config.vocab_size


def test_unstack_layers_slices_each_layer():
    config = _config()
    params = init_params(config, jax.random.key(0))
    layers = unstack_layers(params, config.num_layers)
    assert len(layers) == config.num_layers
    for i, p_i in enumerate(layers):
        jax.tree.map(lambda w, s: np.testing.assert_array_equal(w, s[i]), p_i, params["layers"])


def _left_padded_cache(b=3, k=2, g=2, s=32, h=8, seed=0):
    rng = np.random.default_rng(seed)
    q_B1NH = jnp.asarray(rng.normal(size=(b, 1, k * g, h)), jnp.float32)
    k_BKSH = jnp.asarray(rng.normal(size=(b, k, s, h)), jnp.float32)
    v_BKSH = jnp.asarray(rng.normal(size=(b, k, s, h)), jnp.float32)
    return q_B1NH, k_BKSH, v_BKSH


def test_pallas_decode_attention_matches_dense():
    """The length-aware kernel (in Pallas' interpreter) == the dense masked attention.

    Rows start at slot 0, inside the first block, and past a whole split; the filled length
    ends mid-block, on a block edge, and at S. Unfilled slots hold garbage that must not leak.
    """
    from sharpjax.models.transformer import _decode_attention, _pallas_decode_blocks

    q_B1NH, k_BKSH, v_BKSH = _left_padded_cache()
    s = k_BKSH.shape[2]
    assert _pallas_decode_blocks(s) == (32, 1) and _pallas_decode_blocks(48) == (16, 3)
    assert _pallas_decode_blocks(769) is None
    first_slot_B = jnp.array([0, 5, 19], jnp.int32)
    for num_filled in (21, 32, 20):
        slot_S = jnp.arange(s)
        visible_B1S = ((slot_S >= first_slot_B[:, None]) & (slot_S < num_filled))[:, None, :]
        kw = dict(first_slot_B=first_slot_B, num_filled=jnp.int32(num_filled))
        dense = _decode_attention(q_B1NH, k_BKSH, v_BKSH, visible_B1S, 2, impl="xla", **kw)
        kernel = _decode_attention(q_B1NH, k_BKSH, v_BKSH, visible_B1S, 2, impl="pallas_interpret", **kw)
        # Blockwise online softmax vs one softmax: fp32 reordering only.
        np.testing.assert_allclose(kernel, dense, rtol=1e-5, atol=1e-6)


def test_sampler_with_pallas_decode_matches_dense():
    """The whole sampler with the length-aware kernel: same tokens, log-probs to fp32 rounding."""
    config = _config()
    params = init_params(config, jax.random.key(4), init_std=0.4)
    tokens = np.array([[5, 6, 7, 8, 9, 10], [0, 0, 0, 11, 12, 13], [0, 14, 15, 16, 17, 18]], np.int32)
    mask = (tokens > 0).astype(np.int32)
    outs = {}
    for impl in ("xla", "pallas_interpret"):
        # P + M = 16 slots: a multiple of 16, so the kernel path is taken.
        sampling = SamplingConfig(max_new_tokens=10, num_samples=2, temperature=0.9, ignore_eos=True,
                                  decode_attention=impl)
        outs[impl] = sample(params, tokens, mask, jax.random.key(5), config=config, sampling=sampling)
    dense, kernel = outs["xla"], outs["pallas_interpret"]
    np.testing.assert_array_equal(kernel.tokens, dense.tokens)
    np.testing.assert_allclose(kernel.logprobs, dense.logprobs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kernel.sampling_logprobs, dense.sampling_logprobs, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="the compiled Pallas kernel needs an NVIDIA GPU")
def test_sampler_gpu_kernel_matches_dense():
    """On a GPU, "auto" runs the compiled Triton kernel: greedy tokens and log-probs as dense."""
    config = _config()
    params = init_params(config, jax.random.key(4), init_std=0.4)
    tokens = np.array([[5, 6, 7, 8, 9, 10], [0, 0, 0, 11, 12, 13], [0, 14, 15, 16, 17, 18]], np.int32)
    mask = (tokens > 0).astype(np.int32)
    outs = {}
    for impl in ("xla", "auto"):
        sampling = SamplingConfig(max_new_tokens=26, greedy=True, ignore_eos=True, decode_attention=impl)
        outs[impl] = sample(params, tokens, mask, jax.random.key(5), config=config, sampling=sampling)
    np.testing.assert_array_equal(outs["auto"].tokens, outs["xla"].tokens)
    # GPU fp32 dots may run in TF32 (10-bit mantissa) on either side: ~1e-3 relative.
    np.testing.assert_allclose(outs["auto"].logprobs, outs["xla"].logprobs, rtol=1e-2, atol=1e-2)
