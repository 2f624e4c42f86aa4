# Copyright 2023 The JAX Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     https://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""The length-aware decode attention kernel (Pallas, Triton on NVIDIA GPUs).

Vendored from JAX (`jax/experimental/pallas/ops/gpu/decode_attention.py`, jax 0.12.0.1, the
kernel and `mqa` only; Apache-2.0, notice above): JAX deprecated that module in 0.11 and names
no successor, so sharpjax keeps its own copy and its tests pin it (interpreter-mode exactness
against dense attention on every supported JAX). Changes from upstream: 4-space indentation,
this docstring, and one option, `split_partials` (marked "sharpjax" below): return each K
split's partial flash-attention state (o, l, m) unreduced, for the caller's own combine
(`transformer._combine_partials`: one fused combine over every split of several calls); the
kernel is untouched. Each query row reads only the key blocks of [start_idx, kv_seq_len),
which is what makes a decode step's cost follow the filled length.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu


def attn_forward_kernel(
        # inputs
        q_ref,           # [num_heads, head_dim]
        k_ref,           # [k_seq_len, head_dim]
        v_ref,           # [k_seq_len, head_dim]
        start_idx_ref,   # [] (i.e., scalar)
        kv_seq_len_ref,  # [] (i.e., scalar)
        # outputs
        o_ref: Any,      # [num_heads, head_dim]
        *residual_refs: Any,  # Residual outputs: [num_heads,], [num_heads,]
        sm_scale: float,
        block_k: int,
        block_h: int,
        num_heads: int,
):
    _, head_dim = q_ref.shape
    split_k_seq_len, _ = k_ref.shape
    prog_i, prog_j = pl.program_id(0), pl.program_id(1)
    q_slice = pl.ds(0, block_h)
    q_mask = (jnp.arange(block_h) < num_heads - block_h * prog_i)[:, None]

    def _compute(start_idx, kv_seq_len, o, m_i, l_i):
        # Load q: it will stay in L1 throughout. Indices form a matrix because we
        # read, compute, and write all in 2d chunks. 1 element ~= 1 CUDA thread index.
        # q tile has shape [block_h, head_dim].
        q = plgpu.load(q_ref.at[q_slice, :], mask=q_mask)

        def _dot(a, b):
            # if a.shape[0] == 1:
            #   # Use matrix vector product
            #   return (a.T * b).sum(axis=0, keepdims=True)
            return plgpu.dot(a, b)

        mask_indices = jnp.arange(block_k)

        # Loop over blocks of kv to process entire kv seq_len.
        # Grid loops over q blocks over num_heads.
        def body(start_k, carry):
            o_prev, m_prev, l_prev = carry
            curr_k_slice = pl.ds(start_k * block_k, block_k)

            k = k_ref[curr_k_slice, :]
            qk = _dot(q, k.T)  # [block_h, block_k]
            if sm_scale != 1.0:
                qk *= sm_scale  # [block_h, block_k]

            # apply mask if start or sequence length is specified
            if start_idx_ref is not None or kv_seq_len_ref is not None:
                indices = (prog_j * split_k_seq_len + start_k * block_k + mask_indices)
                mask = ((indices >= start_idx) & (indices < kv_seq_len))[None, :]
                qk += (~mask) * (0.7 * jnp.finfo(qk.dtype).min)

            m_curr = qk.max(axis=-1)
            m_next = jnp.maximum(m_prev, m_curr)
            correction = jnp.exp(m_prev - m_next)
            l_prev_corr = correction * l_prev
            s_curr = jnp.exp(
                    qk - m_next[:, None]
            )  # Use m_next instead of m_curr to avoid a correction on l_curr
            l_curr = s_curr.sum(axis=-1)
            l_next = l_prev_corr + l_curr
            v = v_ref[curr_k_slice, :]
            o_curr = _dot(s_curr.astype(v.dtype), v)

            # flash2 unscaled_o
            o_next = correction[:, None] * o_prev + o_curr
            return o_next, m_next, l_next

        max_it = jnp.minimum(pl.cdiv((kv_seq_len - prog_j * split_k_seq_len),
                                                                  block_k), split_k_seq_len // block_k)
        (o, m_i, l_i) = lax.fori_loop(0, max_it, body, (o, m_i, l_i))
        return o, m_i, l_i

    # o is the buffer where we accumulate the output on sram.
    # m_i and l_i (see FlashAttention2 paper) are updated during the k,v loop.
    m_i = jnp.zeros(block_h, dtype=jnp.float32) + jnp.finfo(jnp.float32).min
    l_i = jnp.zeros(block_h, dtype=jnp.float32)
    o = jnp.zeros((block_h, head_dim), dtype=jnp.float32)

    start_idx = split_k_seq_len * prog_j
    if start_idx_ref is not None:
        start_idx = jnp.maximum(start_idx, start_idx_ref[()])
    kv_seq_len = (prog_j + 1) * split_k_seq_len  # lower bound on actual k_seq_len
    if kv_seq_len_ref is not None:
        kv_seq_len = jnp.minimum(kv_seq_len, kv_seq_len_ref[()])

    if start_idx_ref is None and kv_seq_len is None:
        o, m_i, l_i = _compute(start_idx, kv_seq_len, o, m_i, l_i)
    else:
        o, m_i, l_i = jax.lax.cond(
            start_idx >= kv_seq_len, lambda: (o, m_i, l_i),
            lambda: _compute(start_idx, kv_seq_len, o, m_i, l_i))

    # Write output to dram.
    if residual_refs:
        l_ref, m_ref = residual_refs
        vec_q_mask = q_mask.reshape(-1) if q_mask is not None else None
        plgpu.store(l_ref.at[q_slice], l_i, mask=vec_q_mask)
        plgpu.store(m_ref.at[q_slice], m_i, mask=vec_q_mask)
    o = o.astype(o_ref.dtype)
    plgpu.store(o_ref.at[q_slice, :], o, mask=q_mask)


def decode_attn_unbatched(
        q,           # [num_heads, head_dim]
        k,           # [k_seq_len, head_dim]
        v,           # [k_seq_len, head_dim]
        start_idx,   # []
        kv_seq_len,  # []
        sm_scale: float,
        block_h: int,
        block_k: int,
        k_splits: int,
        num_warps: int | None,
        num_stages: int,
        grid: tuple[int, ...] | None,
        interpret: bool,
        debug: bool,
        return_residuals: bool,
        normalize_output: bool,
        split_partials: bool = False,
):
    num_heads, head_dim = q.shape
    k_seq_len, _ = k.shape
    # Pad num query heads to 16 if needed, and slice output at the end.
    head_splits = pl.cdiv(num_heads, block_h)
    grid_ = grid
    if grid_ is None:
        grid_ = (head_splits, k_splits)

    assert (
            k_seq_len % k_splits == 0
    ), f"{k_seq_len=} must be divisible by {k_splits=}"
    assert k_seq_len // k_splits >= 16, (
        f"{k_seq_len=} divided by {k_splits=} must be >= 16.")
    assert block_k >= 16, "block_k must be >= 16"
    k = k.reshape(k_splits, k_seq_len // k_splits, head_dim)
    v = v.reshape(k_splits, k_seq_len // k_splits, head_dim)
    split_k_seq_len = k_seq_len // k_splits
    block_k = min(block_k, split_k_seq_len)
    assert split_k_seq_len % block_k == 0, (
        f"Sequence length ({k_seq_len=}) split by {k_splits=} must by divisible by"
        f" {block_k=}")
    num_warps_ = num_warps
    if num_warps_ is None:
        num_warps_ = 4
    kernel = functools.partial(
            attn_forward_kernel,
            sm_scale=sm_scale,
            block_k=block_k,
            block_h=block_h,
            num_heads=num_heads,
    )

    o, l, m = pl.pallas_call(  # noqa: E741 - upstream's names (flash attention's o, l, m)
        kernel,
        grid=grid_,
        in_specs=[
            pl.BlockSpec((block_h, head_dim), lambda i, j: (i, 0)),
            pl.BlockSpec((None, split_k_seq_len, head_dim), lambda i, j: (j, 0, 0)),
            pl.BlockSpec((None, split_k_seq_len, head_dim), lambda i, j: (j, 0, 0)),
        ]
        + [None if start_idx is None else pl.BlockSpec((), lambda i, j: ())]
        + [None if kv_seq_len is None else pl.BlockSpec((), lambda i, j: ())],
        out_specs=[
            pl.BlockSpec((None, block_h, head_dim), lambda i, j: (j, i, 0)),  # o
            pl.BlockSpec((None, block_h), lambda i, j: (j, i)),  # l
            pl.BlockSpec((None, block_h), lambda i, j: (j, i)),  # m
        ],
        compiler_params=plgpu.CompilerParams(
            num_warps=num_warps_, num_stages=num_stages
        ),
        out_shape=[
            jax.ShapeDtypeStruct(shape=(k_splits, *q.shape), dtype=q.dtype),  # o
            jax.ShapeDtypeStruct(
                shape=(k_splits, num_heads), dtype=jnp.float32
            ),  # l
            jax.ShapeDtypeStruct(
                shape=(k_splits, num_heads), dtype=jnp.float32
            ),  # m
        ],
        debug=debug,
        interpret=interpret,
        name="mha_forward",
    )(q, k, v, start_idx, kv_seq_len)
    if split_partials:  # sharpjax: each split's (o unnormalised in q.dtype, l, m), no combine
        return o, l, m

    # final round of flash
    m_next = m.max(axis=0)
    # TODO(b/389925439): This barrier is necessary to prevent NaNs/invalid
    # values appearing after JIT compilation.
    m_next = lax.optimization_barrier(m_next)
    correction = jnp.exp(m - m_next[None])
    o = o * correction[:, :, None].astype(o.dtype)
    l_next = (l * correction).sum(axis=0)
    eps = jnp.finfo(l_next.dtype).eps
    o = o.sum(axis=0)
    if normalize_output:
        o /= (l_next[:, None].astype(o.dtype) + eps)
    if return_residuals:
        return o, (l_next, m_next)
    else:
        return o


@functools.partial(
        jax.jit,
        static_argnames=[
                "sm_scale",
                "block_h",
                "block_k",
                "k_splits",
                "num_warps",
                "num_stages",
                "grid",
                "interpret",
                "debug",
                "return_residuals",
                "normalize_output",
                "split_partials",
        ],
)
def mqa(
        q,                # [batch_size, num_heads, head_dim]
        k,                # [batch_size, k_seq_len, head_dim]
        v,                # [batch_size, k_seq_len, head_dim]
        start_idx=None,   # [batch_size]
        kv_seq_len=None,  # [batch_size]
        sm_scale: float | None = None,
        block_h: int = 16,
        block_k: int = 256,
        k_splits: int = 16,
        num_warps: int | None = None,
        num_stages: int = 2,
        grid: tuple[int, ...] | None = None,
        interpret: bool = False,
        debug: bool = False,
        return_residuals: bool = False,
        normalize_output: bool = True,
        split_partials: bool = False,
):
    """Decode attention of each batch row's queries over its keys [start_idx, kv_seq_len).

    Returns [batch, num_heads, head_dim] (and the residuals (l, m) if `return_residuals`), or with
    `split_partials` (sharpjax) the kernel's per-split state before upstream's combine: o
    [batch, k_splits, num_heads, head_dim] unnormalised (sum_s e^(score_s - m) v_s, stored in
    q.dtype), l and m [batch, k_splits, num_heads] fp32; a split with no visible slot has l = 0,
    o = 0 and m = fp32 min.
    """
    sm_scale = sm_scale if sm_scale is not None else (1 / math.sqrt(q.shape[-1]))
    bs = q.shape[0]
    if start_idx is not None:
        start_idx = jnp.broadcast_to(start_idx, (bs,))
    if kv_seq_len is not None:
        kv_seq_len = jnp.broadcast_to(kv_seq_len, (bs,))
    inner = functools.partial(
            decode_attn_unbatched,
            sm_scale=sm_scale,
            block_h=block_h,
            block_k=block_k,
            k_splits=k_splits,
            num_warps=num_warps,
            num_stages=num_stages,
            grid=grid,
            interpret=interpret,
            debug=debug,
            return_residuals=return_residuals,
            normalize_output=normalize_output,
            split_partials=split_partials,
    )
    return jax.vmap(inner)(q, k, v, start_idx, kv_seq_len)
