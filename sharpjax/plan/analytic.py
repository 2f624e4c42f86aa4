"""The closed forms: per-device bytes of each program's buffers (params, gradients, Adam moments,
the reference model, the KV cache, one layer's activations) and the roofline phases (FLOPs, HBM
bytes) of each program, from the model's config and the plan's shapes. Seconds, no plugin.
"""

from __future__ import annotations

import math
import types

from sharpjax.models.config import ModelConfig
from sharpjax.plan.shapes import PlanShapes, ProgramPlan
from sharpjax.train.config import RunConfig

# ---- sizes ------------------------------------------------------------------------------

def gpu_attention(model: ModelConfig) -> str:
    """The attention a GPU run traces to: "cudnn" (flash: no [B, N, T, T] scores) or "xla".

    `config.attention="auto"` resolves by the backend at trace time, which on this CPU host
    would be "xla"; the plan resolves it as the GPU would (bf16/fp16, head_dim % 8 == 0, <= 128).
    """
    attention = getattr(model, "attention", None)
    if attention is None:  # a model without the flash path
        return "xla"
    if attention != "auto":
        return attention
    supported = model.dtype in ("bfloat16", "float16") and model.head_dim % 8 == 0 and model.head_dim <= 128
    return "cudnn" if supported else "xla"


def _mesh_like(shapes: PlanShapes):
    return types.SimpleNamespace(shape=dict(zip(("data", "fsdp", "tensor"), shapes.mesh)))


def _param_elems_per_device(model: ModelConfig, shapes: PlanShapes) -> int:
    """Parameter elements one device holds under the sharding rules (exact, from the specs)."""
    import jax

    from sharpjax.models.transformer import param_logical_axes, param_shapes
    from sharpjax.parallel import logical_to_spec

    mesh = _mesh_like(shapes)
    is_axes = lambda x: isinstance(x, tuple) and all(isinstance(a, str) for a in x)  # noqa: E731

    def local(axes, shape):
        spec = logical_to_spec(axes, shape, mesh)
        n = 1
        for size, ax in zip(shape, tuple(spec) + (None,) * len(shape)):
            names = () if ax is None else (ax,) if isinstance(ax, str) else ax
            n *= size // math.prod(mesh.shape[a] for a in names)
        return n

    return sum(jax.tree.leaves(jax.tree.map(local, param_logical_axes(model), param_shapes(model), is_leaf=is_axes)))


def _matmul_params(model: ModelConfig) -> int:
    """Parameters that take part in a matmul per token (the embedding lookup does not; the head does)."""
    d = model.hidden_size
    return model.num_params - model.vocab_size * d * (0 if model.tie_word_embeddings else 1)


def _analytic_parts(run: RunConfig, model: ModelConfig, s: PlanShapes) -> dict[str, list[tuple[str, int]]]:
    """Per program, (component, bytes per device); the analytic plan sums them."""
    d, f, t = s.mesh
    c = 2 if model.dtype != "float32" else 4  # compute dtype bytes
    D, F, V, L = model.hidden_size, model.intermediate_size, model.vocab_size, model.num_layers
    N, K, H = model.num_heads // t or 1, model.num_kv_heads, model.head_dim
    Fl = F // t or 1
    elems = _param_elems_per_device(model, s)
    gathered_layer = (model.num_params - model.vocab_size * D) // L if f * t > 1 else 0
    state = 12 * elems  # fp32 master params + Adam mu, nu
    ref = c * elems
    T, P = s.width, s.prompt_len
    rows = s.rows // s.batch_shards
    rows_mb = max(rows // s.micro_batches, 1)
    chunk = run.train.logits_chunk
    flash = gpu_attention(model) == "cudnn"
    # Per query position, per layer: XLA's attention keeps fp32 scores and compute-dtype
    # probabilities over every key; flash attention only its output and a log-sum-exp.
    scores = (lambda keys: N * (H * c + 4)) if flash else (lambda keys: N * keys * (4 + c))  # noqa: E731

    # Rollout: one sampler call.
    r_rows = max(s.prompts_per_call * s.samples // s.batch_shards, 1)
    r_prompts = max(s.prompts_per_call // s.batch_shards, 1)
    kv_slot = L * 2 * K * H * c
    # `SamplingConfig.share_prompt_kv` (the default): one prompt cache per prompt, P slots,
    # and a response cache per row, T - P slots.
    kv = (r_prompts * P + r_rows * (T - P)) * kv_slot
    rollout = [
        ("policy copy", c * elems),
        ("KV cache", kv),
        ("gathered weights", c * gathered_layer * 2),
        ("prefill activations", r_prompts * P * (scores(T) + Fl * c * 3 + D * 4 * 4)),
        ("logits and outputs", r_rows * (V * 4 * 4 + T * 4 * 6)),
        ("train state", state), ("reference", ref),
    ]
    rows_sc = max((s.scoring_rows or s.rows) // s.batch_shards, 1)
    layer_fwd = rows_sc * T * (scores(T) + Fl * c * 3 + (N + 2 * K) * H * c + D * 4 * 3)
    scoring = [
        ("reference", ref), ("train state", state),
        ("rollout arrays", rows * T * 4 * 10),
        ("activations", layer_fwd + rows_sc * chunk * V * 4 * 3 + rows_sc * T * D * c * 2),
        ("gathered weights", c * gathered_layer * 2),
    ]
    saved_per_layer = {"full": D * c, "dots": ((N + 2 * K) * H + N * H + 3 * Fl + D) * c,
                       "none": scores(T) + Fl * c * 3 + (N + 2 * K) * H * c + D * 4 * 3}[run.train.remat]
    layer_bwd = rows_mb * T * (scores(T) * 3 // 2 + Fl * 4 * 4 + (N + 2 * K) * H * 4 * 3 + D * 4 * 6)
    train = [
        ("train state", state), ("reference", ref),
        ("gradients", 4 * elems * (2 if s.micro_batches > 1 else 1) + c * elems + 4 * elems * 2),
        ("activations", L * rows_mb * T * saved_per_layer + layer_bwd + rows_mb * chunk * V * 4 * 4),
        ("gathered weights", (2 * c + 4) * gathered_layer),
        ("batch", rows * T * 4 * 5 + rows * 4),
    ]
    return {"rollout": rollout, "scoring": scoring, "train_step": train}


# Arrays the loop keeps alive beside each program, and the program's own arguments.
_RESIDENT = {"rollout": ("train state", "reference"), "scoring": ("train state",),
             "train_step": ("reference",)}
_ARGS = {"rollout": ("policy copy",), "scoring": ("reference", "rollout arrays"),
         "train_step": ("train state", "batch")}


def _analytic_programs(run: RunConfig, model: ModelConfig, s: PlanShapes) -> list[ProgramPlan]:
    out = []
    for name, parts in _analytic_parts(run, model, s).items():
        resident = sum(b for k, b in parts if k in _RESIDENT[name])
        args = sum(b for k, b in parts if k in _ARGS[name])
        temps = sum(b for k, b in parts if k not in _RESIDENT[name] and k not in _ARGS[name])
        out.append(ProgramPlan(name=name, argument_bytes=args, output_bytes=0, alias_bytes=0, temp_bytes=temps,
                               resident_bytes=resident, phases=(), calls=s.rollout_calls if name == "rollout" else 1,
                               parts=tuple(parts)))
    return out


def mean_slots_read(filled_before: int, steps: int, block: int) -> float:
    """Mean over the decode steps t < `steps` of ceil((filled_before + t + 1) / block) * block:
    the slots a length-aware kernel reads when step t attends over filled_before + t + 1 filled
    slots (write-then-attend), whole blocks of `block` slots."""
    if steps <= 0:
        return 0.0
    # Sum of ceil(n / b) for n in [a + 1, a + steps], from the closed form of sum_{n <= x} ceil(n / b).
    def ceil_sum(x):
        q, r = divmod(x, block)
        return block * q * (q + 1) // 2 + r * (q + 1)
    return block * (ceil_sum(filled_before + steps) - ceil_sum(filled_before)) / steps


def decode_slots_read(s: PlanShapes, *, length_aware: bool) -> tuple[float, float]:
    """KV slots one decode step reads, on average over the M steps of a full-length decode:
    (per prompt, per row), as `SamplingConfig` lays out the cache for the plan's shapes.

    RLOO samples at least 2 responses per prompt, so the cache is split (`uses_shared_prompt_kv`):
    each prompt's P slots are read once for its rows, each row reads its own M response slots.
    The dense XLA attention (several devices, `transformer._decode_attention`)
    reads every allocated slot every step; the length-aware Pallas kernel (one GPU) only the
    filled ones, in whole blocks (`transformer._pallas_decode_blocks`): a response part grows one
    slot a step, so it reads ~M / 2 a step, not M.
    """
    from sharpjax.models.transformer import _pallas_decode_blocks

    P, M = s.prompt_len, s.new_tokens
    blocks = _pallas_decode_blocks(M) if length_aware else None
    # The prompt part is full from the first step: P slots either way (the kernel's blocks tile it).
    return float(P), float(M) if blocks is None else mean_slots_read(0, M, blocks[0])


def _phases(name: str, run: RunConfig, model: ModelConfig, s: PlanShapes) -> tuple[tuple[float, float, int], ...]:
    """Roofline phases (FLOPs, HBM bytes, repeats) per device of one call of a program."""
    d, f, t = s.mesh
    n_split = t  # tensor parallelism splits a row's matmuls; data/fsdp split the rows
    c = 2 if model.dtype != "float32" else 4
    D, L, V = model.hidden_size, model.num_layers, model.vocab_size
    NH, KH = model.num_heads * model.head_dim, model.num_kv_heads * model.head_dim
    mm = _matmul_params(model)
    weights = c * model.num_params / n_split
    T, P, M = s.width, s.prompt_len, s.new_tokens
    rows = s.rows / s.batch_shards

    flash = gpu_attention(model) == "cudnn"

    def fwd(r, q, k):  # r rows, q query positions each, k keys each (flash skips the causally masked half)
        return 2 * mm * r * q / n_split + 4 * L * NH * r * q * k / n_split / (2 if flash and q > 1 else 1)

    def act_bytes(r, q, k):  # one forward's activation traffic (XLA: fp32 scores written and read twice)
        scores = 0 if flash else k * model.num_heads / n_split * 4 * 4
        return L * r * q * (scores + (8 * D + 6 * model.intermediate_size / n_split) * c)

    if name == "rollout":
        rr = s.prompts_per_call * s.samples / s.batch_shards
        rp = s.prompts_per_call / s.batch_shards
        prompt_slots, row_slots = decode_slots_read(s, length_aware=d * f * t == 1)
        kv_bytes = (rp * prompt_slots + rr * row_slots) * L * 2 * KH * c / n_split
        return ((fwd(rp, P, T), weights + act_bytes(rp, P, T), 1),
                (fwd(rr, 1, prompt_slots + row_slots), weights + kv_bytes + rr * V * 4 * 3, M))
    if name == "scoring":
        return ((fwd(rows, T, T), weights + act_bytes(rows, T, T), 1),)
    factor = {"full": 4, "dots": 3.5, "none": 3}[run.train.remat]  # fwd + (recomputed fwd) + 2x bwd
    elems = model.num_params / (f * t)
    return ((factor * fwd(rows, T, T), s.micro_batches * 3 * weights + factor * act_bytes(rows, T, T), 1),
            (0.0, elems * 4 * 8, 1))  # AdamW: read params, grads, mu, nu; write params, mu, nu (+ clip)
