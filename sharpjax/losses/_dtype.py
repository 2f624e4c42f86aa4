"""The compute dtype of the losses: at least fp32."""

import jax
import jax.numpy as jnp


def compute_dtype(*xs) -> jnp.dtype:
    """fp32 for bf16/fp16/fp32 inputs, fp64 only for fp64 inputs with x64 enabled (tests).

    Canonicalized, so a NumPy float64 input without x64 gives fp32 (and no warning).
    """
    dtype = jnp.float32
    for x in xs:
        dtype = jnp.promote_types(dtype, jnp.result_type(x))
    return jax.dtypes.canonicalize_dtype(dtype)
