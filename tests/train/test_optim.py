"""optim.state_dtype: the default is plain optax AdamW bit for bit; bf16 halves mu's bytes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sharpjax.configs import base_config
from sharpjax.train.config import ConfigError, OptimConfig, RunConfig
from sharpjax.train.optim import make_optimizer, make_schedule


def _params():
    k1, k2 = jax.random.split(jax.random.key(0))
    return {"w": jax.random.normal(k1, (64, 32)), "b": jax.random.normal(k2, (32,))}


def _run(opt, params, steps=3):
    state = opt.init(params)
    for i in range(steps):
        grads = jax.tree.map(lambda p: jnp.sin(p * (i + 1)) * 1e-3, params)
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def _bytes(tree):
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def test_default_state_dtype_is_plain_adamw_bit_for_bit():
    cfg = OptimConfig(learning_rate=1e-3, warmup_steps=1)
    assert cfg.state_dtype == "float32"
    reference = optax.chain(
        optax.clip_by_global_norm(cfg.max_grad_norm),
        optax.adamw(make_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay),
    )
    got, ref = _run(make_optimizer(cfg), _params()), _run(reference, _params())
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bf16_state_halves_mu_and_keeps_nu_fp32():
    params = _params()
    f32 = make_optimizer(OptimConfig()).init(params)
    bf16 = make_optimizer(OptimConfig(state_dtype="bfloat16")).init(params)
    (adam32, adam16) = (optax.tree.get(s, "ScaleByAdamState") for s in (f32, bf16))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(adam16.mu))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(adam16.nu))
    assert 2 * _bytes(adam16.mu) == _bytes(adam32.mu) == _bytes(params)
    # moments: 8 bytes/param -> 6 bytes/param
    assert 4 * (_bytes(adam16.mu) + _bytes(adam16.nu)) == 3 * (_bytes(adam32.mu) + _bytes(adam32.nu))


def test_bf16_state_update_tracks_fp32():
    cfg = dict(learning_rate=1e-3, warmup_steps=1)
    (p32, _), (p16, s16) = (_run(make_optimizer(OptimConfig(**cfg, state_dtype=d)), _params())
                            for d in ("float32", "bfloat16"))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(optax.tree.get(s16, "ScaleByAdamState").mu))
    start = _params()
    for a, b, p0 in zip(jax.tree.leaves(p16), jax.tree.leaves(p32), jax.tree.leaves(start), strict=True):
        # The update (|step| <= lr per step, 3 steps) agrees to bf16's resolution of mu (2^-8 relative).
        np.testing.assert_allclose(np.asarray(a - p0), np.asarray(b - p0), atol=3e-3 * 2**-7, rtol=2**-7)


def test_bf16_nu_would_stall_which_is_why_it_stays_fp32():
    # The EMA step of nu with b2 = 0.999 is lost to bf16 rounding when g^2 ~ nu.
    nu = jnp.asarray(1.0, jnp.bfloat16)
    g2 = jnp.asarray(2.0, jnp.float32)
    assert (0.999 * nu.astype(jnp.float32) + 0.001 * g2).astype(jnp.bfloat16) == nu


def test_state_dtype_is_validated_and_configurable():
    with pytest.raises(ConfigError, match="config.optim.state_dtype"):
        OptimConfig(state_dtype="float16")
    d = base_config()
    d.optim.state_dtype = "bfloat16"
    assert RunConfig.from_config_dict(d).optim.state_dtype == "bfloat16"
