"""What a rollout's decode costs when response lengths vary (issue 28 item 3): an HBM-roofline estimate.

Random weights rarely emit EOS, so the benchmarks force each row's response length, drawn by
`realistic_lengths`: lognormal with median 400 tokens (or, for a budget under 1536 tokens, the
paper shape's ratio 400/1536 of the budget), sigma set so that 10% of the rows reach the budget,
rounded up and clipped to [1, budget], numpy's default_rng(seed). One draw per row: the G samples
of a prompt are drawn independently (the real ones are correlated, which would let a shared
prompt's part be skipped sooner; independence is the pessimistic case for that part).

A decode step reads the weights once for all rows, the logits' fp32 buffers (the plan's
`sharpjax.plan.analytic._phases` term, B * V * 4 * 3), and the KV cache each row's attention
reads: the length-aware Pallas kernel reads a row's filled slots rounded up to its blocks
(64 slots), the prompt's shared part once per prompt. `decode_bytes` gives that per step,
with and without skipping finished rows (`SamplingConfig.skip_finished_rows`), and for the
dense XLA attention (every allocated slot of every row, every step: it cannot skip):

    bytes(t) = c * params + B * V * 12 + kv_slot * (sum over prompts read of P
                                                     + sum over rows read of ceil((t + 1) / 64) * 64)
    kv_slot = 2 * layers * kv_heads * head_dim * c             (c = 2 bytes, bf16)
    rows read at step t: all B (before), those with t + 1 < length (after: they sample again)

and the decode's roofline time is sum_t bytes(t) / HBM bandwidth, t < the longest row's length.

    python benchmarks/decode_cost.py                  # llama3b on one H200, 256 rows, total 2048
    python benchmarks/decode_cost.py --json out.json

Everything here is an estimate (no GPU): bandwidth-bound, no kernel overheads, prefill excluded.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics

import numpy as np

PAPER_MEDIAN = 400  # tokens: the median response length simulated at the paper shape
PAPER_BUDGET = 1536  # response tokens a 512-token prompt leaves under max_total_length 2048
TAIL = 0.10  # fraction of rows that reach the budget
BLOCK_K = 64  # the Pallas kernel's key block for a slot count that is a multiple of 64


def default_median(budget: int) -> float:
    """400 tokens, or 400/1536 of the budget when the budget is under 1536 (the same shape)."""
    return min(PAPER_MEDIAN, PAPER_MEDIAN * budget / PAPER_BUDGET)


def _sigma(budget: int, median: float, tail: float) -> float:
    """The lognormal's sigma that puts a fraction `tail` of the draws at or above `budget`."""
    return math.log(budget / median) / statistics.NormalDist().inv_cdf(1 - tail)


def realistic_lengths(rows: int, budget: int, *, median: float | None = None, tail: float = TAIL,
                      seed: int = 0) -> np.ndarray:
    """[rows] response lengths in [1, budget]: lognormal(median, sigma) rounded up, clipped, with
    sigma = ln(budget / median) / z_(1 - tail), so that a fraction `tail` reaches the budget."""
    median = default_median(budget) if median is None else median
    if not 0 < median < budget:
        raise ValueError(f"median {median} must be in (0, budget={budget}).")
    sigma = _sigma(budget, median, tail)
    draws = np.random.default_rng(seed).lognormal(mean=math.log(median), sigma=sigma, size=rows)
    return np.clip(np.ceil(draws), 1, budget).astype(np.int32)


def lengths_description(budget: int, median: float | None = None, tail: float = TAIL, seed: int = 0) -> str:
    median = default_median(budget) if median is None else median
    sigma = _sigma(budget, median, tail)
    return (f"lognormal, median {median:.0f} tokens, sigma {sigma:.3f} ({100 * tail:.0f}% of rows at the budget "
            f"{budget}), ceil, clipped to [1, {budget}], default_rng({seed})")


def decode_bytes(*, num_params: int, num_layers: int, num_kv_heads: int, head_dim: int, vocab_size: int,
                 lengths: np.ndarray, prompt_len: int, samples: int, share_prompt_kv: bool = True,
                 mode: str = "skip", itemsize: int = 2, block_k: int = BLOCK_K,
                 fixed_bytes: float | None = None) -> np.ndarray:
    """HBM bytes of each decode step (one per token of the longest row) of one sampler call.

    Args:
      lengths: [B] response lengths, B = prompts * samples (rows i*G .. i*G+G-1: prompt i).
      mode: "skip" (finished rows read no KV), "noskip" (every row reads its filled slots until
        the longest row ends: the kernel before skipping), "dense" (XLA: every allocated slot
        of every row, the allocation being max(lengths) response slots).
      fixed_bytes: the bytes every step reads besides the KV cache; default weights + logits
        (the plan's terms), or XLA's own count from a GPU-target compile (`rollout.py --aot-target`:
        `step_bytes_xla`, which adds the step's activations, sampling and kernel outputs).
    """
    lengths = np.asarray(lengths)
    share_prompt_kv = share_prompt_kv and samples > 1  # as `SamplingConfig.uses_shared_prompt_kv`
    rows = lengths.size
    steps = int(lengths.max())
    kv_slot = 2 * num_layers * num_kv_heads * head_dim * itemsize
    fixed = itemsize * num_params + rows * vocab_size * 4 * 3 if fixed_bytes is None else fixed_bytes
    t = np.arange(steps)
    if mode == "dense":
        slots = np.full(steps, rows * (prompt_len + steps) if not share_prompt_kv
                        else rows // samples * prompt_len + rows * steps, np.float64)
        return fixed + kv_slot * slots
    read_TB = (t[:, None] + 1 < lengths[None, :]) if mode == "skip" else np.ones((steps, rows), bool)
    filled_T = np.ceil((t + 1) / block_k) * block_k  # response slots the kernel reads, to whole blocks
    if share_prompt_kv:
        prompts_read_T = read_TB.reshape(steps, rows // samples, samples).any(-1).sum(-1)
        slots = prompts_read_T * math.ceil(prompt_len / block_k) * block_k + read_TB.sum(-1) * filled_T
    else:
        slots = read_TB.sum(-1) * (np.ceil((prompt_len + t + 1) / block_k) * block_k)
    return fixed + kv_slot * slots


def estimate(*, model, bandwidth: float, rows: int, samples: int, prompt_len: int, total: int,
             median: float | None, seeds: int, fixed_bytes: float | None = None) -> dict:
    """The decode's roofline time at full length and at realistic lengths (before/after skipping)."""
    budget = total - prompt_len
    shape = dict(num_params=model.num_params, num_layers=model.num_layers, num_kv_heads=model.num_kv_heads,
                 head_dim=model.head_dim, vocab_size=model.vocab_size, prompt_len=prompt_len, samples=samples,
                 fixed_bytes=fixed_bytes)
    full = np.full(rows, budget)
    out = {"prompt_len": prompt_len, "budget": budget, "rows": rows, "samples": samples,
           "lengths": lengths_description(budget, median), "seeds": seeds,
           "weights_GB": 2 * model.num_params / 1e9,
           "kv_GB_per_row_at_budget": 2 * model.num_layers * model.num_kv_heads * model.head_dim * 2 * budget / 1e9}
    for name, lengths_list in (("full", [full]),
                               ("realistic", [realistic_lengths(rows, budget, median=median, seed=s)
                                              for s in range(seeds)])):
        res = {}
        for mode in ("dense", "noskip", "skip"):
            per = [decode_bytes(lengths=x, mode=mode, **shape) for x in lengths_list]
            res[f"{mode}_s"] = float(np.mean([b.sum() / bandwidth for b in per]))
            res[f"{mode}_GB_first_last_step"] = [float(np.mean([b[0] for b in per]) / 1e9),
                                                 float(np.mean([b[-1] for b in per]) / 1e9)]
        tokens = float(np.mean([x.sum() for x in lengths_list]))
        steps = float(np.mean([x.max() for x in lengths_list]))
        fixed = 2 * model.num_params + rows * model.vocab_size * 4 * 3 if fixed_bytes is None else fixed_bytes
        res |= {"tokens": tokens, "steps": steps, "weights_s": steps * 2 * model.num_params / bandwidth,
                "fixed_s": steps * fixed / bandwidth,
                "mean_length": tokens / rows, "at_budget": float(np.mean([(x == budget).mean() for x in lengths_list]))}
        for mode in ("dense", "noskip", "skip"):
            res[f"{mode}_tok_s"] = tokens / res[f"{mode}_s"]
            res[f"{mode}_kv_s"] = res[f"{mode}_s"] - res["fixed_s"]
        out[name] = res
    f, r = out["full"], out["realistic"]
    out["tokens_ratio"] = r["tokens"] / f["tokens"]  # what a cost that tracked tokens would be
    out["time_ratio_noskip"] = r["noskip_s"] / f["noskip_s"]
    out["time_ratio_skip"] = r["skip_s"] / f["skip_s"]
    out["skip_speedup"] = r["noskip_s"] / r["skip_s"]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="Llama-3.2-3B-Instruct")
    parser.add_argument("--target", default="h200")
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--prompts", type=int, nargs="+", default=[256, 512], help="prompt lengths (tokens)")
    parser.add_argument("--total", type=int, default=2048, help="max_total_length (prompt + response)")
    parser.add_argument("--median", type=float, default=PAPER_MEDIAN)
    parser.add_argument("--seeds", type=int, default=10, help="length draws averaged")
    parser.add_argument("--fixed-step-gb", type=float, default=None,
                        help="bytes per step besides the KV (GB); default weights + logits, or e.g. the "
                             "step_bytes_xla of a GPU-target compile (rollout.py --aot-target)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from sharpjax.models.config import ModelConfig
    from sharpjax.plan.shapes import PAPER_MODELS
    from sharpjax.plan.targets import GPUS

    model = ModelConfig.from_hf_dict(PAPER_MODELS[args.model], dtype="bfloat16")
    gpu = GPUS[args.target]
    fixed = "weights + logits" if args.fixed_step_gb is None else f"{args.fixed_step_gb} GB"
    print(f"estimate (no GPU): {args.model} decode on one {args.target.upper()} "
          f"({gpu.hbm_bandwidth / 1e12:.1f} TB/s), {args.rows} rows ({args.rows // args.samples} prompts x "
          f"{args.samples}, shared prompt KV), HBM roofline, prefill excluded; per step: {fixed} + the KV read")
    results = []
    for p in args.prompts:
        e = estimate(model=model, bandwidth=gpu.hbm_bandwidth, rows=args.rows, samples=args.samples, prompt_len=p,
                     total=args.total, median=args.median, seeds=args.seeds,
                     fixed_bytes=None if args.fixed_step_gb is None else args.fixed_step_gb * 1e9)
        results.append(e)
        f, r = e["full"], e["realistic"]
        print(f"\nprompt {p}, response budget {e['budget']}; realistic lengths: {e['lengths']} "
              f"(mean over {args.seeds} draws): mean {r['mean_length']:.0f} tokens, {100 * r['at_budget']:.0f}% "
              f"at the budget, {r['tokens']:,.0f} tokens = {100 * e['tokens_ratio']:.1f}% of full, "
              f"{r['steps']:.0f} steps")
        print(f"  weights {e['weights_GB']:.2f} GB per step = {1e3 * e['weights_GB'] * 1e9 / gpu.hbm_bandwidth:.2f} "
              f"ms; KV of one row at the budget {e['kv_GB_per_row_at_budget']:.3f} GB")
        print(f"  {'':24} {'dense XLA':>12} {'Pallas before':>14} {'Pallas skip':>12}")
        for name, res in (("full length", f), ("realistic", r)):
            print(f"  {name + ' decode s':24} {res['dense_s']:12.2f} {res['noskip_s']:14.2f} {res['skip_s']:12.2f}")
            print(f"  {name + ' tok/s':24} {res['dense_tok_s']:12,.0f} {res['noskip_tok_s']:14,.0f} "
                  f"{res['skip_tok_s']:12,.0f}")
            print(f"  {name + ' GB step 0 / last':24} {'%.1f / %.1f' % tuple(res['dense_GB_first_last_step']):>12} "
                  f"{'%.1f / %.1f' % tuple(res['noskip_GB_first_last_step']):>14} "
                  f"{'%.1f / %.1f' % tuple(res['skip_GB_first_last_step']):>12}")
        print(f"  realistic / full decode time: before {e['time_ratio_noskip']:.3f}, after {e['time_ratio_skip']:.3f} "
              f"(tokens {e['tokens_ratio']:.3f}); skipping cuts the realistic decode {e['skip_speedup']:.2f}x; "
              f"its floor, the weights read once per step: {r['weights_s']:.2f} s")
        print(f"  realistic, after = {r['fixed_s']:.2f} s fixed per step ({r['steps']:.0f} steps, set "
              f"by the longest row) + {r['skip_kv_s']:.2f} s KV (before: {r['noskip_kv_s']:.2f} s KV); at full "
              f"length the KV is {f['skip_kv_s']:.2f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
