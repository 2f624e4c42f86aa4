"""Logits parity with transformers' PyTorch models, jit/no-jit, and KV-cache consistency."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sharpjax.models import KVCache, apply, forward, load_model, logits, positions_from_mask
from tests.tiny import FAMILIES, build_hf_model, require_torch


def hf_logits(model_dir, tokens, mask):
    torch = require_torch()
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            position_ids=torch.tensor(positions, dtype=torch.long),
        )
    return out.logits.numpy()


@pytest.mark.parametrize("family,tie", [("llama", None), ("qwen2", False), ("qwen2", True), ("qwen3", False)])
def test_logits_match_transformers(hf_checkpoint, left_padded_batch, family, tie):
    model_dir = hf_checkpoint(family, tie)
    tokens, mask = left_padded_batch
    params, config = load_model(model_dir, dtype="float32")
    assert config.tie_word_embeddings == (family == "llama" or bool(tie))
    expected = hf_logits(model_dir, tokens, mask)
    eager = np.asarray(apply(params, jnp.asarray(tokens), jnp.asarray(mask), config=config))
    jitted = np.asarray(jax.jit(apply, static_argnames="config")(params, tokens, mask, config=config))
    valid = mask.astype(bool)
    assert np.abs(eager - expected)[valid].max() < 1e-4
    assert np.abs(jitted - expected)[valid].max() < 1e-4


def test_llama3_rope_scaling_changes_the_model(hf_checkpoint, left_padded_batch):
    """Guards the parity test: with scaling ignored, logits must differ from HF's."""
    params, config = load_model(hf_checkpoint("llama"), dtype="float32")
    assert config.rope.kind == "llama3"
    tokens, mask = left_padded_batch
    scaled = apply(params, tokens, mask, config=config)
    plain = apply(params, tokens, mask, config=config.replace(rope=config.rope.__class__(theta=config.rope.theta)))
    assert np.abs(np.asarray(scaled - plain)).max() > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_decode_matches_full_forward(hf_checkpoint, left_padded_batch, family):
    """Prefill 6 tokens into a cache, then feed the rest one at a time: same logits."""
    params, config = load_model(hf_checkpoint(family), dtype="float32")
    tokens, mask = map(jnp.asarray, left_padded_batch)
    full = apply(params, tokens, mask, config=config)
    positions = positions_from_mask(mask)
    num_slots = 12  # more slots than tokens: unused slots must stay invisible
    key_mask = jnp.pad(mask, ((0, 0), (0, num_slots - mask.shape[1])), constant_values=1).astype(bool)
    cache = KVCache.init(config, tokens.shape[0], num_slots)
    step = jax.jit(forward, static_argnames="config")
    hidden, cache = step(params, tokens[:, :6], config=config, positions_BT=positions[:, :6], key_mask_BS=key_mask, cache=cache)
    outs = [logits(params, hidden)]
    for t in range(6, tokens.shape[1]):
        hidden, cache = step(
            params, tokens[:, t : t + 1], config=config, positions_BT=positions[:, t : t + 1], key_mask_BS=key_mask, cache=cache
        )
        outs.append(logits(params, hidden))
    assert int(cache.index) == tokens.shape[1]
    cached = jnp.concatenate(outs, axis=1)
    valid = np.asarray(mask, bool)
    assert np.abs(np.asarray(cached - full))[valid].max() < 1e-4


def test_causal_and_padding_invariance(hf_checkpoint):
    """Logits at position t depend on no later token, and left padding changes nothing."""
    params, config = load_model(hf_checkpoint("qwen3"), dtype="float32")
    rng = np.random.default_rng(1)
    row = rng.integers(3, 512, 7).astype(np.int32)
    base = apply(params, row[None], np.ones((1, 7), np.int32), config=config)[0]
    changed = row.copy()
    changed[5:] = (changed[5:] + 1) % 512
    assert np.allclose(apply(params, changed[None], np.ones((1, 7), np.int32), config=config)[0, :5], base[:5], atol=1e-5)
    padded = np.concatenate([np.full(4, 77, np.int32), row])[None]
    pad_mask = np.concatenate([np.zeros(4, np.int32), np.ones(7, np.int32)])[None]
    assert np.allclose(apply(params, padded, pad_mask, config=config)[0, 4:], base, atol=1e-5)


def test_remat_gives_same_gradients(hf_checkpoint, left_padded_batch):
    params, config = load_model(hf_checkpoint("llama"), dtype="float32")
    tokens, mask = left_padded_batch

    def loss(p, remat):
        return jnp.mean(apply(p, tokens, mask, config=config, remat=remat)[..., :8] ** 2)

    grads = {r: jax.grad(loss)(params, r) for r in ("none", "full", "dots")}
    for r in ("full", "dots"):
        diffs = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), grads["none"], grads[r])
        assert max(jax.tree.leaves(diffs)) < 1e-6


def test_bf16_forward_close_to_fp32(hf_checkpoint, left_padded_batch):
    tokens, mask = left_padded_batch
    p32, c32 = load_model(hf_checkpoint("qwen2", False), dtype="float32")
    p16, c16 = load_model(hf_checkpoint("qwen2", False), dtype="bfloat16")
    assert p16["layers"]["q"].dtype == jnp.bfloat16
    out16 = apply(p16, tokens, mask, config=c16)
    assert out16.dtype == jnp.float32  # fp32 logits from bf16 params
    valid = mask.astype(bool)
    err = np.abs(np.asarray(out16 - apply(p32, tokens, mask, config=c32)))[valid].max()
    assert err < 0.1


def test_build_hf_model_is_random():
    """The reference models must not have trivial (zero bias / unit norm) weights."""
    model = build_hf_model("qwen2")
    bias = model.model.layers[0].self_attn.q_proj.bias.detach().numpy()
    assert np.abs(bias).max() > 0.01
