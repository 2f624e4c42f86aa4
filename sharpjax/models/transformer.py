"""The decoder-only transformer (Llama 3.x / Qwen2.5 / Qwen3) as pure functions over a pytree.

Params are a nested dict of arrays with the per-layer weights stacked on a leading `layers`
axis, so the layer stack is one `jax.lax.scan` (one compiled layer, fast compiles at 36
layers). The KV cache is an explicit argument and return value.

Shape letters: B batch, T tokens in this call, S cache slots, D model, N query heads, K kv
heads, G = N // K, H head dim, F mlp, V vocab, L layers.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from sharpjax.models.config import ModelConfig
from sharpjax.models.partitioning import constrain

Params = dict[str, Any]

# Finite, so that a query with no visible key (a left-padding position) gets a uniform
# softmax instead of NaNs that would poison gradients through `where`.
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@flax.struct.dataclass
class KVCache:
    """Keys and values of every layer, preallocated for S slots.

    Attributes:
      k: L arrays [B, K, S, H], keys already rotated. One buffer per layer, so a decode step
        writes its new key in place and attention reads the layer's buffer as is (a stacked
        [L, ...] cache threaded through a layer scan made XLA copy the whole cache every
        step). Heads before slots: attention batches over (B, K) and contracts over H.
      v: L arrays [B, K, S, H], values.
      index: int32 scalar, the number of filled slots (the next write position).
    """

    k: tuple[Float[Array, "B K S H"], ...]
    v: tuple[Float[Array, "B K S H"], ...]
    index: Int[Array, ""]

    @classmethod
    def init(cls, config: ModelConfig, batch_size: int, num_slots: int, dtype=None) -> KVCache:
        shape = (batch_size, config.num_kv_heads, num_slots, config.head_dim)
        dtype = dtype or config.jnp_dtype
        zeros = lambda: tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))  # noqa: E731
        return cls(k=zeros(), v=zeros(), index=jnp.zeros((), jnp.int32))

    def repeat_rows(self, n: int) -> KVCache:
        """Each batch row repeated n times (the samples of a prompt share its prefill)."""
        rep = lambda xs: tuple(jnp.repeat(x, n, axis=0) for x in xs)  # noqa: E731
        return KVCache(k=rep(self.k), v=rep(self.v), index=self.index)


def param_logical_axes(config: ModelConfig) -> Params:
    """Logical axis names for every parameter: the one place model code names its layout.

    The sharding rules (`sharpjax.parallel`) map these names to mesh axes.
    """
    layers: dict[str, tuple[str, ...]] = {
        "attn_norm": ("layers", "norm"),
        "q": ("layers", "embed", "heads", "head_dim"),
        "k": ("layers", "embed", "kv_heads", "head_dim"),
        "v": ("layers", "embed", "kv_heads", "head_dim"),
        "o": ("layers", "heads", "head_dim", "embed"),
        "mlp_norm": ("layers", "norm"),
        "gate": ("layers", "embed", "mlp"),
        "up": ("layers", "embed", "mlp"),
        "down": ("layers", "mlp", "embed"),
    }
    if config.qkv_bias:
        layers |= {
            "q_bias": ("layers", "heads", "head_dim"),
            "k_bias": ("layers", "kv_heads", "head_dim"),
            "v_bias": ("layers", "kv_heads", "head_dim"),
        }
    if config.o_bias:
        layers["o_bias"] = ("layers", "norm")
    if config.mlp_bias:
        layers |= {"gate_bias": ("layers", "mlp"), "up_bias": ("layers", "mlp"), "down_bias": ("layers", "norm")}
    if config.qk_norm:
        layers |= {"q_norm": ("layers", "head_dim"), "k_norm": ("layers", "head_dim")}
    axes: Params = {"embed": ("vocab", "embed"), "layers": layers, "final_norm": ("norm",)}
    if not config.tie_word_embeddings:
        axes["lm_head"] = ("embed", "vocab")
    return axes


def param_shapes(config: ModelConfig) -> Params:
    """The shape of every parameter, in the structure of `param_logical_axes`."""
    sizes = {
        "layers": config.num_layers,
        "embed": config.hidden_size,
        "norm": config.hidden_size,
        "heads": config.num_heads,
        "kv_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "mlp": config.intermediate_size,
        "vocab": config.vocab_size,
    }
    return jax.tree.map(
        lambda axes: tuple(sizes[a] for a in axes),
        param_logical_axes(config),
        is_leaf=lambda x: isinstance(x, tuple),
    )


def init_params(config: ModelConfig, key: jax.Array, *, init_std: float = 0.02) -> Params:
    """Random params: N(0, init_std) matrices, unit norms, zero biases (HF's init)."""
    shapes = param_shapes(config)
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree.flatten_with_path(shapes, is_leaf=lambda x: isinstance(x, tuple))[0]]
    keys = jax.random.split(key, len(leaves))
    out = []
    for path, shape, k in zip(paths, leaves, keys):
        if "norm" in path:
            out.append(jnp.ones(shape, config.jnp_dtype))
        elif "bias" in path:
            out.append(jnp.zeros(shape, config.jnp_dtype))
        else:
            out.append((init_std * jax.random.normal(k, shape, jnp.float32)).astype(config.jnp_dtype))
    return jax.tree.unflatten(treedef, out)


def rms_norm(x: Float[Array, "... D"], weight: Float[Array, " D"], eps: float) -> Float[Array, "... D"]:
    """RMSNorm computed in fp32 and cast back, as in HF Llama/Qwen."""
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
    return weight * x32.astype(x.dtype)


def rope_inverse_frequencies(config: ModelConfig) -> Float[Array, " H2"]:
    """Inverse RoPE frequencies [H/2], including Llama 3 frequency-dependent scaling."""
    rope, dim = config.rope, config.head_dim
    inv_freq = 1.0 / (rope.theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    if rope.kind == "llama3":
        old_len = rope.original_max_position_embeddings
        low_wavelen = old_len / rope.low_freq_factor
        high_wavelen = old_len / rope.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = jnp.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
        smooth = (old_len / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
        smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
        is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv_freq = jnp.where(is_medium, smoothed, scaled)
    return inv_freq


def apply_rope(
    x_BTnH: Float[Array, "B T n H"], positions_BT: Int[Array, "B T"], inv_freq: Float[Array, " H2"]
) -> Float[Array, "B T n H"]:
    """Rotates the two halves of each head (HF's `rotate_half` convention)."""
    freqs_BTh = positions_BT[..., None].astype(jnp.float32) * inv_freq
    emb = jnp.concatenate([freqs_BTh, freqs_BTh], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(emb).astype(x_BTnH.dtype), jnp.sin(emb).astype(x_BTnH.dtype)
    half = x_BTnH.shape[-1] // 2
    rotated = jnp.concatenate([-x_BTnH[..., half:], x_BTnH[..., :half]], axis=-1)
    return x_BTnH * cos + rotated * sin


def _attention(
    q_BTNH, k_BKSH, v_BKSH, visible_BTS: Bool[Array, "B T S"], num_kv_heads: int
) -> Float[Array, "B T N H"]:
    """Attention under an explicit [B, T, S] mask with fp32 scores: the decode step's path
    (one query against the cache) and the reference the flash path is tested against."""
    b, t, n, h = q_BTNH.shape
    q_BKGTH = q_BTNH.reshape(b, t, num_kv_heads, n // num_kv_heads, h).transpose(0, 2, 3, 1, 4)
    scores_BKGTS = jnp.einsum("bkgth,bksh->bkgts", q_BKGTH, k_BKSH, preferred_element_type=jnp.float32)
    scores_BKGTS = scores_BKGTS / math.sqrt(h)
    scores_BKGTS = jnp.where(visible_BTS[:, None, None], scores_BKGTS, _MASK_VALUE)
    probs_BKGTS = jax.nn.softmax(scores_BKGTS, axis=-1).astype(v_BKSH.dtype)
    out_BKGTH = jnp.einsum("bkgts,bksh->bkgth", probs_BKGTS, v_BKSH)
    return out_BKGTH.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


def leading_padding(mask_BT: Bool[Array, "B T"]) -> Int[Array, " B"]:
    """Padding slots before each row's first real token (0 for a row with none)."""
    return jnp.argmax(mask_BT, axis=1).astype(jnp.int32)


def roll_rows(x_BT: Array, shift_B: Int[Array, " B"]) -> Array:
    """Rotates each row left by its shift along axis 1: out[b, t] = x[b, (t + shift[b]) % T].

    With shift = `leading_padding(mask)`, a left-padded row [pad, real, (pad)] becomes right
    padded [real, pad]; `roll_rows(x, -shift)` undoes it.
    """
    t = x_BT.shape[1]
    index_BT = (jnp.arange(t, dtype=jnp.int32)[None, :] + shift_B[:, None]) % t
    index = index_BT.reshape(index_BT.shape + (1,) * (x_BT.ndim - 2))
    return jnp.take_along_axis(x_BT, index, axis=1)


def attention_implementation(config: ModelConfig) -> str:
    """What `config.attention` resolves to when tracing: "cudnn" or "xla".

    "auto" picks cuDNN's fused flash attention when tracing for an NVIDIA GPU and the
    dtype/head size is one it supports (bf16/fp16, head_dim a multiple of 8 up to 128), and
    XLA's implementation otherwise. (jax's own `implementation=None` always means XLA, which
    materialises the fp32 scores.) AOT compiles for a GPU from a CPU host must ask for "cudnn"
    explicitly: tracing there sees the CPU backend.
    """
    if config.attention != "auto":
        return config.attention
    from jax.extend.backend import get_backend

    on_cuda = jax.default_backend() == "gpu" and "cuda" in get_backend().platform_version.lower()
    supported = config.jnp_dtype in (jnp.bfloat16, jnp.float16) and config.head_dim % 8 == 0 and config.head_dim <= 128
    return "cudnn" if on_cuda and supported else "xla"


def _causal_attention(
    q_BTNH: Float[Array, "B T N H"],
    k_BTKH: Float[Array, "B T K H"],
    v_BTKH: Float[Array, "B T K H"],
    implementation: str,
) -> Float[Array, "B T N H"]:
    """Causal (GQA) attention over right-padded rows through `jax.nn.dot_product_attention`.

    Right padding makes the causal mask exact: a real query sees only the real keys before
    it. Padding queries see real keys and padding keys (finite values), so no row, even an
    all-padding one, has a query with nothing to attend to: no NaN in either pass. Their
    outputs are meaningless and never reach a real position.
    """
    return jax.nn.dot_product_attention(q_BTNH, k_BTKH, v_BTKH, is_causal=True, implementation=implementation)


def _project_qkv(config: ModelConfig, inv_freq, x_BTD, p, positions_BT):
    """The block's attention inputs: pre-norm, q/k/v projections (+ biases, q/k norms), RoPE."""
    h_BTD = rms_norm(x_BTD, p["attn_norm"], config.rms_norm_eps)
    q_BTNH = jnp.einsum("btd,dnh->btnh", h_BTD, p["q"])
    k_BTKH = jnp.einsum("btd,dkh->btkh", h_BTD, p["k"])
    v_BTKH = jnp.einsum("btd,dkh->btkh", h_BTD, p["v"])
    if config.qkv_bias:
        q_BTNH, k_BTKH, v_BTKH = q_BTNH + p["q_bias"], k_BTKH + p["k_bias"], v_BTKH + p["v_bias"]
    if config.qk_norm:
        q_BTNH = rms_norm(q_BTNH, p["q_norm"], config.rms_norm_eps)
        k_BTKH = rms_norm(k_BTKH, p["k_norm"], config.rms_norm_eps)
    q_BTNH, k_BTKH = apply_rope(q_BTNH, positions_BT, inv_freq), apply_rope(k_BTKH, positions_BT, inv_freq)
    # Pinned, not left to propagation: cuDNN's attention partitioner needs q, k and v sharded
    # alike, and under FSDP propagation gives q and k the rows' sharding of the RoPE positions
    # but can leave v (no RoPE) batch-replicated. Rows over the data axes, heads over tensor.
    q_BTNH = constrain(q_BTNH, ("batch", "seq", "heads", "head_dim"))
    k_BTKH = constrain(k_BTKH, ("batch", "seq", "kv_heads", "head_dim"))
    v_BTKH = constrain(v_BTKH, ("batch", "seq", "kv_heads", "head_dim"))
    return q_BTNH, k_BTKH, v_BTKH


def _output_and_mlp(config: ModelConfig, x_BTD, attn_BTNH, p):
    """The rest of the block after attention: output projection + residual, then the SwiGLU MLP + residual."""
    attn_BTD = jnp.einsum("btnh,nhd->btd", attn_BTNH, p["o"])
    if config.o_bias:
        attn_BTD = attn_BTD + p["o_bias"]
    x_BTD = x_BTD + attn_BTD

    h_BTD = rms_norm(x_BTD, p["mlp_norm"], config.rms_norm_eps)
    gate_BTF = jnp.einsum("btd,df->btf", h_BTD, p["gate"])
    up_BTF = jnp.einsum("btd,df->btf", h_BTD, p["up"])
    if config.mlp_bias:
        gate_BTF, up_BTF = gate_BTF + p["gate_bias"], up_BTF + p["up_bias"]
    mlp_BTD = jnp.einsum("btf,fd->btd", jax.nn.silu(gate_BTF) * up_BTF, p["down"])
    if config.mlp_bias:
        mlp_BTD = mlp_BTD + p["down_bias"]
    return x_BTD + mlp_BTD


def _layer(config: ModelConfig, inv_freq, x_BTD, p, positions_BT, visible_BTS, kv):
    """One pre-norm block.

    Without a cache `kv` and `visible_BTS` are None: the rows are right padded (see
    `roll_rows`), attention is causal, and it returns this block's new (k [B, T, K, H], v).
    With one, `kv` is (this layer's k cache [B, K, S, H], v cache, write slot) and
    `visible_BTS` is [B, T, S] over the cache slots; it returns the updated (k, v) buffers.
    """
    q_BTNH, k_BTKH, v_BTKH = _project_qkv(config, inv_freq, x_BTD, p, positions_BT)
    k_BKTH, v_BKTH = k_BTKH.transpose(0, 2, 1, 3), v_BTKH.transpose(0, 2, 1, 3)
    if kv is None:
        attn_BTNH = _causal_attention(q_BTNH, k_BTKH, v_BTKH, attention_implementation(config))
        new_kv = (k_BTKH, v_BTKH)
    else:
        # Write first, then attend over the whole (updated) buffer: the write is in place and
        # every read comes after it, so XLA needs no copy of the cache.
        k_cache_BKSH, v_cache_BKSH, start = kv
        k_cache_BKSH = jax.lax.dynamic_update_slice(k_cache_BKSH, k_BKTH.astype(k_cache_BKSH.dtype), (0, 0, start, 0))
        v_cache_BKSH = jax.lax.dynamic_update_slice(v_cache_BKSH, v_BKTH.astype(v_cache_BKSH.dtype), (0, 0, start, 0))
        attn_BTNH = _attention(q_BTNH, k_cache_BKSH, v_cache_BKSH, visible_BTS, config.num_kv_heads)
        new_kv = (k_cache_BKSH, v_cache_BKSH)
    return _output_and_mlp(config, x_BTD, attn_BTNH, p), new_kv


def forward(
    params: Params,
    tokens_BT: Int[Array, "B T"],
    *,
    config: ModelConfig,
    positions_BT: Int[Array, "B T"],
    key_mask_BS: Bool[Array, "B S"],
    cache: KVCache | None = None,
    remat: str = "none",
) -> tuple[Float[Array, "B T D"], KVCache | None]:
    """Runs the transformer to the final norm (call `logits` for the vocabulary projection).

    Args:
      params: the param pytree (`init_params` / `sharpjax.models.hf.load_params`).
      tokens_BT: token ids; padding ids are arbitrary (masked through `key_mask_BS`).
      config: the architecture (static).
      positions_BT: RoPE positions; for a left-padded row, `cumsum(mask) - 1`.
      key_mask_BS: which key slots hold real tokens. Without a cache S == T; with a cache
        S is the number of cache slots and the mask covers every slot (future slots may be
        True: causality is applied separately from slot order). The real tokens of a row
        must be one contiguous run (left padding, then tokens, then right padding): what
        every caller builds.
      cache: optional KV cache; the T new keys/values are written at slots
        [cache.index, cache.index + T) and the returned cache has index advanced by T. A
        call with T > 1 is a prefill and must start from an empty cache (index 0): its
        queries attend to its own T tokens only. T == 1 is a decode step.
      remat: "none", "full" or "dots": what `jax.checkpoint` saves per layer.

    Returns:
      (hidden_BTD after the final norm, the updated cache or None).
    """
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat={remat!r}; expected one of {sorted(REMAT_POLICIES)}.")
    b, t = tokens_BT.shape
    if cache is None or t > 1:
        return _forward_causal(params, tokens_BT, config, positions_BT, key_mask_BS[:, :t], cache, remat)
    inv_freq = rope_inverse_frequencies(config)
    x_BTD = jnp.take(params["embed"], tokens_BT, axis=0)
    layer_ids = jnp.arange(config.num_layers, dtype=jnp.int32)
    start = jnp.zeros((), jnp.int32) if cache is None else cache.index
    query_slot_T = start + jnp.arange(t, dtype=jnp.int32)
    slot_S = jnp.arange(key_mask_BS.shape[1], dtype=jnp.int32)
    visible_BTS = (slot_S[None, :] <= query_slot_T[:, None])[None] & key_mask_BS[:, None, :]

    def body(x, layer_inputs):
        if cache is None:
            p, _ = layer_inputs
            kv = None
        else:
            p, _, k_cache, v_cache = layer_inputs
            kv = (k_cache, v_cache, start)
        return _layer(config, inv_freq, x, p, positions_BT, visible_BTS, kv)

    if remat != "none":
        body = jax.checkpoint(body, policy=REMAT_POLICIES[remat])
    if cache is None:
        x_BTD, _ = jax.lax.scan(body, x_BTD, (params["layers"], layer_ids))
        new_cache = None
    else:
        # Unrolled over layers: each layer's cache buffer is read by attention and updated in
        # place with the new keys/values (a scan would thread, and copy, the whole cache).
        new_k, new_v = [], []
        for i in range(config.num_layers):
            p_i = jax.tree.map(lambda w: w[i], params["layers"])
            x_BTD, (k_i, v_i) = body(x_BTD, (p_i, i, cache.k[i], cache.v[i]))
            new_k.append(k_i)
            new_v.append(v_i)
        new_cache = KVCache(k=tuple(new_k), v=tuple(new_v), index=start + t)
    hidden_BTD = rms_norm(x_BTD, params["final_norm"], config.rms_norm_eps)
    return hidden_BTD, new_cache


def _forward_causal(params, tokens_BT, config, positions_BT, mask_BT, cache, remat):
    """Training, scoring and prefill: T tokens attending causally to each other.

    Each row is rotated so that its padding is on the right (`roll_rows`): the padding mask
    is then implied by the causal one, which is the form cuDNN's flash attention takes
    without materialising a [B, N, T, T] mask or fp32 scores. Everything but attention is
    per position, so only the tokens, positions and final hidden states (and a prefill's
    keys/values) are rotated, once per call.
    """
    inv_freq = rope_inverse_frequencies(config)
    shift_B = leading_padding(mask_BT)
    x_BTD = jnp.take(params["embed"], roll_rows(tokens_BT, shift_B), axis=0)
    positions_BT = roll_rows(positions_BT, shift_B)
    collect_kv = cache is not None

    def body(x, p):
        x, kv = _layer(config, inv_freq, x, p, positions_BT, None, None)
        return x, (kv if collect_kv else None)

    if remat != "none":
        body = jax.checkpoint(body, policy=REMAT_POLICIES[remat])
    x_BTD, kv_L = jax.lax.scan(body, x_BTD, params["layers"])
    hidden_BTD = rms_norm(roll_rows(x_BTD, -shift_B), params["final_norm"], config.rms_norm_eps)
    if cache is None:
        return hidden_BTD, None
    t = tokens_BT.shape[1]
    start = cache.index

    def write(buffers, new_LBTKH):
        new_LBKTH = jax.vmap(lambda x: roll_rows(x, -shift_B))(new_LBTKH).transpose(0, 1, 3, 2, 4)
        return tuple(
            jax.lax.dynamic_update_slice(buf, new_LBKTH[i].astype(buf.dtype), (0, 0, start, 0))
            for i, buf in enumerate(buffers)
        )

    return hidden_BTD, KVCache(k=write(cache.k, kv_L[0]), v=write(cache.v, kv_L[1]), index=start + t)


def logits(params: Params, hidden_BTD: Float[Array, "B T D"], *, dtype=jnp.float32) -> Float[Array, "B T V"]:
    """Projects hidden states to vocabulary logits, accumulated and returned in `dtype`."""
    if "lm_head" in params:
        return jnp.einsum("btd,dv->btv", hidden_BTD, params["lm_head"], preferred_element_type=dtype)
    return jnp.einsum("btd,vd->btv", hidden_BTD, params["embed"], preferred_element_type=dtype)


def positions_from_mask(mask_BT: Int[Array, "B T"]) -> Int[Array, "B T"]:
    """RoPE positions for a left-padded batch: 0 at each row's first real token."""
    return jnp.maximum(jnp.cumsum(mask_BT.astype(jnp.int32), axis=-1) - 1, 0)


def apply(params: Params, tokens_BT, mask_BT, *, config: ModelConfig, remat: str = "none") -> Float[Array, "B T V"]:
    """Convenience full forward without a cache: fp32 logits for a (left-)padded batch."""
    positions_BT = positions_from_mask(mask_BT)
    hidden_BTD, _ = forward(
        params, tokens_BT, config=config, positions_BT=positions_BT, key_mask_BS=mask_BT.astype(bool), remat=remat
    )
    return logits(params, hidden_BTD)


# ---- decode (one token per row against a KV cache) -------------------------------------


def unstack_layers(params: Params, num_layers: int) -> tuple[Params, ...]:
    """The stacked [L, ...] layer weights as L per-layer pytrees.

    Call it once outside a decode loop and pass the result to `decode_step`: slicing w[i]
    inside a `while_loop` body is loop-invariant, but XLA does not hoist a lone slice, so
    every step would copy the whole layer stack (on the 3B shape, ~6 GB written and read
    again per token). Costs one copy of the layer weights for the lifetime of the loop.
    """
    return tuple(jax.tree.map(lambda w, i=i: w[i], params["layers"]) for i in range(num_layers))


DECODE_ATTENTION = ("xla", "auto", "pallas_interpret")


def _pallas_decode_blocks(num_slots: int) -> tuple[int, int] | None:
    """(block_k, k_splits) for the Pallas decode kernel over S slots, or None if S does not fit.

    Triton blocks are powers of two >= 16 and must tile S. A few splits per row are enough:
    the grid already has B * K rows; blocks past a row's length are skipped, not read.
    """
    block_k = next((b for b in (64, 32, 16) if num_slots % b == 0), None)
    if block_k is None:
        return None
    blocks = num_slots // block_k
    return block_k, max(d for d in range(1, 9) if blocks % d == 0)


def _row_ends(num_filled, live_B, rows: int) -> Int[Array, " B"]:
    """Each row's end slot for the length-aware kernel: `num_filled`, or 0 where `live_B` is
    False. The kernel skips every block of a row whose end is at or before its start, and its
    output for such a row is exactly 0, no NaN: `mqa` divides by l + eps, and with
    `split_partials` gives every split l = 0, which `_combine_partials` turns into 0."""
    end_B = jnp.broadcast_to(jnp.asarray(num_filled, jnp.int32), (rows,))
    return end_B if live_B is None else jnp.where(live_B, end_B, 0)


def _pallas_decode_attention(q_B1NH, k_BKSH, v_BKSH, first_slot_B, num_filled, num_kv_heads, *, interpret,
                             live_B=None):
    """The Pallas GPU decode kernel: each (row, kv head) reads only slots [first, num_filled),
    and a row that is not `live_B` reads none (its output is 0). Its splits are combined by
    `_combine_partials` (one fused kernel, fp32), not by the vendored `mqa`'s own combine
    (3 kernels on the GPU target, o normalised in q's dtype)."""
    b, _, n, h = q_B1NH.shape
    part = _attention_part(q_B1NH.reshape(b, num_kv_heads, n // num_kv_heads, h), k_BKSH, v_BKSH, None,
                           first_slot_B, num_filled, impl="pallas_interpret" if interpret else "pallas", live_R=live_B)
    return _combine_partials(part, dtype=v_BKSH.dtype).reshape(b, 1, n, h)


def _decode_attention(q_B1NH, k_BKSH, v_BKSH, visible_B1S, num_kv_heads, *, first_slot_B, num_filled, impl,
                      live_B=None):
    """Attention of one new query per row over the cache: dense XLA, or length-aware Pallas.

    The XLA path attends over all S slots at every step (masking the unfilled ones), so a
    decode reads the whole cache each token, for every row. The Pallas kernel takes each
    row's first real slot and the filled length, and reads only those blocks: the same
    softmax over the same visible keys, accumulated blockwise (equal up to fp32 rounding);
    a row whose `live_B` is False reads no block at all and gets 0 (`decode_step`).
    """
    dense = lambda q, k, v: _attention(q, k, v, visible_B1S, num_kv_heads)  # noqa: E731
    # Several devices: the rows are sharded, and XLA cannot partition the kernel's custom
    # call, so it would all-gather every layer's cache at every step (seen in a compile for
    # 4 H100s). Until the kernel is wrapped in a shard_map over the row axes, stay dense.
    single_device = jax.device_count() == 1
    if impl == "xla" or _pallas_decode_blocks(k_BKSH.shape[2]) is None or (impl == "auto" and not single_device):
        return dense(q_B1NH, k_BKSH, v_BKSH)
    pallas = lambda q, k, v, interpret: _pallas_decode_attention(  # noqa: E731
        q, k, v, first_slot_B, num_filled, num_kv_heads, interpret=interpret, live_B=live_B
    )
    if impl == "pallas_interpret":
        return pallas(q_B1NH, k_BKSH, v_BKSH, True)
    # Chosen when lowering, so a CPU compile (tests) and a compile-only GPU target both get
    # the right one.
    return jax.lax.platform_dependent(
        q_B1NH, k_BKSH, v_BKSH, cuda=lambda q, k, v: pallas(q, k, v, False), default=dense
    )


def _attention_part(q_RKGH, k_RKSH, v_RKSH, visible_RS, start_R, num_filled, *, impl, live_R=None):
    """One part of a split attention as P flash-attention partials, one per split of its slots:
    (o = sum_s e^(s - m) v_s unnormalised, l = sum_s e^(s - m), m = max_s s) over each split's
    visible slots, for `_combine_partials` to reduce.

    R rows, each with its own keys; every one of the G queries of a (row, kv head) sees the
    same visible slots. "xla" scores all S slots under `visible_RS`, as one split (P = 1, o in
    fp32); "pallas" and "pallas_interpret" run the length-aware kernel over slots
    [start_R, num_filled) (which must be what `visible_RS` says), P = its k_splits, o as the
    kernel stores it (q's dtype); there a row whose `live_R` is False reads no slot. A split
    with no visible slot has l = 0 and o = 0, and m = a large negative number (the kernel's
    fp32 min, or `_MASK_VALUE`), so that `_combine_partials` gives it weight exactly 0.

    Returns:
      (o [R, K, P, G, H], l [R, K, P, G] fp32, m [R, K, P, G] fp32).
    """
    r, k_heads, g, h = q_RKGH.shape
    s = k_RKSH.shape[2]
    if impl == "xla":
        scores_RKGS = jnp.einsum("rkgh,rksh->rkgs", q_RKGH, k_RKSH, preferred_element_type=jnp.float32)
        visible_RKGS = jnp.broadcast_to(visible_RS[:, None, None], scores_RKGS.shape)
        scores_RKGS = jnp.where(visible_RKGS, scores_RKGS / math.sqrt(h), _MASK_VALUE)
        m_RKG = scores_RKGS.max(-1)
        # Hidden slots count 0 even when no slot is visible (m = _MASK_VALUE): l = 0, o = 0 as the kernel's.
        e_RKGS = jnp.where(visible_RKGS, jnp.exp(scores_RKGS - m_RKG[..., None]), 0.0)
        o_RKGH = jnp.einsum("rkgs,rksh->rkgh", e_RKGS.astype(v_RKSH.dtype), v_RKSH, preferred_element_type=jnp.float32)
        return o_RKGH[:, :, None], e_RKGS.sum(-1)[:, :, None], m_RKG[:, :, None]
    from sharpjax.models import decode_kernel

    block_k, k_splits = _pallas_decode_blocks(s)
    # [R, K, S, H] -> [R*K, S, H] is a bitcast: the kernel reads the cache in place.
    o_XPGH, l_XPG, m_XPG = decode_kernel.mqa(
        q_RKGH.reshape(r * k_heads, g, h), k_RKSH.reshape(r * k_heads, s, h), v_RKSH.reshape(r * k_heads, s, h),
        jnp.repeat(start_R.astype(jnp.int32), k_heads), jnp.repeat(_row_ends(num_filled, live_R, r), k_heads),
        block_k=block_k, k_splits=k_splits, interpret=impl == "pallas_interpret", split_partials=True,
    )
    return (o_XPGH.reshape(r, k_heads, k_splits, g, h), l_XPG.reshape(r, k_heads, k_splits, g),
            m_XPG.reshape(r, k_heads, k_splits, g))


def _combine_partials(*parts, dtype=jnp.float32):
    """Softmax attention over the union of the parts' keys, from every split's (o, l, m) of every
    part (`_attention_part`): one flash-attention combine, exact up to fp32 rounding (and o's own
    rounding if a part stored it in bf16). m = max over all splits, w = e^(m_split - m),
    out = sum w o_split / sum w l_split, all in fp32, cast to `dtype` at the end.

    The splits are few (P <= 8 per part) and unrolled, and each split's l and m are tied to its
    o's shape [R, K, G, H] (`x + 0 * o`, which is x exactly: o is finite), so every operation is
    elementwise on one shape and XLA fuses the whole combine into one kernel. Untied, XLA's GPU
    fusion does not recompute the exps per H element: it writes m and l at [R, K, G] from
    kernels of their own, 2 or 3 kernels per layer instead of 1 (compile-only H200 target).

    No `optimization_barrier` on m, unlike the vendored `mqa`'s combine (upstream's TODO
    b/389925439, NaNs after JIT on GPU): every step here is bounded whatever XLA fuses or
    recomputes: m_split - m <= 0 (so 0 <= w <= 1, no overflow), m and m_split are finite (a
    split with no slot has the kernel's fp32 min or `_MASK_VALUE`, never -inf, so no inf - inf),
    and l is never divided by where it is 0. The barrier would force m out to memory from a
    kernel of its own, +1 kernel per layer (measured: +28 per 3B step). The two-part merge this
    replaces ran without one too. If a GPU ever shows a NaN here, the barrier goes on m.
    """
    with jax.named_scope("attention_combine"):  # the op_name `benchmarks/rollout.py` classifies by
        splits = []
        for o, l, m in parts:  # noqa: E741 - flash attention's names
            for i in range(m.shape[2]):
                o_s = o[:, :, i].astype(jnp.float32)
                tie = 0.0 * o_s
                splits.append((o_s, l[:, :, i, :, None] + tie, m[:, :, i, :, None] + tie))
        m = functools.reduce(jnp.maximum, [m_s for _, _, m_s in splits])
        w = [jnp.exp(m_s - m) for _, _, m_s in splits]
        l = sum(w_s * l_s for w_s, (_, l_s, _) in zip(w, splits))  # noqa: E741
        o = sum(w_s * o_s for w_s, (o_s, _, _) in zip(w, splits))
        # A row that read no slot in any part (a finished row, see `decode_step`) has l = 0: its
        # output is 0, not 0 / 0. Every other row has l >= 1 (the maximum's own e^0), unchanged.
        return (o / jnp.where(l > 0, l, 1.0)).astype(dtype)


def _shared_prompt_decode_attention(
    q_B1NH, prompt_k_QKTH, prompt_v_QKTH, prompt_visible_QT, prompt_first_slot_Q, k_BKSH, v_BKSH, visible_B1S,
    num_kv_heads, *, first_slot_B, num_filled, impl, live_B=None,
):
    """Decode attention when the B = Q * C rows share Q prompt caches (C consecutive rows each).

    Attention over [the row's prompt slots, the row's own response slots] in two parts whose
    per-split partials `_combine_partials` reduces in one combine: the prompt part batches the
    C rows of a prompt as C * G queries against one copy of its keys (read once per prompt, not
    once per row); the response part is per row. "auto" uses the length-aware Pallas kernel for
    a part on one NVIDIA GPU when its slot count is a multiple of 16 (as `_decode_attention`),
    else XLA's dense attention. With `live_B`, the kernel reads no response slot of a row that
    is not live and no prompt slot of a prompt none of whose C rows is live (those rows'
    outputs are 0).
    """
    b, _, n, h = q_B1NH.shape
    q_rows = prompt_k_QKTH.shape[0]
    c, g = b // q_rows, n // num_kv_heads
    q_BKGH = q_B1NH.reshape(b, num_kv_heads, g, h)
    # Row b = i * C + j answers prompt i: its queries join prompt i's batch as queries j*G .. j*G+G-1.
    q_QKXH = q_BKGH.reshape(q_rows, c, num_kv_heads, g, h).transpose(0, 2, 1, 3, 4)
    q_QKXH = q_QKXH.reshape(q_rows, num_kv_heads, c * g, h)
    prompt_len = prompt_k_QKTH.shape[2]
    live_Q = None if live_B is None else live_B.reshape(q_rows, c).any(-1)

    def to_rows(part):
        # [Q, K, P, C*G(, H)] -> [Q, C, K, P, G(, H)] -> [B, K, P, G(, H)]: row i*C + j's queries.
        back = lambda x: jnp.moveaxis(x.reshape(*x.shape[:3], c, g, *x.shape[4:]), 3, 1).reshape(  # noqa: E731
            b, num_kv_heads, x.shape[2], g, *x.shape[4:])
        return tuple(back(x) for x in part)

    def attend(part_impl):
        def run(q_QKXH, q_BKGH, prompt_k, prompt_v, k, v):
            prompt_impl = part_impl if _pallas_decode_blocks(prompt_len) is not None else "xla"
            response_impl = part_impl if _pallas_decode_blocks(k.shape[2]) is not None else "xla"
            prompt_part = _attention_part(q_QKXH, prompt_k, prompt_v, prompt_visible_QT, prompt_first_slot_Q,
                                          prompt_len, impl=prompt_impl, live_R=live_Q)
            response_part = _attention_part(q_BKGH, k, v, visible_B1S[:, 0], first_slot_B, num_filled,
                                            impl=response_impl, live_R=live_B)
            return _combine_partials(to_rows(prompt_part), response_part, dtype=v.dtype)
        return run

    args = (q_QKXH, q_BKGH, prompt_k_QKTH, prompt_v_QKTH, k_BKSH, v_BKSH)
    single_device = jax.device_count() == 1
    if impl == "xla" or (impl == "auto" and not single_device):
        out_BKGH = attend("xla")(*args)
    elif impl == "pallas_interpret":
        out_BKGH = attend("pallas_interpret")(*args)
    else:
        # Chosen when lowering, as in `_decode_attention`.
        out_BKGH = jax.lax.platform_dependent(*args, cuda=attend("pallas"), default=attend("xla"))
    return out_BKGH.astype(v_BKSH.dtype).reshape(b, 1, n, h)


def _decode_layer(
    config: ModelConfig, inv_freq, x_B1D, p, positions_B1, visible_B1S, k_cache_BKSH, v_cache_BKSH, start,
    first_slot_B, attention: str, prompt_kv=None, live_B=None,
):
    """`_layer` for one new token per row against the cache, with this layer's own params `p`.

    It shares `_project_qkv` and `_output_and_mlp` with `_layer`; only the attention differs,
    so the decode path can change its attention without touching the prefill/training path.
    """
    q_BTNH, k_BTKH, v_BTKH = _project_qkv(config, inv_freq, x_B1D, p, positions_B1)
    k_BKTH, v_BKTH = k_BTKH.transpose(0, 2, 1, 3), v_BTKH.transpose(0, 2, 1, 3)
    # Write first, then attend over the updated buffer: the write is in place.
    k_cache_BKSH = jax.lax.dynamic_update_slice(k_cache_BKSH, k_BKTH.astype(k_cache_BKSH.dtype), (0, 0, start, 0))
    v_cache_BKSH = jax.lax.dynamic_update_slice(v_cache_BKSH, v_BKTH.astype(v_cache_BKSH.dtype), (0, 0, start, 0))
    if prompt_kv is None:
        attn_BTNH = _decode_attention(q_BTNH, k_cache_BKSH, v_cache_BKSH, visible_B1S, config.num_kv_heads,
                                      first_slot_B=first_slot_B, num_filled=start + 1, impl=attention, live_B=live_B)
    else:
        attn_BTNH = _shared_prompt_decode_attention(
            q_BTNH, *prompt_kv, k_cache_BKSH, v_cache_BKSH, visible_B1S, config.num_kv_heads,
            first_slot_B=first_slot_B, num_filled=start + 1, impl=attention, live_B=live_B,
        )
    return _output_and_mlp(config, x_B1D, attn_BTNH, p), (k_cache_BKSH, v_cache_BKSH)


def decode_step(
    params: Params,
    layers: tuple[Params, ...],
    tokens_B: Int[Array, " B"],
    *,
    config: ModelConfig,
    positions_B: Int[Array, " B"],
    key_mask_BS: Bool[Array, "B S"],
    cache: KVCache,
    first_slot_B: Int[Array, " B"] | None = None,
    attention: str = "xla",
    prompt_cache: KVCache | None = None,
    prompt_mask_QT: Bool[Array, "Q T"] | None = None,
    live_B: Bool[Array, " B"] | None = None,
) -> tuple[Float[Array, "B D"], KVCache]:
    """One decode step: `forward` for a single new token per row, per-layer weights given.

    Args:
      params: the param pytree; only "embed" and "final_norm" are read here.
      layers: `unstack_layers(params, L)`, computed outside the decode loop.
      tokens_B: the new token of each row.
      config: the architecture (static).
      positions_B: the new token's RoPE position.
      key_mask_BS: which cache slots hold real tokens (as in `forward`).
      cache: the KV cache; the new key/value go to slot `cache.index`.
      first_slot_B: each row's first real slot, for a left-padded cache whose real slots are
        exactly [first_slot_B, cache.index] (what the sampler builds). Required by the
        length-aware attention; `key_mask_BS` must agree with it. With `prompt_cache`: the
        first real response slot, 0 if not given.
      attention: "xla" (attend over all S slots, masked), "auto" (the length-aware Pallas
        kernel when compiled for one NVIDIA GPU and S is a multiple of 16, else "xla"), or
        "pallas_interpret" (that kernel in Pallas' interpreter on any backend: tests).
      prompt_cache: optional shared prompt KV, Q rows of T slots, for B = Q * C rows (the C
        samples of a prompt): row b attends to prompt row b // C, then to its own `cache`,
        which then holds only the response slots (`key_mask_BS` and `first_slot_B` describe
        those). Read, never written. The G samples of an RLOO group then read their prompt's
        keys once per step instead of G times (`SamplingConfig.share_prompt_kv`).
      prompt_mask_QT: with `prompt_cache`, which prompt slots hold real tokens (left padding).
      live_B: optional, the rows whose output is still needed (the sampler: rows that sample
        another token after this one). Under the length-aware Pallas attention every other row
        reads no cache block, so a finished row stops costing its KV reads; its hidden state is
        then meaningless but finite, and its new key/value are still written. No effect on the
        dense "xla" attention (or a part on it), which reads every slot of every row: a masked
        dense read cannot skip. The live rows' outputs are the same either way (bitwise).

    Returns:
      (hidden_BD after the final norm, the cache with index advanced by one).
    """
    if attention not in DECODE_ATTENTION:
        raise ValueError(f"attention={attention!r}; expected one of {DECODE_ATTENTION}.")
    if attention != "xla" and first_slot_B is None and prompt_cache is None:
        raise ValueError(f"attention={attention!r} needs first_slot_B (each row's first real cache slot).")
    if prompt_cache is not None:
        if prompt_mask_QT is None:
            raise ValueError("prompt_cache needs prompt_mask_QT (which prompt slots are real).")
        if tokens_B.shape[0] % prompt_cache.k[0].shape[0]:
            raise ValueError(f"{tokens_B.shape[0]} rows are not a multiple of the {prompt_cache.k[0].shape[0]} "
                             "prompt cache rows.")
        if first_slot_B is None:
            first_slot_B = jnp.zeros(tokens_B.shape, jnp.int32)
        prompt_visible_QT = prompt_mask_QT.astype(bool)
        # Left padding: the real slots are the last ones (an empty prompt has none: first = T).
        prompt_first_slot_Q = prompt_mask_QT.shape[1] - prompt_visible_QT.sum(-1, dtype=jnp.int32)
    inv_freq = rope_inverse_frequencies(config)
    x_BTD = jnp.take(params["embed"], tokens_B[:, None], axis=0)
    start = cache.index
    slot_S = jnp.arange(key_mask_BS.shape[1], dtype=jnp.int32)
    visible_B1S = (slot_S <= start)[None, None, :] & key_mask_BS[:, None, :]
    new_k, new_v = [], []
    for i, (p_i, k_i, v_i) in enumerate(zip(layers, cache.k, cache.v, strict=True)):
        prompt_kv = None
        if prompt_cache is not None:
            prompt_kv = (prompt_cache.k[i], prompt_cache.v[i], prompt_visible_QT, prompt_first_slot_Q)
        x_BTD, (k_i, v_i) = _decode_layer(
            config, inv_freq, x_BTD, p_i, positions_B[:, None], visible_B1S, k_i, v_i, start, first_slot_B, attention,
            prompt_kv, live_B,
        )
        new_k.append(k_i)
        new_v.append(v_i)
    hidden_BD = rms_norm(x_BTD, params["final_norm"], config.rms_norm_eps)[:, 0]
    return hidden_BD, KVCache(k=tuple(new_k), v=tuple(new_v), index=start + 1)
