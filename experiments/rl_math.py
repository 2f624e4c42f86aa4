"""The paper's RL runs (PAPER.md).

    python -m sharpjax.train --config experiments/rl_math.py:<model>:<reward>[:fixed][:<target>]

<model>:  llama3b (Llama-3.2-3B-Instruct on Hendrycks MATH), qwen25_3b (Qwen2.5-3B-Instruct on
          Hendrycks MATH), qwen3_4b (Qwen3-4B-Instruct-2507 on DeepScaleR).
<reward>: task | likelihood | power-a<alpha> | tilted-a<alpha>-b<beta_inv> (e.g. power-a2,
          tilted-a4-b100); see `sharpjax.train.config.reward_preset`.
fixed:    the "fixed-length" variant: EOS ignored in training and evaluation.
<target>: the hardware the run is sized for (mesh, micro-batches, sampler chunk), checked by
          `python -m sharpjax.plan` and by the launcher before it loads weights: h100x4 (the
          paper's 4x H100 80GB, default) or h200x1 for the 3B models; h100x8 (default) or h200x2
          for qwen3_4b.

`--config.model_dir` must point at a local Hugging Face directory of the model (weights are
never downloaded at run time). `experiments/sweep.py` lists every run of the paper.
"""

import ml_collections

from sharpjax.train.config import reward_preset

MODELS = {
    # 3B models: MATH train (7,500), 32 x 8 per step, 500 steps, total length 2048, MATH test validation.
    "llama3b": dict(model_dir="checkpoints/Llama-3.2-3B-Instruct", train="math_train", validation=("math500",),
                    prompts_per_step=32, steps=500, max_total_length=2048, train_path=None),
    "qwen25_3b": dict(model_dir="checkpoints/Qwen2.5-3B-Instruct", train="math_train", validation=("math500",),
                      prompts_per_step=32, steps=500, max_total_length=2048, train_path=None),
    # Qwen3-4B: DeepScaleR (~40K), 64 x 8 per step, 1000 steps, length 4096, AIME 2024 validation.
    "qwen3_4b": dict(model_dir="checkpoints/Qwen3-4B-Instruct-2507", train="deepscaler", validation=("aime24",),
                     prompts_per_step=64, steps=1000, max_total_length=4096,
                     train_path="data/deepscaler.json"),
}


# Per model and target: the mesh (FSDP shards the fp32 params, gradients and Adam state), the
# gradient-accumulation steps, the prompts per sampler call and the tokens per device of a
# reference-scoring pass, each sized with `sharpjax.plan` to at most 90% of the device's memory
# (BENCHMARKS.md, "Memory and time plan"). Rows per device: 256 / fsdp for the 3B models, 512 / fsdp
# for Qwen3-4B; per update micro-batch: that / micro_batches.
HARDWARE = {
    "llama3b": {
        "h100x4": dict(mesh=dict(data=-1, fsdp=4, tensor=1), micro_batches=8, chunk_prompts=None,
                       tokens_per_micro_batch=32768),
        "h200x1": dict(mesh=dict(data=-1, fsdp=1, tensor=1), micro_batches=16, chunk_prompts=16,
                       tokens_per_micro_batch=32768),
    },
    "qwen3_4b": {
        "h100x8": dict(mesh=dict(data=-1, fsdp=8, tensor=1), micro_batches=16, chunk_prompts=None,
                       tokens_per_micro_batch=32768),
        "h200x2": dict(mesh=dict(data=-1, fsdp=2, tensor=1), micro_batches=32, chunk_prompts=32,
                       tokens_per_micro_batch=32768),
    },
}
HARDWARE["qwen25_3b"] = HARDWARE["llama3b"]  # same size class (3.1B vs 3.2B parameters)


def get_config(arg: str = "llama3b:task") -> ml_collections.ConfigDict:
    parts = arg.split(":")
    targets = HARDWARE.get(parts[0], {})
    target = parts.pop() if len(parts) > 2 and parts[-1] in targets else next(iter(targets), None)
    if parts[0] not in MODELS or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "fixed"):
        raise ValueError(
            f"config argument {arg!r}: expected <model>:<reward>[:fixed][:<target>] with model in {sorted(MODELS)} "
            f"and target in {sorted(targets)}."
        )
    m, hw = MODELS[parts[0]], targets[target]
    c = ml_collections.ConfigDict()
    c.model_dir = m["model_dir"]
    c.ref_model_dir = ml_collections.FieldReference(None, field_type=str)
    c.dtype = "bfloat16"
    c.reward = dict(mode="optimization", alpha=0.0, beta_inv=1.0, normalization="sum",
                    length_power=ml_collections.FieldReference(None, field_type=float))
    c.reward.update(reward_preset(parts[1]))
    # RLOO, REINFORCE with truncated importance weight 20, token mean over the global batch, no KL in the loss.
    c.loss = dict(advantage_estimator="rloo", normalize_std=False, aggregation="token_mean",
                  importance_weight_cap=20.0, kl_coef=0.0, kl_estimator="k3")
    # AdamW 1e-6, wd 0.01, clip 1.0, warmup 0.1x -> 1x over 50 steps, then constant.
    c.optim = dict(learning_rate=1e-6, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-8, max_grad_norm=1.0,
                   warmup_steps=50, warmup_init_fraction=0.1, schedule="constant", total_steps=m["steps"])
    c.rollout = dict(prompts_per_step=m["prompts_per_step"], samples_per_prompt=8,
                     max_total_length=m["max_total_length"], temperature=1.0, top_p=1.0, top_k=0,
                     ignore_eos=len(parts) == 3,
                     chunk_prompts=ml_collections.FieldReference(hw["chunk_prompts"], field_type=int))
    c.data = dict(task="math", train=m["train"], train_path=ml_collections.FieldReference(m["train_path"], field_type=str),
                  data_dir=ml_collections.FieldReference(None, field_type=str), validation=m["validation"],
                  validation_limit=ml_collections.FieldReference(None, field_type=int))
    c.eval = dict(every=20, num_samples=1, metric="pass@1", batch_size=64)
    c.train = dict(steps=m["steps"], seed=42, micro_batches=hw["micro_batches"], remat="full", logits_chunk=256,
                   tokens_per_micro_batch=hw["tokens_per_micro_batch"],
                   checkpoint_every=20, keep_last=2, score_reference_always=True, export_final=True)
    c.mesh = dict(hw["mesh"])
    c.plan = dict(target=target, method="auto", max_memory_fraction=0.9,
                  device_memory_gb=ml_collections.FieldReference(None, field_type=float))
    return c
