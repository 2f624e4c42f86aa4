"""Named configurations of the small-scale reproduction, shared by `experiments/*.py` and the main job.

Sizes: "quick" (CI plumbing: seconds, the numbers mean little), "default" (the main job:
minutes on a 2-core CPU, large enough for the effects the paper is about to show up) and
"large" (the same base model, 4x the batch and ~4x the steps: for a GPU, or an hour-scale CPU run).
"""

from __future__ import annotations

import ml_collections

from sharpjax.train.config import reward_preset

RL_SIZES = {
    "quick": dict(steps=4, prompts_per_step=4, samples_per_prompt=4, eval_every=2, num_validation_problems=8,
                  eval_samples=2, lr=3e-4),
    # Task reward, held-out pass@1 gain on 300 problems x 16 samples (base 0.497), seed 0:
    # 16 prompts x 80 steps at 5e-5 +0.9 (100 problems), x 160 steps +1.9, at 1e-4 x 160 +1.0;
    # 32 prompts x 80 steps at 5e-5 +2.5: batch noise, not the step count, limits it. 3e-4 and
    # 1e-3 x 40 destroyed the model (0.41, 0.02 from 0.51).
    "default": dict(steps=80, prompts_per_step=32, samples_per_prompt=8, eval_every=20, num_validation_problems=64,
                    eval_samples=4, lr=5e-5),
    "large": dict(steps=300, prompts_per_step=64, samples_per_prompt=8, eval_every=25, num_validation_problems=256,
                  eval_samples=4, lr=5e-5),
}
# The SFT base model each RL size starts from ("large" reuses the calibrated default model).
BASE_MODEL_SIZE = {"quick": "quick", "default": "default", "large": "default"}
TRAIN_PROBLEMS = {"quick": 2000, "default": 2000, "large": 20000}


def _none(field_type):
    return ml_collections.FieldReference(None, field_type=field_type)


def arithmetic_rl_config(size: str = "quick", reward: str = "task") -> ml_collections.ConfigDict:
    """RL on the arithmetic task from the project's own SFT base model (`model_dir = "sft:<size>"`)."""
    if size not in RL_SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {sorted(RL_SIZES)}.")
    s = RL_SIZES[size]
    c = ml_collections.ConfigDict()
    c.model_dir = f"sft:{BASE_MODEL_SIZE[size]}"
    c.ref_model_dir = _none(str)
    c.dtype = "float32"
    c.reward = dict(mode="optimization", alpha=0.0, beta_inv=1.0, normalization="sum", length_power=_none(float))
    c.reward.update(reward_preset(reward))
    c.loss = dict(advantage_estimator="rloo", aggregation="token_mean", importance_weight_cap=20.0, kl_coef=0.0)
    c.optim = dict(learning_rate=s["lr"], weight_decay=0.01, max_grad_norm=1.0, warmup_steps=0, schedule="constant",
                   total_steps=s["steps"])
    c.rollout = dict(prompts_per_step=s["prompts_per_step"], samples_per_prompt=s["samples_per_prompt"],
                     max_total_length=128, max_new_tokens=_none(int), temperature=1.0, top_p=1.0, top_k=0,
                     ignore_eos=False, prompt_buckets=(32, 48, 64))
    c.data = dict(task="arithmetic", num_train_problems=TRAIN_PROBLEMS[size], num_validation_problems=s["num_validation_problems"],
                  difficulty="auto", validation=("arithmetic",))
    c.eval = dict(every=s["eval_every"], num_samples=s["eval_samples"], metric="pass@1", batch_size=64, at_start=True)
    c.train = dict(steps=s["steps"], seed=0, micro_batches=1, remat="none", logits_chunk=128,
                   checkpoint_every=s["eval_every"], keep_last=1, score_reference_always=True, export_final=True)
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    # The launcher's fit check (sharpjax.plan): off the GPU without a target it is skipped.
    c.plan = dict(target=_none(str), method="auto", max_memory_fraction=0.9, device_memory_gb=_none(float))
    return c


def sft_config(size: str = "default"):
    """The SFT run that makes the arithmetic base model of `size`."""
    from sharpjax.train.sft import SFTConfig

    if size == "default":
        return SFTConfig()
    if size == "quick":
        return SFTConfig(steps=150, eval_problems=16, eval_samples=2, log_every=50)
    raise ValueError(f"unknown size {size!r}; expected 'quick' or 'default'.")
