"""The paper's RL runs (PAPER.md), on the base config: `paper_config("llama3b", "task")`.

Only what differs from `RunConfig`'s defaults (which are already the paper's estimator,
optimizer and sampling settings) is set here: the model, its data, lengths, batch and steps.
"""

from __future__ import annotations

import ml_collections

from sharpjax.configs.base import base_config, reward_preset
from sharpjax.errors import ConfigError

__all__ = ["HARDWARE", "MODELS", "paper_config"]

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
# for Qwen3-4B; per update micro-batch: that / micro_batches. The first target is the default.
HARDWARE = {
    "llama3b": {
        "h100x4": dict(mesh=dict(data=-1, fsdp=4, tensor=1), micro_batches=8, chunk_prompts="auto",
                       tokens_per_micro_batch=32768),
        # 32 micro-batches (8 rows each): the AOT plan's remat "auto" then takes "dots" (113.4 GiB, 81%,
        # no GEMM recomputed by XLA), where 16 leave only "full" (dots 109%): update roofline 22.1 -> 19.4 s
        # (BENCHMARKS.md, "remat auto and XLA's own rematerialization").
        "h200x1": dict(mesh=dict(data=-1, fsdp=1, tensor=1), micro_batches=32, chunk_prompts="auto",
                       tokens_per_micro_batch=32768),
    },
    "qwen25_3b": {
        "h100x4": dict(mesh=dict(data=-1, fsdp=4, tensor=1), micro_batches=8, chunk_prompts="auto",
                       tokens_per_micro_batch=32768),
        # Not 32 as llama3b: there "dots" fits at 87% only with XLA recomputing 12 GEMMs, so "auto"
        # takes "full" at either count, and 16 have half the per-micro-batch overhead.
        "h200x1": dict(mesh=dict(data=-1, fsdp=1, tensor=1), micro_batches=16, chunk_prompts="auto",
                       tokens_per_micro_batch=32768),
    },
    "qwen3_4b": {
        "h100x8": dict(mesh=dict(data=-1, fsdp=8, tensor=1), micro_batches=16, chunk_prompts="auto",
                       tokens_per_micro_batch=32768),
        "h200x2": dict(mesh=dict(data=-1, fsdp=2, tensor=1), micro_batches=32, chunk_prompts="auto",
                       tokens_per_micro_batch=32768),
    },
}


def paper_config(
    model: str, reward: str = "task", *, fixed_length: bool = False, target: str | None = None
) -> ml_collections.ConfigDict:
    """One run of the paper's sweep: `model` in MODELS, `reward` a `reward_preset` name, sized for
    `target` (a key of HARDWARE[model]; None: the model's first, the paper's setup)."""
    if model not in MODELS:
        raise ConfigError(f"unknown paper model {model!r}; expected one of {', '.join(sorted(MODELS))}.")
    targets = HARDWARE[model]
    target = target or next(iter(targets))
    if target not in targets:
        raise ConfigError(f"unknown target {target!r} for {model}; expected one of {', '.join(targets)}.")
    m, hw = MODELS[model], targets[target]
    c = base_config(m["model_dir"])
    c.reward.update(reward_preset(reward))
    c.optim.total_steps = m["steps"]
    c.rollout.prompts_per_step = m["prompts_per_step"]
    c.rollout.max_total_length = m["max_total_length"]
    c.rollout.ignore_eos = fixed_length  # the "fixed-length" variant: EOS ignored, every response full length
    c.data.task = "math"
    c.data.train = m["train"]
    c.data.train_path = m["train_path"]
    c.data.validation = m["validation"]
    c.data.verifier = "math_verify"  # the paper's reward: NeMo RL's hf_math_verify over the whole response
    c.train.steps = m["steps"]
    c.train.micro_batches = hw["micro_batches"]
    # The launcher's plan for `target` picks none, dots or full: the cheapest recompute that fits
    # (every target fits with full; BENCHMARKS.md, "Train step", has what each resolves to).
    c.train.remat = "auto"
    c.train.tokens_per_micro_batch = hw["tokens_per_micro_batch"]
    # Micro-batches of rows of similar length, each trimmed to its own longest row: at realistic
    # lengths ~2x less update compute (BENCHMARKS.md, "Update micro-batches grouped by length");
    # nothing to gain when every response runs to the budget.
    c.train.group_by_length = not fixed_length
    # "auto": the launcher's plan picks the largest sampler call that fits (sharpjax/plan/chunks.py):
    # one call reads the weights once per decoded token for every row.
    c.rollout.chunk_prompts = hw["chunk_prompts"]
    c.mesh.update(hw["mesh"])
    c.plan.target = target
    return c
