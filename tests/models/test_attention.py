"""Flash-path attention (`jax.nn.dot_product_attention` over rows rotated to right padding)
against the explicit-mask reference, padded and fully padded rows included."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sharpjax.models import ModelConfig, apply, init_params
from sharpjax.models.config import ConfigError
from sharpjax.models.transformer import (
    _attention,
    _causal_attention,
    attention_implementation,
    leading_padding,
    roll_rows,
)

# Rows: all real; left padded; left padded with trailing padding (a prompt + short response);
# all padding (the filler row of a scoring micro-batch).
MASK = np.array(
    [[1] * 12, [0] * 5 + [1] * 7, [0] * 3 + [1] * 7 + [0] * 2, [0] * 12],
    dtype=bool,
)


def _flash(q, k, v, mask):
    shift = leading_padding(jnp.asarray(mask))
    out = _causal_attention(roll_rows(q, shift), roll_rows(k, shift), roll_rows(v, shift), "xla")
    return roll_rows(out, -shift)


def _reference(q, k, v, mask):
    t = mask.shape[1]
    visible = np.tril(np.ones((t, t), bool))[None] & mask[:, None, :]
    return _attention(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), jnp.asarray(visible), k.shape[2])


def _qkv(dtype):
    kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    b, t, n, k, h = 4, 12, 4, 2, 8
    q = (2.0 * jax.random.normal(kq, (b, t, n, h))).astype(dtype)
    return q, jax.random.normal(kk, (b, t, k, h)).astype(dtype), jax.random.normal(kv, (b, t, k, h)).astype(dtype)


def test_roll_rows_makes_left_padding_right_padding_and_back():
    x = np.arange(4 * 12).reshape(4, 12)
    shift = leading_padding(jnp.asarray(MASK))
    np.testing.assert_array_equal(np.asarray(shift), [0, 5, 3, 0])
    rolled = np.asarray(roll_rows(jnp.asarray(MASK), shift))
    lengths = MASK.sum(1)
    np.testing.assert_array_equal(rolled, np.arange(12)[None] < lengths[:, None])  # right padded
    np.testing.assert_array_equal(np.asarray(roll_rows(roll_rows(jnp.asarray(x), shift), -shift)), x)


# fp32: the same scores, masked entries exactly 0 after exp, sums in another order: ~1e-7.
# bf16: both round the probabilities and the output to bf16 (2^-8 relative): a few ulps.
@pytest.mark.parametrize("dtype,atol", [(jnp.float32, 2e-6), (jnp.bfloat16, 3e-2)])
def test_flash_path_matches_masked_reference(dtype, atol):
    q, k, v = _qkv(dtype)
    valid = MASK[:, :, None, None]
    out, ref = (np.asarray(f(q, k, v, MASK), np.float32) for f in (_flash, _reference))
    assert np.isfinite(out).all()  # padding queries too, and the all-padding row
    np.testing.assert_allclose(np.where(valid, out, 0), np.where(valid, ref, 0), atol=atol, rtol=0)

    # Gradients of a loss on the real positions only: equal, and finite everywhere.
    w = jax.random.normal(jax.random.key(1), q.shape, jnp.float32) * valid

    def loss(f, q, k, v):
        return jnp.sum(f(q, k, v, MASK).astype(jnp.float32) * w)

    g_out = jax.grad(lambda *a: loss(_flash, *a), argnums=(0, 1, 2))(q, k, v)
    g_ref = jax.grad(lambda *a: loss(_reference, *a), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(g_out, g_ref):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a, b, atol=atol * max(1.0, np.abs(b).max()), rtol=0)


def _tiny(dtype="float32"):
    config = ModelConfig(model_type="qwen3", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                         num_heads=4, num_kv_heads=2, head_dim=8, qk_norm=True, dtype=dtype)
    return config, init_params(config, jax.random.key(0), init_std=0.3)


def test_fully_padded_row_is_finite_and_changes_no_other_row():
    config, params = _tiny()
    tokens = jnp.asarray(np.random.default_rng(0).integers(3, 64, MASK.shape), jnp.int32)
    mask = jnp.asarray(MASK, jnp.int32)
    out = np.asarray(apply(params, tokens, mask, config=config))
    assert np.isfinite(out).all()
    alone = np.asarray(apply(params, tokens[:3], mask[:3], config=config))
    np.testing.assert_allclose(out[:3][MASK[:3]], alone[MASK[:3]], atol=1e-5)
    grads = jax.grad(lambda p: jnp.sum(apply(p, tokens, mask, config=config) * mask[..., None]))(params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_attention_choice():
    config, _ = _tiny("bfloat16")
    assert attention_implementation(config) == ("cudnn" if jax.default_backend() == "gpu" else "xla")
    assert attention_implementation(config.replace(attention="xla")) == "xla"
    assert attention_implementation(config.replace(attention="cudnn")) == "cudnn"
    assert attention_implementation(config.replace(dtype="float32")) == "xla"  # cuDNN flash has no fp32
    with pytest.raises(ConfigError, match="attention='cudnn' needs dtype"):
        config.replace(dtype="float32", attention="cudnn")
    with pytest.raises(ConfigError, match="attention='flash'"):
        config.replace(attention="flash")
