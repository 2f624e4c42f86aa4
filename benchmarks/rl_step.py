"""RL step time with and without trimming the padding past the longest response.

The sampler allocates the whole response budget (`max_total_length` minus the prompt), but
the reward scoring and the update only need the columns up to the batch's longest response.
This runs the arithmetic RL loop (rollout, task reward, scoring, RLOO update) from the same
SFT base model, same seed, with `train.trim_padding` on and off, and prints the median step
time of each (first steps excluded: they compile) and the ratio. The alternative a user
would have is the loop without trimming: every padded column scored and back-propagated.

    python benchmarks/rl_step.py                   # the main job's default RL config (CPU, ~3 min)
    python benchmarks/rl_step.py --size quick      # smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile

from sharpjax.configs.small_scale import arithmetic_rl_config
from sharpjax.sft import resolve_model_dir
from sharpjax.train.config import RunConfig
from sharpjax.train.metrics import read_metrics
from sharpjax.train.trainer import train

WARMUP = 3  # steps that compile (a new response-length shape can still compile later: counted)


def time_steps(size: str, steps: int, trim: bool) -> dict:
    config = arithmetic_rl_config(size, "task")
    config.model_dir = resolve_model_dir(config.model_dir)
    config.train.steps = config.optim.total_steps = steps
    config.train.trim_padding = trim
    config.train.checkpoint_every = steps + 1
    config.train.export_final = False
    config.eval.at_start = False
    config.eval.every = steps + 1
    with tempfile.TemporaryDirectory() as workdir:
        train(RunConfig.from_config_dict(config), workdir, progress=False)
        all_rows = [r for r in read_metrics(workdir) if "step_s" in r]
        rows = all_rows[WARMUP:]
    return {
        # Step 1 of both sides starts from the same weights and samples with the same key, and
        # trimming is exact: the same rewards and (to fp32 reordering) the same loss.
        "step1": {k: all_rows[0][k] for k in (
            "reward/reward", "response_length", "entropy", "kl_to_base", "loss", "grad_norm")},
        "step_s": statistics.median(r["step_s"] for r in rows),
        "update_s": statistics.median(r["update_s"] for r in rows),
        "response_length": statistics.mean(r["response_length"] for r in rows),
        "budget": config.rollout.max_total_length,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("quick", "default"), default="default")
    parser.add_argument("--steps", type=int, default=20, help=f"steps per side ({WARMUP} warm-up steps are not timed)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.steps <= WARMUP:
        parser.error(f"--steps must be > {WARMUP} (the warm-up steps are not timed)")
    trimmed = time_steps(args.size, args.steps, trim=True)
    padded = time_steps(args.size, args.steps, trim=False)
    ratio = padded["step_s"] / trimmed["step_s"]
    print(f"arithmetic RL ({args.size}): mean response {trimmed['response_length']:.1f} tokens, "
          f"prompt + response budget {trimmed['budget']}")
    print(f"trimmed: {trimmed['step_s']:.3f} s/step (update {trimmed['update_s']:.3f} s)")
    print(f"padded:  {padded['step_s']:.3f} s/step (update {padded['update_s']:.3f} s)")
    print(f"ratio padded / trimmed step time: {ratio:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"size": args.size, "trimmed": trimmed, "padded": padded, "ratio": ratio}, f, indent=2)


if __name__ == "__main__":
    main()
