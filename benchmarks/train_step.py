"""Train-step throughput: sharpjax `train_step` vs a PyTorch HF `LlamaForCausalLM` + AdamW step.

Both sides do one RL update of the same shape on the same synthetic rollout batch (random
weights: throughput does not depend on weight values):

* sharpjax: `sharpjax.train.step.make_train_step` as training runs it: fp32 master params
  cast to the compute dtype inside the step, per-layer remat ("full"), chunked fp32 logits,
  the paper's token-level REINFORCE loss with truncated importance weights, global-norm
  clipping and optax AdamW, jitted with the old state donated.
* PyTorch: `transformers.LlamaForCausalLM` in fp32 (master weights) under bf16 autocast on
  GPU, gradient checkpointing, fp32 log-softmax over the full logits, the same loss
  -(1/N_tok) sum_it min(exp(logp - logp_rollout), 20) * A_i * logp_it, `clip_grad_norm_`
  and `torch.optim.AdamW` (fused on GPU).

Every token of the batch goes through the forward and backward pass, so tokens/step =
batch x seq_len. Model-FLOPs utilisation is 6 * params * tokens / (step time * peak FLOP/s)
(the usual dense estimate: attention score FLOPs and the remat recompute are not counted),
with the peak bf16 dense FLOP/s looked up from the device kind or given by --peak-tflops.
Both sides run on one device. Compile / warm-up steps are excluded; each timed step is synchronized
(`jax.block_until_ready`, `torch.cuda.synchronize`) and the median is reported.

The PyTorch step runs first and frees its GPU memory before JAX allocates (JAX's allocator
does not hand memory back), so both fit on one 80 GB GPU at the 3B shape. With `--parity`
(default at --size tiny) both start from the same weights and the step-0 losses are
compared, which checks that the two sides compute the same loss.

    python benchmarks/train_step.py --size 3b            # GPU: the DESIGN.md setting
    python benchmarks/train_step.py --size tiny          # CPU smoke run
"""

from __future__ import annotations

import os

# The PyTorch phase needs the GPU memory that JAX would otherwise preallocate at import.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# Without preallocation JAX still caps itself at 75% of the GPU; the 3B step (fp32 master + Adam) needs more.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from _shapes import LLAMA3_ROPE, SIZES  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from sharpjax.losses import LossConfig  # noqa: E402
from sharpjax.models import ModelConfig  # noqa: E402
from sharpjax.models.hf import to_hf_state_dict  # noqa: E402
from sharpjax.parallel import init_params_sharded, make_mesh  # noqa: E402
from sharpjax.train.config import OptimConfig  # noqa: E402
from sharpjax.train.optim import make_optimizer  # noqa: E402
from sharpjax.train.step import (  # noqa: E402
    StepConfig,
    TrainBatch,
    batch_shardings,
    init_train_state,
    make_train_step,
)

# Peak dense bf16 FLOP/s by device_kind substring, first match wins (spec sheets, no sparsity).
PEAK_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("A100", 312e12),
)
IMPORTANCE_WEIGHT_CAP = LossConfig().importance_weight_cap  # the paper's 20, as in sharpjax's default


def model_config(size: str, dtype: str) -> ModelConfig:
    return ModelConfig(model_type="llama", rope=LLAMA3_ROPE, tie_word_embeddings=True, rms_norm_eps=1e-5,
                       max_position_embeddings=131072, dtype=dtype, **SIZES[size])


def peak_flops(device_kind: str, override_tflops: float | None) -> float | None:
    """Peak bf16 dense FLOP/s of the device, or None when unknown (e.g. CPU)."""
    if override_tflops:
        return override_tflops * 1e12
    return next((v for k, v in PEAK_FLOPS if k in device_kind), None)


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def synthetic_batch(config: ModelConfig, batch: int, seq_len: int, prompt_len: int, seed: int = 0) -> dict:
    """A rollout batch as numpy arrays: random tokens, no padding, the last
    seq_len - prompt_len positions of every row are the response (the loss's tokens).

    Rollout log-probs are set to -log V (what a near-uniform random model gives), so the
    importance weights are ~1 as in on-policy training; advantages are N(0, 1).
    """
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, config.vocab_size, (batch, seq_len)).astype(np.int32)
    response = (np.arange(seq_len) >= prompt_len)[None].repeat(batch, 0).astype(np.int32)
    return dict(
        tokens=tokens,
        attention_mask=np.ones_like(tokens),
        response_mask=response,
        rollout_logprobs=np.full((batch, seq_len), -math.log(config.vocab_size), np.float32) * response,
        advantages=rng.normal(size=batch).astype(np.float32),
        ref_logprobs=np.zeros((batch, seq_len), np.float32),
    )


def time_sharpjax(cfg: StepConfig, make_params, data: dict, mesh, warmup: int, iters: int) -> dict:
    """Times the jitted train step; the first `warmup` calls (compile included) are excluded.

    `make_params()` returns the initial params; only the train state keeps them alive (at
    3B a second fp32 copy would not leave room for the step on an 80 GB GPU).
    """
    optimizer = make_optimizer(cfg.optim)
    state = init_train_state(make_params(), optimizer)
    step = make_train_step(cfg, state, mesh)
    batch = jax.device_put(TrainBatch(**data), batch_shardings(mesh))
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    first = time.perf_counter() - start
    loss0 = float(metrics["loss"])  # on the initial weights
    for _ in range(warmup - 1):
        state, metrics = step(state, batch)
    jax.block_until_ready(state)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)
    assert float(metrics["update_skipped"]) == 0.0, "the step skipped its update (non-finite loss/grad)"
    return dict(first_step_s=first, times_s=times, loss_step0=loss0)


def time_torch(config: ModelConfig, hf_state: dict | None, data: dict, *, device: str, autocast: bool,
               optim: OptimConfig, micro_batches: int, warmup: int, iters: int) -> dict:
    """Times a HF LlamaForCausalLM + AdamW step doing the same loss (fp32 weights, bf16
    autocast when `autocast`, gradient checkpointing)."""
    import torch
    import transformers

    hf_cfg = transformers.LlamaConfig(**{k: v for k, v in config.to_hf_dict().items() if k != "torch_dtype"})
    hf_cfg.use_cache = False
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.LlamaForCausalLM(hf_cfg).float()
    if hf_state is not None:
        state = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in hf_state.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
        del state
    # transformers >= 5.2x renamed gradient_checkpointing_enable (the GPU machine has 5.17).
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()  # Llama has no dropout: train mode only turns checkpointing on
    opt = torch.optim.AdamW(model.parameters(), lr=optim.learning_rate, betas=(optim.b1, optim.b2), eps=optim.eps,
                            weight_decay=optim.weight_decay, fused=device == "cuda")
    t = {k: torch.from_numpy(v).to(device) for k, v in data.items()}
    ids, attn = t["tokens"].long(), t["attention_mask"].long()
    mask = t["response_mask"].float()
    num_tokens = mask.sum().clamp(min=1)
    log_cap = math.log(IMPORTANCE_WEIGHT_CAP)
    rows = ids.shape[0] // micro_batches

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def step():
        total = 0.0
        for m in range(micro_batches):
            sl = slice(m * rows, (m + 1) * rows)
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=autocast):
                logits = model(input_ids=ids[sl], attention_mask=attn[sl]).logits
            logits = logits[:, :-1].float()
            logp = logits.gather(-1, ids[sl, 1:, None])[..., 0] - torch.logsumexp(logits, dim=-1)
            logp = torch.nn.functional.pad(logp, (1, 0))
            m_bt = mask[sl]
            weight = torch.exp(torch.clamp(logp.detach() - t["rollout_logprobs"][sl], max=log_cap))
            loss = -(weight * t["advantages"][sl, None] * logp * m_bt).sum() / num_tokens
            loss.backward()
            total += loss.detach()
        if optim.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), optim.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return total

    start = time.perf_counter()
    loss0 = float(step())
    sync()
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        step()
    sync()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - start)
    assert math.isfinite(float(loss))
    del model, opt, t
    if device == "cuda":
        torch.cuda.empty_cache()  # hand the memory back before JAX allocates
    return dict(first_step_s=first, times_s=times, loss_step0=loss0)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--batch", type=int, default=8, help="sequences per step (default 8)")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per sequence; default 1024 / 128 (tiny)")
    parser.add_argument("--prompt-len", type=int, default=None, help="prompt tokens (no loss); default seq_len / 4")
    parser.add_argument("--dtype", default=None, help="compute dtype; default bfloat16 on GPU, float32 on CPU")
    parser.add_argument("--micro-batches", type=int, default=1, help="gradient accumulation, both sides")
    parser.add_argument("--remat", default="full", choices=("none", "full", "dots"), help="sharpjax remat policy")
    parser.add_argument("--logits-chunk", type=int, default=256, help="sharpjax positions per vocabulary chunk")
    parser.add_argument("--state-dtype", default="float32", choices=("float32", "bfloat16"),
                        help="sharpjax optim.state_dtype (Adam's mu); PyTorch keeps fp32")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (compile); default 2 (GPU) / 1 (CPU)")
    parser.add_argument("--iters", type=int, default=5, help="timed steps")
    parser.add_argument("--peak-tflops", "--peak_tflops", dest="peak_tflops", type=float, default=None,
                        help="peak FLOP/s for MFU (default: looked up from the device kind; none on CPU)")
    parser.add_argument("--parity", action=argparse.BooleanOptionalAction, default=None,
                        help="same initial weights on both sides, compare step-0 losses (default: on for tiny)")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--torch-only", action="store_true", help=argparse.SUPPRESS)  # the subprocess below
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()

    on_cpu = jax.default_backend() == "cpu"
    tiny = args.size == "tiny"
    seq_len = args.seq_len or (128 if tiny else 1024)
    prompt_len = args.prompt_len if args.prompt_len is not None else seq_len // 4
    dtype = args.dtype or ("float32" if on_cpu else "bfloat16")
    warmup = max(1, args.warmup if args.warmup is not None else (1 if on_cpu else 2))
    parity = tiny if args.parity is None else args.parity
    config = model_config(args.size, dtype)
    cfg = StepConfig(model=config, loss=LossConfig(), optim=OptimConfig(state_dtype=args.state_dtype),
                     micro_batches=args.micro_batches, remat=args.remat, logits_chunk=args.logits_chunk)
    device_kind = jax.devices()[0].device_kind
    tokens_per_step = args.batch * seq_len
    flops_per_step = 6 * config.num_params * tokens_per_step
    peak = peak_flops(device_kind, args.peak_tflops)
    print(f"device: {device_kind} (1 of {jax.device_count()})  model: {args.size} ({_count(config.num_params)} params, "
          f"{dtype} compute, fp32 master)")
    print(f"batch {args.batch} x {seq_len} tokens ({prompt_len} prompt, {seq_len - prompt_len} response), "
          f"micro-batches {args.micro_batches}, remat {args.remat}, logits chunk {args.logits_chunk}, "
          f"Adam mu {args.state_dtype}; {warmup} warm-up + {args.iters} timed steps")
    data = synthetic_batch(config, args.batch, seq_len, prompt_len)
    results = {"device": device_kind, "size": args.size, "batch": args.batch,
               "seq_len": seq_len, "prompt_len": prompt_len, "dtype": dtype, "num_params": config.num_params,
               "tokens_per_step": tokens_per_step, "peak_flops": peak}

    # One device on both sides: the PyTorch step is single-device, and MFU uses one device's peak.
    mesh = make_mesh(data=1, devices=jax.devices()[:1])

    def init_params():  # fp32: they become the master weights
        return init_params_sharded(config.replace(dtype="float32"), jax.random.key(0), mesh)

    shared, hf_state = [], None
    if parity:
        shared.append(init_params())
        hf_state = to_hf_state_dict(shared[0], config)

    def report(name: str, r: dict) -> float:
        t = statistics.median(r["times_s"])
        tps = tokens_per_step / t
        mfu = f"MFU {100 * flops_per_step / (t * peak):.1f}%" if peak else "MFU n/a (unknown peak; --peak-tflops)"
        print(f"{name}: {t * 1e3:.1f} ms/step (median of {len(r['times_s'])}; first step {r['first_step_s']:.1f}s)  "
              f"{tps:,.0f} tok/s  {mfu}")
        results[name] = r | {"median_s": t, "tok_s": tps, "mfu": flops_per_step / (t * peak) if peak else None}
        return tps

    torch_tps = None
    if not args.skip_torch and not parity and not args.torch_only and not on_cpu:
        # The PyTorch step in its own process: its CUDA memory is returned when it exits, and
        # JAX (whose allocator keeps what it takes) then has the whole GPU, as in training.
        import subprocess
        import sys
        import tempfile

        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            argv, skip = [], False
            for a in sys.argv[1:]:  # everything but --json
                if skip or a.startswith("--json="):
                    skip = False
                    continue
                skip = a == "--json"
                if not skip:
                    argv.append(a)
            subprocess.run([sys.executable, __file__, *argv, "--torch-only", "--json", f.name], check=True)
            sub = json.load(open(f.name))
        name = f"torch ({sub['torch_device']})"
        results[name], results["torch_device"] = sub[name], sub["torch_device"]
        torch_tps = results[name]["tok_s"]
        args.skip_torch = True
    if not args.skip_torch:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu" and dtype == "bfloat16":
            print("note: PyTorch on CPU runs fp32 (no bf16 autocast)")
        r = time_torch(config, hf_state, data, device=device, autocast=device == "cuda" and dtype == "bfloat16",
                       optim=cfg.optim, micro_batches=args.micro_batches, warmup=warmup, iters=args.iters)
        torch_tps = report(f"torch ({device})", r)
        results["torch_device"] = device
    del hf_state
    if args.torch_only:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        return

    r = time_sharpjax(cfg, shared.pop if shared else init_params, data, mesh, warmup, args.iters)
    jax_tps = report("sharpjax", r)
    if parity and torch_tps is not None:
        a, b = results["sharpjax"]["loss_step0"], results[f"torch ({device})"]["loss_step0"]
        print(f"step-0 loss (same weights): sharpjax {a:.6g}  torch {b:.6g}  |diff| {abs(a - b):.2g}")
    if torch_tps is not None:
        results["ratio"] = jax_tps / torch_tps
        print(f"ratio sharpjax / torch: {jax_tps / torch_tps:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
