"""Compile-only GPU estimate of the train step (no GPU needed): `benchmarks/train_step.py`'s
sharpjax step, compiled for an H100/H200 target with XLA's compile-only GPU topology
(shared/tools/aot/README.md), reports temp bytes, FLOPs and bytes accessed per step and the
roofline time max(FLOPs / peak, bytes / HBM bandwidth).

Run outside the project's venv site (the jax-cuda12 plugin wheels):

    PYTHONPATH=/tmp/aot-site JAX_PLATFORMS=cpu JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 \
        python benchmarks/train_step_aot.py --size 3b --seq-len 1024 --target h100

`compiled.cost_analysis()` of the compile-only client is used when it answers. It returns
None with jax 0.10.2's plugin, and XLA's HLO cost analysis of the lowered (pre-optimization)
module counts a `while` body once (the layer and logits-chunk scans), so the FLOPs and bytes
reported are closed-form counts (`closed_form`, "source": "closed form"), and the memory
figures are the GPU compile's buffer assignment.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

import jax
import jax.numpy as jnp
from _shapes import SIZES
from jax.experimental.topologies import get_topology_desc
from train_step import model_config

from sharpjax.losses import LossConfig
from sharpjax.parallel import batch_sharding, make_mesh, replicated
from sharpjax.plan import _target_cudnn
from sharpjax.plan.aot import abstract_train_state
from sharpjax.plan.targets import parse_target
from sharpjax.rollout.hlo import rematerialized
from sharpjax.train.config import OptimConfig
from sharpjax.train.step import StepConfig, TrainBatch, make_grouped_update, make_train_step

GiB = 2**30


def compile_step(cfg: StepConfig, target, batch: int, seq_len: int, *, grouped: bool = False):
    """The compiled `train_step` for [batch, seq_len]; with `grouped`, the length-grouped update's
    per-micro-batch program (`train.step.GroupedUpdate.micro`) for one micro-batch of `batch` rows."""
    topology = get_topology_desc("aot", "cuda", target_config=target.gpu.target_config, topology="1x1x1")
    mesh = make_mesh(data=1, devices=topology.devices)
    rows1, rows2 = batch_sharding(mesh, 1), batch_sharding(mesh, 2)
    state = abstract_train_state(cfg.model, cfg.optim, mesh)
    sds = jax.ShapeDtypeStruct
    i32 = lambda *s: sds(s, jnp.int32, sharding=rows2)  # noqa: E731
    f32 = lambda *s: sds(s, jnp.float32, sharding=rows2 if len(s) == 2 else rows1)  # noqa: E731
    B, T = batch, seq_len
    tb = TrainBatch(tokens=i32(B, T), attention_mask=i32(B, T), response_mask=i32(B, T),
                    rollout_logprobs=f32(B, T), advantages=f32(B), ref_logprobs=f32(B, T))
    with _target_cudnn(target):
        if grouped:
            compute = jax.tree.map(lambda p: sds(p.shape, cfg.model.jnp_dtype, sharding=p.sharding), state.params)
            scalar = sds((), jnp.float32, sharding=replicated(mesh))
            micro = make_grouped_update(cfg, state, mesh).micro
            return micro.lower(state.params, compute, tb, scalar, scalar).compile()
        return make_train_step(cfg, state, mesh).lower(state, tb).compile()


def closed_form(cfg: StepConfig, batch: int, seq_len: int, gpu) -> dict:
    """FLOPs and HBM bytes of one step, by phase, and the roofline time sum_phase max(F/peak, B/bw).

    Matmul FLOPs 2 * params * tokens per pass; causal flash attention 2 * B * H * T^2 * hd per
    layer and pass (QK^T and PV, the masked half skipped). Passes: forward 1, backward 2, plus
    the recomputed forward: "full" recomputes the layers (x4 in all), "dots" only attention
    (a cuDNN custom call, not a dot; x3 + 1 attention), "none" nothing (x3). The vocabulary
    projection is under its own jax.checkpoint per chunk: always x4. Bytes: the weights read
    once per pass in the compute dtype, and the AdamW update (`optimizer_bytes_per_param`).
    """
    m = cfg.model
    tokens = batch * seq_len
    d, hd = m.hidden_size, m.head_dim
    layer_params = d * hd * (2 * m.num_heads + 2 * m.num_kv_heads) + 3 * d * m.intermediate_size
    layers = 2 * m.num_layers * layer_params * tokens
    attention = m.num_layers * 2 * batch * m.num_heads * seq_len * seq_len * hd
    head = 2 * m.vocab_size * d * tokens
    layer_x, attn_x = {"full": (4, 4), "dots": (3, 4), "none": (3, 3)}[cfg.remat]
    flops = layer_x * layers + attn_x * attention + 4 * head
    compute_bytes = jnp.dtype(m.jnp_dtype).itemsize
    weight_bytes = 4 * m.num_params * compute_bytes + m.num_params * (4 + compute_bytes)  # 4 passes + the cast
    mu = 2 if getattr(cfg.optim, "state_dtype", "float32") == "bfloat16" else 4
    optimizer_bytes_per_param = 4 + 4 + 4 + 4 + 2 * mu + 2 * 4  # grad read (norm, update), params r/w, mu r/w, nu r/w
    opt_bytes = m.num_params * optimizer_bytes_per_param
    t_compute = max(flops / gpu.peak_flops, weight_bytes / gpu.hbm_bandwidth)
    t_opt = opt_bytes / gpu.hbm_bandwidth
    return dict(flops=flops, bytes=weight_bytes + opt_bytes, optimizer_bytes=opt_bytes,
                roofline_s=t_compute + t_opt, roofline_compute_s=t_compute, roofline_optimizer_s=t_opt)


def fp32_logits_buffers(hlo: str, batch: int, seq_len: int, vocab: int) -> list[str]:
    """Shapes of f32 buffers in the optimized HLO with the vocabulary as last dim and >= a full [B, T] of rows."""
    out = set()
    for m in re.finditer(r"f32\[([\d,]+)\]", hlo):
        dims = [int(d) for d in m.group(1).split(",")]
        if dims[-1] == vocab and len(dims) >= 2:
            rows = 1
            for d in dims[:-1]:
                rows *= d
            out.add((rows, m.group(0)))
    return [s for _, s in sorted(out, reverse=True)]


# Kernel classes of the compiled train step, in print order.
STEP_CLASSES = ("GEMMs", "cuDNN attention", "memory-bound fusions in the scans", "scan weight slices (copies)",
                "scan outputs / grads (in-place updates)", "optimizer update + norms + guard", "f32 -> bf16 param cast",
                "zero init")


def _step_class(row) -> str | None:
    name, entry = row["calls"] or row["kind"], row["entry"]
    if row["op"] in ("while", "conditional", "call"):
        return None  # containers: their bodies are counted
    if name.startswith("gemm_fusion") or "gemm" in row["kind"].lower() or "cublas" in row["kind"]:
        return "GEMMs"
    if "cudnn" in row["kind"]:
        return "cuDNN attention"
    if "dynamic_update_slice" in name and not entry:
        return "scan outputs / grads (in-place updates)"
    if "dynamic_slice" in name and not entry:
        return "scan weight slices (copies)"
    if entry and "convert" in name:
        return "f32 -> bf16 param cast"
    if entry and "broadcast" in name:
        return "zero init"
    return "optimizer update + norms + guard" if entry else "memory-bound fusions in the scans"


def breakdown(hlo: str, gpu) -> dict:
    """Every kernel of the compiled step, its XLA cost times its loops' trip counts, by class.

    Roofline per class: max(FLOPs / peak, bytes / HBM bandwidth). cuDNN attention is opaque to
    XLA's cost analysis (0 FLOPs): its FLOPs are the closed form's, added by the caller.
    """
    from sharpjax.rollout.hlo import computations, kernel_costs

    comps = computations(hlo)
    entry = re.search(r"^ENTRY %([\w.\-]+)", hlo, re.M).group(1)
    loops = {}  # body -> (the computation that runs the loop, trip count)
    for name, text in comps.items():
        for line in text.splitlines():
            if " while(" in line:
                trip = re.search(r'known_trip_count":\{"n":"(\d+)"', line)
                loops[re.search(r"body=%([\w.\-]+)", line).group(1)] = (name, int(trip.group(1)) if trip else 1)

    def trips(c):  # how many times a computation runs: the product of its enclosing loops' trips
        n = 1
        while c in loops:
            c, t = loops[c]
            n *= t
        return n

    client = jax.devices("cpu")[0].client
    classes = {c: {"kernels": 0, "bytes": 0.0, "flops": 0.0} for c in STEP_CLASSES}
    for comp in [entry, *loops]:
        n = trips(comp)
        for row in kernel_costs(hlo, comp, client):
            row["entry"] = comp == entry
            c = _step_class(row)
            if c is None:
                continue
            classes[c]["kernels"] += n
            classes[c]["bytes"] += n * row["hbm_bytes"]
            classes[c]["flops"] += n * row["flops"]
    for v in classes.values():
        v["roofline_s"] = max(v["flops"] / gpu.peak_flops, v["bytes"] / gpu.hbm_bandwidth)
    return classes


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="3b", choices=sorted(SIZES))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--target", default="h100")
    p.add_argument("--remat", default="full", choices=("none", "full", "dots"))
    p.add_argument("--logits-chunk", type=int, default=256)
    p.add_argument("--state-dtype", default="float32")
    p.add_argument("--json", default=None)
    p.add_argument("--hlo", default=None, help="write the optimized HLO here")
    p.add_argument("--micro-batches", type=int, default=1, help="gradient accumulation steps (rows / micro-batch)")
    p.add_argument("--group-by-length", action="store_true",
                   help="compile train.group_by_length's per-micro-batch program for --batch rows (one micro-batch); "
                        "peak_with_resident_bytes adds the train state and the reference it runs beside")
    p.add_argument("--breakdown", action="store_true",
                   help="every kernel's XLA cost x its loop trip counts, by class, with a roofline per class")
    a = p.parse_args()
    target = parse_target(a.target)
    model = model_config(a.size, "bfloat16").replace(attention="cudnn")
    optim = OptimConfig()
    if "state_dtype" in OptimConfig.__dataclass_fields__:
        optim = OptimConfig(state_dtype=a.state_dtype)
    cfg = StepConfig(model=model, loss=LossConfig(), optim=optim, remat=a.remat, logits_chunk=a.logits_chunk,
                     micro_batches=a.micro_batches)
    compiled = compile_step(cfg, target, a.batch, a.seq_len, grouped=a.group_by_length)
    mem = compiled.memory_analysis()
    try:
        cost = compiled.cost_analysis()
    except Exception as e:  # noqa: BLE001
        cost = None
        print(f"cost_analysis raised {type(e).__name__}: {e}", file=sys.stderr)
    if isinstance(cost, list):
        cost = cost[0] if cost else None
    flops = cost.get("flops") if cost else None
    nbytes = cost.get("bytes accessed") if cost else None
    hlo = compiled.as_text()
    if a.hlo:
        open(a.hlo, "w").write(hlo)
    source = "cost_analysis"
    roof = None
    if flops is not None and nbytes is not None:
        roof = max(flops / target.gpu.peak_flops, nbytes / target.gpu.hbm_bandwidth)
    else:
        cf = closed_form(cfg, a.batch, a.seq_len, target.gpu)
        source, flops, nbytes, roof = "closed form", cf["flops"], cf["bytes"], cf["roofline_s"]
    r = dict(size=a.size, batch=a.batch, seq_len=a.seq_len, target=target.name, remat=a.remat,
             logits_chunk=a.logits_chunk, state_dtype=a.state_dtype,
             argument_bytes=mem.argument_size_in_bytes, output_bytes=mem.output_size_in_bytes,
             alias_bytes=mem.alias_size_in_bytes, temp_bytes=mem.temp_size_in_bytes,
             flops=flops, bytes_accessed=nbytes, roofline_s=roof, cost_source=source,
             peak_bytes=mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
             + mem.temp_size_in_bytes,
             f32_vocab_buffers=fp32_logits_buffers(hlo, a.batch, a.seq_len, model.vocab_size)[:6],
             # What XLA cloned to fit its memory limit (0 GEMMs: the policy's compute is the step's).
             xla_rematerialized=rematerialized(hlo), group_by_length=a.group_by_length)
    if a.group_by_length:  # alive beside the program: fp32 params + Adam moments, the bf16 reference
        state_bytes = (12 if a.state_dtype == "float32" else 10) * model.num_params + 2 * model.num_params
        r["peak_with_resident_bytes"] = r["peak_bytes"] + state_bytes
    if a.breakdown:
        classes = breakdown(hlo, target.gpu)
        cf = closed_form(cfg, a.batch, a.seq_len, target.gpu)
        m = cfg.model
        passes = 3 if a.remat == "none" else 4  # causal flash attention: forward, (recompute), backward x2
        attention = passes * m.num_layers * 2 * a.batch * m.num_heads * a.seq_len**2 * m.head_dim
        classes["cuDNN attention"]["flops"] = attention
        classes["cuDNN attention"]["roofline_s"] = attention / target.gpu.peak_flops
        model_flops = 6 * m.num_params * a.batch * a.seq_len
        total = sum(v["roofline_s"] for v in classes.values())
        r |= {"classes": classes, "model_flops": model_flops, "closed_form_flops": cf["flops"],
              "roofline_sum_s": total, "mfu_at_roofline": model_flops / target.gpu.peak_flops / total}
        print(f"{'class':42s} {'kernels':>8s} {'GB':>8s} {'TFLOP':>8s} {'roofline ms':>11s}")
        for c, v in classes.items():
            print(f"{c:42s} {v['kernels']:8d} {v['bytes'] / 1e9:8.1f} {v['flops'] / 1e12:8.1f} "
                  f"{1e3 * v['roofline_s']:11.1f}")
        print(f"sum of class rooflines {1e3 * total:.1f} ms; 6*N*tokens = {model_flops / 1e12:.1f} TFLOP "
              f"(closed form {cf['flops'] / 1e12:.1f}): MFU at that roofline {100 * r['mfu_at_roofline']:.1f}%")
    print(json.dumps({k: v for k, v in r.items() if k != "classes"}, indent=1))
    if a.json:
        json.dump(r, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
