"""Small-scale RL on the synthetic arithmetic task (CPU, minutes): the paper's question in miniature.

`python -m sharpjax.train --config experiments/rl_arithmetic.py:<size>:<reward> --workdir runs/x`
<size>:   quick (CI plumbing, seconds) | default (the main job's runs, minutes on a 2-core CPU)
<reward>: task | likelihood | power-a<alpha> | tilted-a<alpha>-b<beta_inv>
The base model (`model_dir = "sft:<size>"`) is the project's own SFT model, trained and cached on
first use (`sharpjax.train.sft`).
"""

import ml_collections

from sharpjax.train.config import reward_preset

SIZES = {
    "quick": dict(steps=4, prompts_per_step=4, samples_per_prompt=4, eval_every=2, num_validation_problems=8,
                  eval_samples=2, lr=3e-4),
    "default": dict(steps=40, prompts_per_step=16, samples_per_prompt=8, eval_every=10, num_validation_problems=64,
                    eval_samples=4, lr=1e-4),
}


def get_config(arg: str = "quick:task") -> ml_collections.ConfigDict:
    size, _, reward = arg.partition(":")
    if size not in SIZES:
        raise ValueError(f"config argument {arg!r}: expected <size>:<reward> with size in {sorted(SIZES)}.")
    s = SIZES[size]
    c = ml_collections.ConfigDict()
    c.model_dir = f"sft:{size}"
    c.ref_model_dir = ml_collections.FieldReference(None, field_type=str)
    c.dtype = "float32"
    c.reward = dict(mode="optimization", alpha=0.0, beta_inv=1.0, normalization="sum",
                    length_power=ml_collections.FieldReference(None, field_type=float))
    c.reward.update(reward_preset(reward or "task"))
    c.loss = dict(advantage_estimator="rloo", aggregation="token_mean", importance_weight_cap=20.0, kl_coef=0.0)
    c.optim = dict(learning_rate=s["lr"], weight_decay=0.01, max_grad_norm=1.0, warmup_steps=0, schedule="constant",
                   total_steps=s["steps"])
    c.rollout = dict(prompts_per_step=s["prompts_per_step"], samples_per_prompt=s["samples_per_prompt"],
                     max_total_length=128, temperature=1.0, top_p=1.0, top_k=0, ignore_eos=False,
                     prompt_buckets=(32, 48, 64))
    c.data = dict(task="arithmetic", num_train_problems=2000, num_validation_problems=s["num_validation_problems"],
                  difficulty="default", validation=("arithmetic",))
    c.eval = dict(every=s["eval_every"], num_samples=s["eval_samples"], metric="pass@1", batch_size=64)
    c.train = dict(steps=s["steps"], seed=0, micro_batches=1, remat="none", logits_chunk=128,
                   checkpoint_every=s["eval_every"], keep_last=1, score_reference_always=True, export_final=True)
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    return c
