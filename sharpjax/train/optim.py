"""The optimizer of the RL runs: AdamW with a linear warmup, then constant or cosine (optax).

`OptimConfig` (the settings) lives in `sharpjax.train.config` so parsing a config needs no optax.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from sharpjax.train.config import OptimConfig

__all__ = ["make_optimizer", "make_schedule"]


def make_schedule(config: OptimConfig) -> optax.Schedule:
    lr = config.learning_rate
    warmup = optax.linear_schedule(config.warmup_init_fraction * lr, lr, max(config.warmup_steps, 1))
    if config.schedule == "constant":
        after = optax.constant_schedule(lr)
    else:
        after = optax.cosine_decay_schedule(lr, max(config.total_steps - config.warmup_steps, 1))
    return optax.join_schedules([warmup, after], [config.warmup_steps])


def make_optimizer(config: OptimConfig) -> optax.GradientTransformation:
    # Only mu follows state_dtype: nu's EMA step (1 - b2 = 1e-3) is below bf16's resolution.
    mu_dtype = jnp.bfloat16 if config.state_dtype == "bfloat16" else None
    adamw = optax.adamw(
        make_schedule(config), b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=config.weight_decay,
        mu_dtype=mu_dtype,
    )
    if config.max_grad_norm > 0:
        return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), adamw)
    return adamw
