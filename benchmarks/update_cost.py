"""What the update costs when response lengths vary, with and without `train.group_by_length`:
a roofline estimate (no GPU).

The batch is as wide as its longest row after `trim_padding`; with realistic lengths (a long
tail: 10% of the rows at the budget, `decode_cost.realistic_lengths`) that is the whole budget,
so every micro-batch of `train_step` pays for the full width. `train.group_by_length` sorts the
rows by response length and trims each micro-batch to its own longest row
(`sharpjax.train.step.length_grouped_micro_batches`, the trainer's own grouping). Per
micro-batch, the plan's closed form of the update (`sharpjax.plan.analytic._phases`,
"train_step": forward, recomputed forward and backward FLOPs at that width, the weights read
three times, the activations' traffic; max(FLOPs / peak, bytes / bandwidth)); the optimizer
phase once a step.

    python benchmarks/update_cost.py                 # llama3b h200x1, prompt 256, 10 length draws
    python benchmarks/update_cost.py --json out.json

Everything here is an estimate: the roofline of the plan's closed forms, no kernel overheads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from decode_cost import PAPER_MEDIAN, lengths_description, realistic_lengths  # noqa: E402


def update_seconds(run, model, shapes, gpu, widths_rows) -> float:
    """Roofline seconds of one update made of micro-batches of (width, rows): each its own
    forward + backward phase, the optimizer once."""
    from sharpjax.plan.analytic import _phases

    total = 0.0
    for width, rows in widths_rows:
        s = dataclasses.replace(shapes, rows=rows, micro_batches=1, new_tokens=width - shapes.prompt_len)
        (flops, hbm, n), _ = _phases("train_step", run, model, s)
        total += n * max(flops / gpu.peak_flops, hbm / gpu.hbm_bandwidth)
    (_, (flops, hbm, n)) = _phases("train_step", run, model, shapes)
    return total + n * max(flops / gpu.peak_flops, hbm / gpu.hbm_bandwidth)


def estimate(run, model, gpu, *, prompt_len: int, seeds: int, median: float) -> dict:
    from sharpjax.plan.shapes import plan_shapes
    from sharpjax.rollout.sampler import trimmed_response_slots
    from sharpjax.train.compiles import width_step
    from sharpjax.train.step import length_grouped_micro_batches

    shapes = dataclasses.replace(plan_shapes(run, model, 1), prompt_len=prompt_len)
    budget = run.rollout.max_total_length - prompt_len
    rows, mb, step = shapes.rows, shapes.micro_batches, width_step(run)
    per = rows // mb
    full = update_seconds(run, model, shapes, gpu, [(prompt_len + budget, per)] * mb)
    plain, grouped, tokens, columns = [], [], [], []
    for seed in range(seeds):
        lengths = realistic_lengths(rows, budget, median=median, seed=seed)
        width = prompt_len + trimmed_response_slots(budget, int(lengths.max()), prompt_len=prompt_len,
                                                    width_step=step)
        groups = length_grouped_micro_batches(lengths, mb, prompt_len=prompt_len, budget=budget, width_step=step)
        plain.append(update_seconds(run, model, shapes, gpu, [(width, per)] * mb))
        grouped.append(update_seconds(run, model, shapes, gpu, [(w, len(i)) for i, w in groups]))
        tokens.append(float(lengths.sum()))
        columns.append(sum(len(i) * (w - prompt_len) for i, w in groups) / (rows * (width - prompt_len)))
    return {"prompt_len": prompt_len, "budget": budget, "rows": rows, "micro_batches": mb, "width_step": step,
            "remat": run.train.remat, "lengths": lengths_description(budget, median), "seeds": seeds,
            "full_length_s": full, "realistic_plain_s": float(np.mean(plain)),
            "realistic_grouped_s": float(np.mean(grouped)),
            "tokens_ratio": float(np.mean(tokens)) / (rows * budget),
            "grouped_response_columns_ratio": float(np.mean(columns))}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="llama3b:task:h200x1", help="experiments/rl_math.py's argument")
    parser.add_argument("--remat", default="dots", help="the policy the plan resolves 'auto' to (AOT: dots)")
    parser.add_argument("--prompts", type=int, nargs="+", default=[256, 512], help="prompt lengths (tokens)")
    parser.add_argument("--median", type=float, default=PAPER_MEDIAN)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import importlib.util

    from sharpjax.plan.shapes import model_config_for
    from sharpjax.plan.targets import parse_target
    from sharpjax.train.config import RunConfig

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("rl_math", os.path.join(root, "experiments", "rl_math.py"))
    rl_math = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rl_math)
    c = rl_math.get_config(args.config)
    c.train.remat = args.remat
    if c.rollout.chunk_prompts == "auto":  # the rollout's chunking is not the update's business
        c.rollout.chunk_prompts = c.rollout.prompts_per_step
    run = RunConfig.from_config_dict(c)
    model = model_config_for(run)
    target = parse_target(run.plan.target)
    gpu = target.gpu
    print(f"estimate (no GPU): the update of rl_math.py:{args.config} on one {gpu.name.upper()} "
          f"({gpu.peak_flops / 1e12:.0f} TFLOP/s, {gpu.hbm_bandwidth / 1e12:.1f} TB/s), remat {args.remat}, "
          "the plan's closed-form roofline")
    results = []
    for p in args.prompts:
        e = estimate(run, model, gpu, prompt_len=p, seeds=args.seeds, median=args.median)
        results.append(e)
        print(f"\nprompt {p}, response budget {e['budget']}, {e['rows']} rows in {e['micro_batches']} micro-batches, "
              f"width grid {e['width_step']}; realistic lengths: {e['lengths']} (mean of {e['seeds']} draws): "
              f"{100 * e['tokens_ratio']:.1f}% of the full-length tokens")
        print(f"  full length:                     {e['full_length_s']:6.2f} s")
        print(f"  realistic, train_step:           {e['realistic_plain_s']:6.2f} s (the batch is as wide as its "
              f"longest row)")
        print(f"  realistic, group_by_length:      {e['realistic_grouped_s']:6.2f} s "
              f"({e['realistic_plain_s'] / e['realistic_grouped_s']:.2f}x; response columns computed "
              f"{100 * e['grouped_response_columns_ratio']:.1f}% of the batch's)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": args.config, "target": target.name, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
