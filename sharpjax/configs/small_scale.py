"""The small-scale experiment's sizes, in one table: RL runs, held-out evaluation (and, re-exported from
`sharpjax.sft.config.sft_config`, the SFT base model's: `sft` resolves `sft:<size>` and sits below `configs`).

Sizes: "quick" (CI plumbing: seconds, the numbers mean little), "default" (the main job:
minutes on a 2-core CPU, large enough for the effects the paper is about to show up) and
"large" (the same base model, 2x the batch and ~4x the steps: for a GPU, or an hour-scale CPU run).
`experiments/rl_arithmetic.py`, `experiments/sft_arithmetic.py` and the main job
(`python -m sharpjax`) all read this table.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from sharpjax.configs.base import base_config, reward_preset
from sharpjax.errors import ConfigError
from sharpjax.sft.config import sft_config  # noqa: F401 - the SFT sizes live with SFTConfig (below configs)

__all__ = ["SIZES", "SmallScaleSize", "arithmetic_rl_config", "sft_config"]


@dataclasses.dataclass(frozen=True)
class SmallScaleSize:
    """One size of the small-scale experiment.

    Attributes:
      steps, prompts_per_step, samples_per_prompt, lr: the RL runs (optimizer steps, P x K per step, AdamW lr).
      eval_every, num_validation_problems, eval_samples: validation during RL (best checkpoint by pass@1).
      train_problems: the RL training pool (generated from the task's train split).
      base_model: which SFT size the RL runs start from ("large" reuses the calibrated default model).
      test_problems, test_samples: the main job's held-out evaluation of every model (pass@k, maj@k).
    """

    steps: int
    prompts_per_step: int
    samples_per_prompt: int
    lr: float
    eval_every: int
    num_validation_problems: int
    eval_samples: int
    train_problems: int
    base_model: str
    test_problems: int
    test_samples: int


SIZES = {
    "quick": SmallScaleSize(steps=4, prompts_per_step=4, samples_per_prompt=4, lr=3e-4, eval_every=2,
                            num_validation_problems=8, eval_samples=2, train_problems=2000, base_model="quick",
                            test_problems=16, test_samples=4),
    # On the two-style base (2026-12-01), 40 steps at 1e-4 resolve every effect at 3 seeds (task
    # +17.9 +- 0.8 points of pass@1, likelihood -8.7 +- 0.1; BENCHMARKS.md) in ~10 min for one seed.
    # On the earlier one-style base: 80 steps at 5e-5 gave +2.5 (32 prompts); 3e-4 and 1e-3 x 40
    # destroyed it (0.41, 0.02 from 0.51).
    "default": SmallScaleSize(steps=40, prompts_per_step=32, samples_per_prompt=8, lr=1e-4, eval_every=20,
                              num_validation_problems=64, eval_samples=4, train_problems=2000, base_model="default",
                              test_problems=300, test_samples=16),
    "large": SmallScaleSize(steps=300, prompts_per_step=64, samples_per_prompt=8, lr=5e-5, eval_every=25,
                            num_validation_problems=256, eval_samples=4, train_problems=20000, base_model="default",
                            test_problems=500, test_samples=16),
}

def size(name: str) -> SmallScaleSize:
    if name not in SIZES:
        raise ConfigError(f"unknown small-scale size {name!r}; expected one of {', '.join(SIZES)}.")
    return SIZES[name]


def arithmetic_rl_config(name: str = "quick", reward: str = "task") -> ml_collections.ConfigDict:
    """RL on the arithmetic task from the project's own SFT base model (`model_dir = "sft:<size>"`)."""
    s = size(name)
    c = base_config(f"sft:{s.base_model}")
    c.dtype = "float32"
    c.reward.update(reward_preset(reward))
    c.optim.update(learning_rate=s.lr, warmup_steps=0, total_steps=s.steps)
    c.rollout.update(prompts_per_step=s.prompts_per_step, samples_per_prompt=s.samples_per_prompt,
                     max_total_length=128, prompt_buckets=(32, 48, 64))
    c.data.update(task="arithmetic", num_train_problems=s.train_problems,
                  num_validation_problems=s.num_validation_problems, difficulty="auto", validation=("arithmetic",))
    c.eval.update(every=s.eval_every, num_samples=s.eval_samples)
    c.train.update(steps=s.steps, seed=0, remat="none", logits_chunk=128, checkpoint_every=s.eval_every, keep_last=1)
    return c
