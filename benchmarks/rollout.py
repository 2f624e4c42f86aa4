"""Rollout throughput: sharpjax `sample` vs HF transformers `generate` (static cache).

Same random weights in the same shape, same batch, same prompt and response lengths, EOS
disabled so every row generates exactly `--new-tokens` tokens (throughput does not depend
on weight values). Prints both new-token rates, their ratio, and the fraction of the HBM
roofline: (bytes of weights + KV cache read per decode step) / bandwidth vs the measured
step time.

    python benchmarks/rollout.py --size 3b            # GPU: the DESIGN.md setting
    python benchmarks/rollout.py --size tiny          # CPU smoke run

Without a GPU, `--aot-target h100.pbtxt` compiles `sample` for that GPU on the CPU (the
compile-only topology of /work/shared/tools/aot/README.md; needs jax-cuda12-plugin and
-pjrt on PYTHONPATH, JAX_PLATFORMS=cpu JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1) and prints, for
one decode step (the while body), XLA's cost analysis (FLOPs, bytes), the HBM roofline
time, and how many slices of the stacked [L, ...] layer weights the body still makes.
`--samples G --share-prompt-kv / --no-share-prompt-kv` compares the G samples of a prompt
reading one shared prompt KV cache (the default) with each row reading its own copy.

`--lengths realistic` forces each row's response length instead of the full budget, drawn as
`decode_cost.realistic_lengths` says (lognormal, median 400 tokens or 400/1536 of a smaller
budget, 10% of rows at the budget, `--lengths-seed`): sharpjax through per-row budgets
(`max_new_tokens_B`), HF `generate` through a logits processor that forces EOS at each row's
length (and forbids it before). It times sharpjax with finished rows skipped (the default)
and without (`SamplingConfig.skip_finished_rows=False`, the cost before issue 28 item 3),
prints the tokens actually generated and tokens/s of each, the HF ratio under the same
lengths, and `decode_cost`'s HBM roofline of those lengths; `--compare-full` also times the
full-length run, to show how far the time follows the tokens generated.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

# JAX and PyTorch share the GPU in one process: allocate on demand, not 75% up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# Without preallocation JAX still caps itself at 75% of the GPU; the 3B step (fp32 master + Adam) needs more.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")

import jax  # noqa: E402
import jax.numpy as jnp
import numpy as np
from _shapes import LLAMA3_ROPE, SIZES  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from sharpjax.models import ModelConfig
from sharpjax.models.hf import to_hf_state_dict
from sharpjax.parallel import init_params_sharded, make_mesh
from sharpjax.rollout import SamplingConfig, sample
from sharpjax.rollout.hlo import COMPUTATION, stacked_weight_slices, while_bodies

# Token id the realistic-length HF run forces as EOS (prompts draw ids from 3 up).
FORCED_EOS = 1

# Peak HBM bandwidth, bytes/s, by device_kind substring.
HBM_BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12}


def model_config(size: str, dtype: str) -> ModelConfig:
    return ModelConfig(model_type="llama", rope=LLAMA3_ROPE, tie_word_embeddings=True, rms_norm_eps=1e-5,
                       max_position_embeddings=131072, dtype=dtype, **SIZES[size])


def bytes_per_decode_step(
    config: ModelConfig, batch: int, prompt: int, new: int, prompt_rows: int | None = None
) -> float:
    """Weights once, plus the KV cache at its mean filled length over the decode.

    `prompt_rows`: rows of prompt KV read per step (batch // G with a shared prompt cache).
    """
    itemsize = jnp.dtype(config.jnp_dtype).itemsize
    weights = config.num_params * itemsize
    slots = (batch if prompt_rows is None else prompt_rows) * prompt + batch * new / 2
    kv = 2 * config.num_layers * slots * config.num_kv_heads * config.head_dim * itemsize
    return weights + kv


def time_sharpjax(config, params, tokens, mask, sampling, repeats, lengths=None):
    """Best of `repeats` timed `sample` calls (after one compile); `lengths`: [B] forced response
    lengths (per-row budgets), else every row generates the full `max_new_tokens`."""
    budgets = None if lengths is None else jnp.asarray(lengths, jnp.int32)
    run = lambda key: sample(params, tokens, mask, key, config=config, sampling=sampling,  # noqa: E731
                             max_new_tokens_B=budgets)
    out = run(jax.random.key(0))
    jax.block_until_ready(out)  # compile
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        out = run(jax.random.key(i + 1))
        jax.block_until_ready(out)
        times.append(time.perf_counter() - start)
    expected = np.full(out.lengths.shape, sampling.max_new_tokens) if lengths is None else np.asarray(lengths)
    np.testing.assert_array_equal(np.asarray(out.lengths), expected)
    return min(times)


def profile_sharpjax(config, params, tokens, mask, sampling, out_dir, top=15):
    """Traces one `sample` call and prints the GPU kernels that take the most time."""
    import glob
    import gzip
    from collections import Counter

    jax.block_until_ready(sample(params, tokens, mask, jax.random.key(0), config=config, sampling=sampling))
    with jax.profiler.trace(out_dir, create_perfetto_trace=True):
        jax.block_until_ready(sample(params, tokens, mask, jax.random.key(1), config=config, sampling=sampling))
    paths = glob.glob(os.path.join(out_dir, "**", "*.trace.json.gz"), recursive=True)
    if not paths:
        print(f"profile: no perfetto trace under {out_dir}")
        return
    with gzip.open(paths[0]) as f:
        events = json.load(f)["traceEvents"]
    gpu_pids = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
                and "GPU" in str(e.get("args", {}).get("name", ""))}
    total = Counter()
    for e in events:
        if e.get("pid") in gpu_pids and "dur" in e:
            total[e["name"]] += e["dur"]
    all_us = sum(total.values())
    print(f"profile ({paths[0]}): {all_us / 1e3:.1f} ms of GPU kernel time; top kernels:")
    for name, us in total.most_common(top):
        print(f"  {us / 1e3:9.1f} ms  {100 * us / max(all_us, 1):5.1f}%  {name[:110]}")


def time_hf(config, params, tokens, mask, new_tokens, repeats, device, lengths=None):
    """Best of `repeats` HF `generate` calls; `lengths`: [B] forced response lengths (EOS forced at
    each row's last token and forbidden before it; generate stops when every row has ended)."""
    import torch
    import transformers

    hf_cfg = transformers.LlamaConfig(**{k: v for k, v in config.to_hf_dict().items() if k != "torch_dtype"})
    torch_dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[config.dtype]
    with torch.device(device):
        model = transformers.LlamaForCausalLM(hf_cfg).to(torch_dtype).eval()
    # The same weights as the sharpjax run.
    state = {k: torch.from_numpy(np.array(v, np.float32)).to(torch_dtype) for k, v in to_hf_state_dict(params, config).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
    ids = torch.tensor(np.asarray(tokens), dtype=torch.long, device=device)
    attn = torch.tensor(np.asarray(mask), dtype=torch.long, device=device)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True, temperature=1.0, top_p=1.0,
                  top_k=0, cache_implementation="static", pad_token_id=0)
    if lengths is not None:
        prompt_len = ids.shape[1]
        last_B = torch.tensor(np.asarray(lengths) - 1, device=device)

        class ForceLengths(transformers.LogitsProcessor):
            def __call__(self, input_ids, scores):  # picks response token t = input_ids.shape[1] - prompt_len
                end_B = last_B == input_ids.shape[1] - prompt_len
                scores[:, FORCED_EOS] = -float("inf")
                scores[end_B] = -float("inf")
                scores[end_B, FORCED_EOS] = 0.0
                return scores

        kwargs = {k: v for k, v in kwargs.items() if k != "min_new_tokens"}
        kwargs |= dict(eos_token_id=FORCED_EOS, logits_processor=transformers.LogitsProcessorList([ForceLengths()]))

    def run():
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=attn, **kwargs)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    run()  # warm-up (allocates the static cache)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - start)
    if lengths is None:
        assert out.shape[1] == tokens.shape[1] + new_tokens
    else:  # each row ends with its forced EOS at its length
        response = out[:, tokens.shape[1]:].cpu().numpy()
        got = np.where((response == FORCED_EOS).any(1), (response == FORCED_EOS).argmax(1) + 1, response.shape[1])
        np.testing.assert_array_equal(got, np.asarray(lengths))
    del model
    return min(times)


def _decode_body(hlo: str) -> tuple[str, str]:
    """(name, text with every computation it calls) of the largest while body: the decode loop."""
    return max(while_bodies(hlo).items(), key=lambda x: len(x[1]), default=("", ""))


def _body_cost(hlo: str, body: str) -> dict:
    """XLA's HloCostAnalysis of one while body (the compile-only target has no cost analysis of
    its own): the optimized module re-parsed with that body as its entry, analysed on the CPU client."""
    from jax._src.lib import _jax
    from jaxlib import _hlo

    lines = ["HloModule decode_body"]
    for line in hlo.splitlines()[1:]:
        line = line.removeprefix("ENTRY ")
        match = COMPUTATION.match(line)
        lines.append("ENTRY " + line if match and match.group(1) == body else line)
    module = _hlo.hlo_module_from_text("\n".join(lines))
    return _jax.hlo_module_cost_analysis(jax.devices("cpu")[0].client, module)


def _compile_for_target(config, batch, prompt, sampling, target_path, dump_dir=None):
    """`sample` compiled for the GPU in `target_path` on the CPU (compile-only): (compiled, seconds).
    With `dump_dir`, XLA writes its dumps there (`xla_dump_to`: HLO, thunk sequences, PTX)."""
    from jax.experimental.topologies import get_topology_desc
    from jax.sharding import SingleDeviceSharding

    from sharpjax.models.transformer import init_params
    from sharpjax.parallel import make_mesh, on_mesh

    with open(target_path) as f:
        topology = get_topology_desc("aot", "cuda", target_config=f.read(), topology="1x1x1")
    sharding = SingleDeviceSharding(topology.devices[0])
    # Traced under the target's (abstract) mesh: the Pallas kernel's Triton lowering asks for the
    # GPU's compute capability, which on a CPU host only the target's abstract device has (jax >= 0.11).
    mesh = make_mesh(1, 1, 1, devices=topology.devices)
    abstract = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)  # noqa: E731
    params = jax.tree.map(abstract, jax.eval_shape(lambda: init_params(config, jax.random.key(0))))
    tokens = jax.ShapeDtypeStruct((batch // sampling.num_samples, prompt), jnp.int32, sharding=sharding)
    key = abstract(jax.eval_shape(lambda: jax.random.key(0)))
    start = time.perf_counter()
    options = {"xla_dump_to": dump_dir} if dump_dir else None
    with on_mesh(mesh):
        lowered = sample.lower(params, tokens, tokens, key, config=config, sampling=sampling)
    compiled = lowered.compile(options)
    return compiled, time.perf_counter() - start


def _target_bandwidth(target_path):
    name = os.path.basename(target_path).split(".")[0].upper()
    return name, next((v for k, v in HBM_BANDWIDTH.items() if k in name), HBM_BANDWIDTH["H100"])


def _mean_slots_read(offset, total, new):
    """Mean slots the Pallas kernel reads per row over the decode: slots [0, offset + t] filled at
    step t, rounded up to its blocks."""
    from sharpjax.models.transformer import _pallas_decode_blocks

    block_k, _ = _pallas_decode_blocks(total)
    return float(np.mean([-(-(offset + t + 1) // block_k) * block_k for t in range(new)]))


def aot_report(config, batch, prompt, new, sampling, target_path):
    """Compiles `sample` for the GPU in `target_path` (compile-only) and reports one decode step."""
    from sharpjax.models.transformer import _pallas_decode_blocks, param_shapes

    compiled, compile_s = _compile_for_target(config, batch, prompt, sampling, target_path)
    hlo = compiled.as_text()
    body, text = _decode_body(hlo)
    stacked = set(jax.tree.leaves(param_shapes(config)["layers"], is_leaf=lambda x: isinstance(x, tuple)))
    weight_slices = len(stacked_weight_slices(text, stacked))
    cost = _body_cost(hlo, body)
    memory = compiled.memory_analysis()
    name, bandwidth = _target_bandwidth(target_path)
    itemsize = jnp.dtype(config.jnp_dtype).itemsize
    kv_slot = 2 * config.num_layers * config.num_kv_heads * config.head_dim * itemsize  # one token, all layers
    pallas_calls = text.count("__gpu$xla.gpu.triton")
    share = sampling.uses_shared_prompt_kv
    prompt_rows = batch // sampling.num_samples if share else batch
    kernel_kv_bytes = 0.0
    if pallas_calls:
        # XLA's cost analysis counts a Pallas (Triton) custom call as no memory traffic: add what
        # the kernel reads, the filled slots rounded up to its blocks, averaged over the decode.
        # (Prompts here are unpadded: a kernel call reads a prompt's P slots in full.)
        if not share:
            kernel_kv_bytes = batch * _mean_slots_read(prompt, prompt + new, new) * kv_slot
        else:  # the prompt part and the response part, each on the kernel when its slots fit
            if _pallas_decode_blocks(prompt):
                kernel_kv_bytes += prompt_rows * prompt * kv_slot
            if _pallas_decode_blocks(new):
                kernel_kv_bytes += batch * _mean_slots_read(0, new, new) * kv_slot
    step_bytes = cost.get("bytes accessed", 0.0) + kernel_kv_bytes
    return {
        "target": name, "compile_s": compile_s, "decode_attention": sampling.decode_attention,
        "num_samples": sampling.num_samples, "share_prompt_kv": share,
        "skip_finished_rows": sampling.skip_finished_rows, "weight_slices_per_step": weight_slices,
        "pallas_calls_per_step": pallas_calls, "step_flops": cost.get("flops", 0.0),
        "step_bytes_xla": cost.get("bytes accessed", 0.0), "step_bytes_pallas_kv": kernel_kv_bytes,
        "step_bytes": step_bytes, "step_roofline_ms": 1e3 * step_bytes / bandwidth,
        # What the attention must read: every slot (dense) or the filled ones, mean over the decode.
        "kv_bytes_all_slots": (prompt_rows * prompt + batch * new) * kv_slot,
        "kv_bytes_filled_mean": (prompt_rows * prompt + batch * (new + 1) / 2) * kv_slot,
        "temp_GB": memory.temp_size_in_bytes / 1e9, "argument_GB": memory.argument_size_in_bytes / 1e9,
        "output_GB": memory.output_size_in_bytes / 1e9,
    }


# Kernel classes of a decode step, in the order the breakdown prints them.
STEP_CLASSES = ("weight GEMMs", "logits GEMM", "attention (Pallas)", "attention (XLA dots)", "attention combine", "KV cache write",
                "embedding + sampling + log-probs (B x V)", "norm / rope / residual / MLP act", "loop bookkeeping")


def _classify(row, vocab, cache_bytes):
    shapes = [row["shape"], *row["operand_shapes"]]
    has_vocab = any(f",{vocab}]" in s or f"[{vocab}," in s for s in shapes)
    if row["calls"].startswith("gemm_fusion") or "gemm" in row["kind"].lower() or "cublas" in row["kind"]:
        einsum = row["op_name"].split("/")[-2] if "/" in row["op_name"] else ""
        if "s" in einsum.split("->")[0]:  # a contraction over cache slots (S): the dense attention
            return "attention (XLA dots)"
        return "logits GEMM" if f",{vocab}]" in row["shape"] else "weight GEMMs"
    if "triton" in row["kind"]:
        return "attention (Pallas)"
    if has_vocab:
        return "embedding + sampling + log-probs (B x V)"
    if "dynamic_update_slice" in row["calls"]:  # the cache, or the [B, M] token / log-prob records
        return "KV cache write" if row["out_bytes"] == cache_bytes else "loop bookkeeping"
    # The vendored `mqa`'s own split-combine, or `_combine_partials` (named_scope "attention_combine").
    if "mqa" in row["op_name"] or "attention" in row["op_name"]:
        return "attention combine"
    if row["out_bytes"] >= 64 * 1024:
        return "norm / rope / residual / MLP act"
    return "loop bookkeeping"


def aot_breakdown(config, batch, prompt, new, sampling, target_path, *, peak_flops, kernel_floor_us):
    """Every kernel of one decode step (the while body of the compiled `sample`), grouped by what
    it does, with its bytes and FLOPs, against the ideal step (weights once + the filled KV once).

    Bytes: XLA's cost analysis of each kernel alone (`rollout.hlo.kernel_costs`), gathers
    counted as what they gather, and for a Pallas kernel (opaque to XLA) its q, outputs and the
    KV slots it reads: a prompt cache in full (prompts are unpadded here), the decoded cache's
    filled slots rounded up to the kernel's blocks, mean over the decode. Time per kernel: the
    roofline max(bytes / HBM bandwidth, FLOPs / peak); `kernel_floor_us` is an assumed minimum
    time per kernel launch (small kernels do not reach the bandwidth), shown as a second column.
    """
    import glob
    import tempfile

    from sharpjax.rollout.hlo import kernel_costs, loop_launches

    with tempfile.TemporaryDirectory() as dump:
        compiled, compile_s = _compile_for_target(config, batch, prompt, sampling, target_path, dump_dir=dump)
        (thunk_file,) = glob.glob(os.path.join(dump, "*sample*thunk_sequence_after_thunk_passes.txt"))
        with open(thunk_file) as f:
            # The decode loop is the while with the largest body (the prefill's layer scan is one layer).
            decode_launches = max(loop_launches(f.read()), key=lambda loop: loop["launches"])
    hlo = compiled.as_text()
    body, _ = _decode_body(hlo)
    rows = kernel_costs(hlo, body, jax.devices("cpu")[0].client)
    name, bandwidth = _target_bandwidth(target_path)
    itemsize = jnp.dtype(config.jnp_dtype).itemsize
    share = sampling.uses_shared_prompt_kv
    slots = new if share else prompt + new
    cache_bytes = batch * config.num_kv_heads * slots * config.head_dim * itemsize  # one layer's K (or V)
    kernels = {row["name"] for row in rows}
    for row in rows:
        row["class"] = _classify(row, config.vocab_size, cache_bytes)
        if row["class"] == "attention (Pallas)":
            q, k, v = row["operand_bytes"][:3]
            decoded = row["sources"][1] in kernels  # written this step: the decoded cache, not the prompt's
            total = k // (config.num_kv_heads * config.head_dim * itemsize * (batch if decoded else
                                                                                batch // sampling.num_samples))
            fraction = _mean_slots_read(0 if share else prompt, total, new) / total if decoded else 1.0
            row["hbm_bytes"] = q + fraction * (k + v) + row["out_bytes"]
        row["roofline_us"] = 1e6 * max(row["hbm_bytes"] / bandwidth, row["flops"] / peak_flops)
        row["floor_us"] = max(row["roofline_us"], kernel_floor_us)
    weights = config.num_params * itemsize
    prompt_rows = batch // sampling.num_samples if share else batch
    kv_slot = 2 * config.num_layers * config.num_kv_heads * config.head_dim * itemsize
    ideal_kv = (prompt_rows * prompt + batch * (new + 1) / 2) * kv_slot
    ideal = weights + ideal_kv
    classes = {}
    for c in STEP_CLASSES:
        members = [r for r in rows if r["class"] == c]
        classes[c] = {"kernels": len(members), "hbm_bytes": sum(r["hbm_bytes"] for r in members),
                      "xla_bytes": sum(r["bytes"] for r in members), "flops": sum(r["flops"] for r in members),
                      "roofline_us": sum(r["roofline_us"] for r in members),
                      "floor_us": sum(r["floor_us"] for r in members)}
    total = {k: sum(c[k] for c in classes.values()) for k in ("kernels", "hbm_bytes", "xla_bytes", "flops",
                                                              "roofline_us", "floor_us")}
    return {
        "target": name, "compile_s": compile_s, "num_layers": config.num_layers, "batch": batch, "prompt": prompt,
        "new_tokens": new, "decode_attention": sampling.decode_attention, "share_prompt_kv": share,
        "num_samples": sampling.num_samples, "hbm_bandwidth": bandwidth, "kernel_floor_us": kernel_floor_us,
        "ideal_bytes": ideal, "ideal_weight_bytes": weights, "ideal_kv_bytes": ideal_kv,
        "ideal_us": 1e6 * ideal / bandwidth, "classes": classes, "total": total,
        "decode_loop_launches": decode_launches,
        "kernels": [{"name": r["name"], "class": r["class"], "shape": r["shape"].split("{")[0],
                     "flops": r["flops"], "hbm_bytes": r["hbm_bytes"], "roofline_us": round(r["roofline_us"], 2)}
                    for r in rows],
    }


def print_breakdown(report, top=12):
    """The per-step table of `aot_breakdown`: one line per kernel class, then the largest kernels."""
    ideal = report["ideal_bytes"]
    print(f"decode step, {report['target']} compile-only estimate (no GPU): L={report['num_layers']}, "
          f"B={report['batch']}, P={report['prompt']}, M={report['new_tokens']}, "
          f"decode_attention={report['decode_attention']}, share_prompt_kv={report['share_prompt_kv']}")
    print(f"ideal: weights {report['ideal_weight_bytes'] / 1e9:.3f} GB + filled KV {report['ideal_kv_bytes'] / 1e9:.3f}"
          f" GB = {ideal / 1e9:.3f} GB = {report['ideal_us']:.0f} us at {report['hbm_bandwidth'] / 1e12:.2f} TB/s")
    head = (f"{'class':34s} {'kernels':>7s} {'HBM MB':>9s} {'% ideal':>8s} {'XLA MB':>9s} {'GFLOP':>8s} "
            f"{'roofline us':>11s} {'>=' + str(report['kernel_floor_us']) + 'us/kernel':>14s}")
    print(head)
    for c, v in [*report["classes"].items(), ("total", report["total"])]:
        print(f"{c:34s} {v['kernels']:7d} {v['hbm_bytes'] / 1e6:9.1f} {100 * v['hbm_bytes'] / ideal:7.1f}% "
              f"{v['xla_bytes'] / 1e6:9.1f} {v['flops'] / 1e9:8.1f} {v['roofline_us']:11.0f} {v['floor_us']:14.0f}")
    loop = report["decode_loop_launches"]
    print(f"runtime (XLA's thunk sequence): one decode step = {loop['launches']} launches (kernels and copies), "
          f"{loop['in_graphs']} of them in {loop['graphs']} command buffer(s) (CUDA graphs: one host launch each)")
    print(f"largest kernels by roofline time (of {len(report['kernels'])}):")
    for r in sorted(report["kernels"], key=lambda r: -r["roofline_us"])[:top]:
        print(f"  {r['roofline_us']:8.1f} us {r['hbm_bytes'] / 1e6:9.2f} MB {r['flops'] / 1e9:7.2f} GF  "
              f"{r['class']:30s} {r['name']} {r['shape'][:40]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--batch", type=int, default=None, help="default: 64 (GPU) / 8 (tiny)")
    parser.add_argument("--prompt", type=int, default=None, help="prompt tokens; default 256 / 32 (tiny)")
    parser.add_argument("--new-tokens", type=int, default=None, help="default 512 / 32 (tiny)")
    parser.add_argument("--dtype", default=None, help="default bfloat16 on GPU, float32 on CPU")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--profile", default=None, help="trace one sharpjax call into this dir; print top kernels")
    parser.add_argument("--samples", type=int, default=1, help="G samples per prompt (batch // G prompts)")
    parser.add_argument("--decode-attention", default="auto", help="SamplingConfig.decode_attention")
    parser.add_argument("--share-prompt-kv", action=argparse.BooleanOptionalAction,
                        default=SamplingConfig.share_prompt_kv,
                        help="SamplingConfig.share_prompt_kv: the G samples of a prompt read one prompt KV cache (G > 1 only)")
    parser.add_argument("--skip-finished-rows", action=argparse.BooleanOptionalAction,
                        default=SamplingConfig.skip_finished_rows,
                        help="SamplingConfig.skip_finished_rows (--lengths realistic times both)")
    parser.add_argument("--aot-target", default=None,
                        help="a GPU target .pbtxt: compile for it on the CPU and print the per-step estimate")
    parser.add_argument("--aot-breakdown", action="store_true",
                        help="with --aot-target: every kernel of one decode step, grouped, vs the ideal bytes")
    parser.add_argument("--layers", type=int, default=None,
                        help="override the model's layer count (cheaper compiles; per-layer kernels scale)")
    parser.add_argument("--kernel-floor-us", type=float, default=2.0,
                        help="--aot-breakdown: assumed minimum time of one kernel (a second time column)")
    parser.add_argument("--lengths", choices=("full", "realistic"), default="full",
                        help="full: every row generates --new-tokens; realistic: forced per-row lengths "
                             "(decode_cost.realistic_lengths)")
    parser.add_argument("--median-length", type=float, default=None,
                        help="realistic: median response tokens (default 400, or 400/1536 of a smaller budget)")
    parser.add_argument("--lengths-seed", type=int, default=0)
    parser.add_argument("--compare-full", action="store_true", help="realistic: also time the full-length run")
    args = parser.parse_args()
    on_cpu = jax.default_backend() == "cpu"
    tiny = args.size == "tiny"
    batch = args.batch or (8 if tiny else 64)
    prompt = args.prompt or (32 if tiny else 256)
    new = args.new_tokens or (32 if tiny else 512)
    dtype = args.dtype or ("float32" if on_cpu else "bfloat16")
    if batch % args.samples:
        parser.error(f"--batch {batch} must be a multiple of --samples {args.samples}.")
    if args.aot_target:
        dtype = args.dtype or "bfloat16"
    config = model_config(args.size, dtype)
    if args.layers:
        config = dataclasses.replace(config, num_layers=args.layers)
    sampling = SamplingConfig(max_new_tokens=new, ignore_eos=True, temperature=1.0, num_samples=args.samples,
                              decode_attention=args.decode_attention, share_prompt_kv=args.share_prompt_kv,
                              skip_finished_rows=args.skip_finished_rows)
    if args.aot_target and args.aot_breakdown:
        from sharpjax.plan.targets import GPUS

        name = _target_bandwidth(args.aot_target)[0].lower()
        peak = next((g.peak_flops for k, g in GPUS.items() if k in name), 989e12)
        report = aot_breakdown(config, batch, prompt, new, sampling, args.aot_target, peak_flops=peak,
                               kernel_floor_us=args.kernel_floor_us)
        print_breakdown(report)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, separators=(",", ":"))
        return
    if args.aot_target:
        report = aot_report(config, batch, prompt, new, sampling, args.aot_target)
        print(json.dumps(report, indent=2))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=2)
        return
    device_kind = jax.devices()[0].device_kind
    print(f"device: {device_kind} x{jax.device_count()}  model: {args.size} ({config.num_params / 1e9:.2f}B params, {dtype})")
    print(f"batch {batch} ({batch // args.samples} prompts x {args.samples}, "
          f"shared prompt KV={sampling.uses_shared_prompt_kv}), "
          f"prompt {prompt}, new tokens {new} (EOS ignored)")

    mesh = make_mesh(data=-1)
    params = init_params_sharded(config, jax.random.key(0), mesh)
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, config.vocab_size, (batch // args.samples, prompt)).astype(np.int32)
    mask = np.ones_like(tokens)

    if args.profile:
        profile_sharpjax(config, params, tokens, mask, sampling, args.profile)
    if args.lengths == "realistic":
        return realistic(args, config, params, tokens, mask, sampling, batch, prompt, new, dtype, device_kind)
    t_jax = time_sharpjax(config, params, tokens, mask, sampling, args.repeats)
    jax_tps = batch * new / t_jax
    results = {"device": device_kind, "size": args.size, "batch": batch, "prompt": prompt, "new_tokens": new,
               "dtype": dtype, "samples": args.samples, "share_prompt_kv": sampling.uses_shared_prompt_kv,
               "decode_attention": args.decode_attention, "sharpjax_s": t_jax, "sharpjax_tok_s": jax_tps}
    print(f"sharpjax: {t_jax:.3f}s  {jax_tps:,.0f} new tok/s")
    bw = next((v for k, v in HBM_BANDWIDTH.items() if k in device_kind), None)
    if bw:
        prompt_rows = batch // args.samples if sampling.uses_shared_prompt_kv else batch
        step_roofline = bytes_per_decode_step(config, batch, prompt, new, prompt_rows) / bw
        frac = step_roofline / (t_jax / new)
        results |= {"roofline_tok_s": batch / step_roofline, "roofline_fraction": frac}
        print(f"HBM roofline: {batch / step_roofline:,.0f} tok/s; sharpjax reaches {100 * frac:.1f}% of it "
              "(prefill time included in the measured time)")
    else:
        print("HBM roofline: n/a (unknown device bandwidth)")
    if not args.skip_hf:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        rows = lambda x: np.repeat(x, args.samples, axis=0)  # noqa: E731  (HF: the same B rows)
        t_hf = time_hf(config, params, rows(tokens), rows(mask), new, args.repeats, device)
        hf_tps = batch * new / t_hf
        results |= {"hf_s": t_hf, "hf_tok_s": hf_tps, "ratio": jax_tps / hf_tps}
        print(f"HF generate (static cache, {device}): {t_hf:.3f}s  {hf_tps:,.0f} new tok/s")
        print(f"ratio sharpjax / HF: {jax_tps / hf_tps:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


def realistic(args, config, params, tokens, mask, sampling, batch, prompt, new, dtype, device_kind):
    """`--lengths realistic`: forced per-row lengths; sharpjax with and without skipping finished
    rows, HF generate under the same lengths, and the HBM roofline of those lengths."""
    import dataclasses

    from decode_cost import decode_bytes, lengths_description, realistic_lengths

    lengths = realistic_lengths(batch, new, median=args.median_length, seed=args.lengths_seed)
    generated, steps = int(lengths.sum()), int(lengths.max())
    print(f"lengths: {lengths_description(new, args.median_length, seed=args.lengths_seed)}; "
          f"mean {lengths.mean():.0f}, {100 * (lengths == new).mean():.0f}% at the budget, {steps} steps, "
          f"{generated:,} tokens generated = {100 * generated / (batch * new):.1f}% of full length")
    results = {"device": device_kind, "size": args.size, "batch": batch, "prompt": prompt, "new_tokens": new,
               "dtype": dtype, "samples": args.samples, "share_prompt_kv": sampling.uses_shared_prompt_kv,
               "decode_attention": args.decode_attention, "lengths": "realistic",
               "lengths_description": lengths_description(new, args.median_length, seed=args.lengths_seed),
               "tokens_generated": generated, "steps": steps}
    bw = next((v for k, v in HBM_BANDWIDTH.items() if k in device_kind), None)
    shape = dict(num_params=config.num_params, num_layers=config.num_layers, num_kv_heads=config.num_kv_heads,
                 head_dim=config.head_dim, vocab_size=config.vocab_size, prompt_len=prompt, samples=args.samples,
                 share_prompt_kv=sampling.uses_shared_prompt_kv, itemsize=jnp.dtype(config.jnp_dtype).itemsize)
    runs = [("skip", True, lengths), ("noskip", False, lengths)] + ([("full", True, None)] if args.compare_full else [])
    for name, skip, forced in runs:
        t = time_sharpjax(config, params, tokens, mask, dataclasses.replace(sampling, skip_finished_rows=skip),
                          args.repeats, lengths=forced)
        tokens_run = generated if forced is not None else batch * new
        results |= {f"sharpjax_{name}_s": t, f"sharpjax_{name}_tok_s": tokens_run / t}
        label = {"skip": "finished rows skipped", "noskip": "no skipping (before)", "full": "full length"}[name]
        line = f"sharpjax ({label}): {t:.3f}s  {tokens_run:,} tokens  {tokens_run / t:,.0f} tok/s"
        if bw:
            mode = "noskip" if name == "noskip" else "skip"
            roofline = decode_bytes(lengths=lengths if forced is not None else np.full(batch, new), mode=mode,
                                    **shape).sum() / bw
            results[f"roofline_{name}_s"] = roofline
            line += f"  (HBM roofline {roofline:.3f}s: {100 * roofline / t:.1f}%)"
        print(line)
    print(f"skipping finished rows: {results['sharpjax_noskip_s'] / results['sharpjax_skip_s']:.2f}x faster "
          f"(on the dense XLA attention, e.g. any CPU run, it changes nothing)")
    if args.compare_full:
        print(f"realistic / full time: {results['sharpjax_skip_s'] / results['sharpjax_full_s']:.3f} "
              f"(tokens: {generated / (batch * new):.3f})")
    if not args.skip_hf:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        rows = lambda x: np.repeat(x, args.samples, axis=0)  # noqa: E731
        t_hf = time_hf(config, params, rows(tokens), rows(mask), new, args.repeats, device, lengths=lengths)
        results |= {"hf_s": t_hf, "hf_tok_s": generated / t_hf, "ratio": t_hf / results["sharpjax_skip_s"]}
        print(f"HF generate (static cache, {device}, the same forced lengths): {t_hf:.3f}s  "
              f"{generated / t_hf:,.0f} tok/s")
        print(f"ratio sharpjax / HF: {results['ratio']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
