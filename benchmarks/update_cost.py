"""What the update (and the reference scoring) cost when response lengths vary, with and without
`train.group_by_length`: a roofline estimate (no GPU).

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
    python benchmarks/update_cost.py --measure small  # + both updates timed here (CPU: ~1 min)

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


def scoring_seconds(run, model, shapes, gpu, widths_rows) -> float:
    """Roofline seconds of the reference scoring made of passes of (width, rows)."""
    from sharpjax.plan.analytic import _phases

    total = 0.0
    for width, rows in widths_rows:
        s = dataclasses.replace(shapes, rows=rows, new_tokens=width - shapes.prompt_len)
        phases = _phases("scoring", run, model, s)
        total += sum(n * max(f / gpu.peak_flops, b / gpu.hbm_bandwidth) for f, b, n in phases)
    return total


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
    from sharpjax.rollout.scoring import rows_per_micro_batch
    from sharpjax.train.compiles import widest_width

    # The grouped scoring's rows per pass (as the trainer sizes them), the plain scoring's one pass.
    ref_rows = rows_per_micro_batch(rows, widest_width(run), tokens_per_micro_batch=run.train.tokens_per_micro_batch)
    scoring_full = scoring_seconds(run, model, shapes, gpu, [(prompt_len + budget, rows)])
    plain, grouped, tokens, columns, sc_plain, sc_grouped = [], [], [], [], [], []
    for seed in range(seeds):
        lengths = realistic_lengths(rows, budget, median=median, seed=seed)
        width = prompt_len + trimmed_response_slots(budget, int(lengths.max()), prompt_len=prompt_len,
                                                    width_step=step)
        groups = length_grouped_micro_batches(lengths, mb, prompt_len=prompt_len, budget=budget, width_step=step)
        plain.append(update_seconds(run, model, shapes, gpu, [(width, per)] * mb))
        grouped.append(update_seconds(run, model, shapes, gpu, [(w, len(i)) for i, w in groups]))
        sc_plain.append(scoring_seconds(run, model, shapes, gpu, [(width, rows)]))
        ref_groups = length_grouped_micro_batches(lengths, rows // ref_rows, prompt_len=prompt_len, budget=budget,
                                                  width_step=step)
        sc_grouped.append(scoring_seconds(run, model, shapes, gpu, [(w, len(i)) for i, w in ref_groups]))
        tokens.append(float(lengths.sum()))
        columns.append(sum(len(i) * (w - prompt_len) for i, w in groups) / (rows * (width - prompt_len)))
    return {"prompt_len": prompt_len, "budget": budget, "rows": rows, "micro_batches": mb, "width_step": step,
            "remat": run.train.remat, "lengths": lengths_description(budget, median), "seeds": seeds,
            "full_length_s": full, "realistic_plain_s": float(np.mean(plain)),
            "realistic_grouped_s": float(np.mean(grouped)),
            "scoring_full_length_s": scoring_full, "scoring_realistic_plain_s": float(np.mean(sc_plain)),
            "scoring_realistic_grouped_s": float(np.mean(sc_grouped)), "scoring_rows_per_pass": ref_rows,
            "tokens_ratio": float(np.mean(tokens)) / (rows * budget),
            "grouped_response_columns_ratio": float(np.mean(columns))}


MEASURE_SIZES = {  # a CPU-sized model whose update is compute, not dispatch: the measured ratio
    "small": dict(vocab_size=2048, hidden_size=256, intermediate_size=768, num_layers=4, num_heads=8,
                  num_kv_heads=4, head_dim=32),
}


def measure(*, size: str, rows: int, micro_batches: int, prompt_len: int, budget: int, repeats: int,
            seed: int = 0) -> dict:
    """Times, on this machine, `train_step` (scanned micro-batches at the batch's width) and the
    length-grouped update on one batch of random tokens with realistic response lengths (right
    padding after each row's response), fp32; the min over `repeats` after a warm-up call."""
    import time

    import jax
    from _shapes import SIZES

    from sharpjax.models import init_params
    from sharpjax.models.config import ModelConfig
    from sharpjax.rollout.sampler import trimmed_response_slots
    from sharpjax.train.config import OptimConfig
    from sharpjax.train.optim import make_optimizer
    from sharpjax.train.step import (
        StepConfig,
        TrainBatch,
        init_train_state,
        length_grouped_update,
        make_grouped_update,
        make_train_step,
    )

    shape = {**SIZES, **MEASURE_SIZES}[size]
    config = ModelConfig(model_type="llama", max_position_embeddings=4 * (prompt_len + budget), dtype="float32",
                         **shape)
    lengths = realistic_lengths(rows, budget, seed=seed)
    width = prompt_len + trimmed_response_slots(budget, int(lengths.max()), prompt_len=prompt_len)
    rng = np.random.default_rng(seed)
    pos = np.arange(width)[None]
    ends = prompt_len + lengths[:, None]
    response = ((pos >= prompt_len) & (pos < ends)).astype(np.int32)
    batch = TrainBatch(tokens=rng.integers(3, config.vocab_size, (rows, width)).astype(np.int32),
                       attention_mask=(pos < ends).astype(np.int32), response_mask=response,
                       rollout_logprobs=np.float32(-np.log(config.vocab_size)) * response,
                       advantages=rng.normal(size=rows).astype(np.float32),
                       ref_logprobs=np.zeros((rows, width), np.float32))
    cfg = StepConfig(model=config, optim=OptimConfig(learning_rate=1e-5, warmup_steps=0),
                     micro_batches=micro_batches, remat="full", logits_chunk=128)
    params = init_params(config, jax.random.key(seed))

    def timed(step_fn):
        state = init_train_state(params, make_optimizer(cfg.optim))
        times = []
        for _ in range(repeats + 1):  # the first call compiles
            t = time.perf_counter()
            state, metrics = step_fn(state)
            jax.block_until_ready((state, metrics))
            times.append(time.perf_counter() - t)
        assert float(metrics["update_skipped"]) == 0.0
        return min(times[1:]), float(metrics["loss"])

    device_batch = jax.tree.map(jax.numpy.asarray, batch)
    train_step = make_train_step(cfg, init_train_state(params, make_optimizer(cfg.optim)), None)
    plain_s, plain_loss = timed(lambda st: train_step(st, device_batch))
    grouped = make_grouped_update(cfg, init_train_state(params, make_optimizer(cfg.optim)), None)
    grouped_s, grouped_loss = timed(lambda st: length_grouped_update(
        grouped, st, batch, lengths, micro_batches=micro_batches, prompt_len=prompt_len))
    return {"size": size, "params": config.num_params, "rows": rows, "micro_batches": micro_batches,
            "prompt_len": prompt_len, "budget": budget, "width": width, "tokens": int(lengths.sum()),
            "lengths": lengths_description(budget), "repeats": repeats, "device": jax.devices()[0].device_kind,
            "train_step_s": plain_s, "group_by_length_s": grouped_s, "speedup": plain_s / grouped_s,
            "loss_train_step": plain_loss, "loss_group_by_length": grouped_loss}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="llama3b:task:h200x1", help="experiments/rl_math.py's argument")
    parser.add_argument("--remat", default="dots", help="the policy the plan resolves 'auto' to (AOT: dots)")
    parser.add_argument("--prompts", type=int, nargs="+", default=[256, 512], help="prompt lengths (tokens)")
    parser.add_argument("--median", type=float, default=PAPER_MEDIAN)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--json", default=None)
    parser.add_argument("--measure", default=None, choices=["tiny", "small", "1b", "3b"],
                        help="also time both updates on this machine at this model size (random weights)")
    parser.add_argument("--measure-shape", type=int, nargs=4, default=[64, 8, 32, 480],
                        metavar=("ROWS", "MICRO_BATCHES", "PROMPT", "BUDGET"))
    parser.add_argument("--repeats", type=int, default=3)
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
        print(f"  reference scoring: full length {e['scoring_full_length_s']:.2f} s; realistic "
              f"{e['scoring_realistic_plain_s']:.2f} s as one batch, {e['scoring_realistic_grouped_s']:.2f} s grouped "
              f"({e['scoring_realistic_plain_s'] / e['scoring_realistic_grouped_s']:.2f}x; "
              f"{e['scoring_rows_per_pass']} rows a pass)")
    measured = None
    if args.measure:
        rows, mb, p, budget = args.measure_shape
        measured = measure(size=args.measure, rows=rows, micro_batches=mb, prompt_len=p, budget=budget,
                           repeats=args.repeats)
        m = measured
        print(f"\nmeasured on this machine ({m['device']}): model {m['size']} ({m['params'] / 1e6:.1f}M params, fp32), "
              f"{rows} rows in {mb} micro-batches, prompt {p} + budget {budget}, realistic lengths ({m['lengths']}): "
              f"{m['tokens']} response tokens, batch width {m['width']}; min of {m['repeats']} after a warm-up")
        print(f"  train_step {m['train_step_s']:.3f} s, group_by_length {m['group_by_length_s']:.3f} s: "
              f"{m['speedup']:.2f}x (losses {m['loss_train_step']:.6f} / {m['loss_group_by_length']:.6f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": args.config, "target": target.name, "results": results, "measured": measured},
                      f, indent=1)


if __name__ == "__main__":
    main()
