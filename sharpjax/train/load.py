"""What a run loads before its first step: the tokenizer, the usable training prompts, the models.

`Trainer` construction calls these in the order of the data flow (tokenizer -> task ->
prompts -> models): the data before the weights, so a bad training file fails in seconds and
prompts no bucket holds are dropped before step 1, never met mid-run.
"""

from __future__ import annotations

import logging

import jax
from jax.sharding import Mesh

from sharpjax.errors import ConfigError
from sharpjax.models.config import ModelConfig
from sharpjax.models.hf import load_config, load_model
from sharpjax.models.tokenizer import BPE_MIN_VOCAB, build_bpe_tokenizer, has_tokenizer_files, load_tokenizer
from sharpjax.models.transformer import Params, init_params
from sharpjax.parallel import init_params_sharded, make_mesh, param_shardings, shard_params
from sharpjax.rollout.text import prompt_lengths
from sharpjax.tasks import Task, build_task
from sharpjax.train.config import DataConfig, RolloutConfig, RunConfig
from sharpjax.train.step import cast_params

log = logging.getLogger(__name__)

# A random-weights run without tokenizer files learns this many BPE ids at most (the model's vocab
# if smaller): enough merges for realistic prompt lengths, seconds to learn from MATH's train set.
RANDOM_INIT_BPE_VOCAB = 16384


def load_run_tokenizer(config: RunConfig):
    """`model_dir`'s tokenizer; for `model_init="random"` without tokenizer files, a byte-level BPE
    learned from the training problems (at most the model's vocab)."""
    if config.model_init != "random" or has_tokenizer_files(config.model_dir):
        return load_tokenizer(config.model_dir)
    model_vocab = load_config(config.model_dir, dtype=config.dtype).vocab_size
    if model_vocab < BPE_MIN_VOCAB:
        raise ConfigError(
            f"{config.model_dir} has no tokenizer files and its config.json's vocab_size={model_vocab} is under the "
            f"{BPE_MIN_VOCAB} ids a byte-level BPE needs; add the model's tokenizer files or raise vocab_size."
        )
    # The problems only: the task's render (which needs the tokenizer) is not called here.
    problems = build_task(config, None).train
    texts = (t for p in problems for t in (p.problem, str(p.answer), getattr(p, "solution", None)) if t)
    tokenizer = build_bpe_tokenizer(texts, vocab_size=min(model_vocab, RANDOM_INIT_BPE_VOCAB))
    log.info("no tokenizer files in %s: built a byte-level BPE tokenizer of %d ids from the %d training problems "
             "of %s (config.model_init='random')", config.model_dir, len(tokenizer), len(problems), config.data.train)
    return tokenizer


def max_prompt_tokens(rollout: RolloutConfig) -> int:
    """The longest prompt a rollout takes: the largest of `rollout.prompt_buckets` that leaves a
    response budget (any, with a fixed `max_new_tokens`; else below `max_total_length`)."""
    usable = [b for b in rollout.prompt_buckets if rollout.max_new_tokens is not None or b < rollout.max_total_length]
    if not usable:
        raise ConfigError(
            f"config.rollout.prompt_buckets={tuple(rollout.prompt_buckets)}: every bucket leaves no response budget "
            f"within config.rollout.max_total_length={rollout.max_total_length}; add a smaller bucket."
        )
    return max(usable)


def overlong_train_prompts(tokenizer, task: Task, rollout: RolloutConfig, data: DataConfig) -> list[int]:
    """Indices of the training problems whose prompt no usable bucket holds (never drawn).

    NeMo RL, the paper's trainer, masks such prompts out of the loss (its math data
    processor sets loss_multiplier 0 on any prompt over max_total_sequence_length): they
    never train. Dropping them before step 1 trains on the same prompts without the
    crash. Logged here and in metrics.jsonl (step 0, data/dropped_long_prompts).
    """
    limit = max_prompt_tokens(rollout)
    problems = task.train
    lengths = prompt_lengths(tokenizer, [task.render(p.problem) for p in problems])
    over = [i for i, n in enumerate(lengths) if n > limit]
    where = (data.train_path or f"config.data.train={data.train!r}") if data.task == "math" else f"the {data.task} task"
    if len(over) == len(problems):
        raise ConfigError(
            f"{where}: every one of its {len(problems)} prompts is longer than {limit} tokens, the largest usable "
            "bucket of config.rollout.prompt_buckets (below config.rollout.max_total_length); raise them."
        )
    if over:
        longest = max(over, key=lambda i: lengths[i])
        log.warning(
            "%s: dropped %d of %d training prompts longer than %d tokens (the largest usable bucket of "
            "config.rollout.prompt_buckets); the longest, %s, has %d tokens", where, len(over), len(problems),
            limit, getattr(problems[longest], "id", longest), lengths[longest],
        )
    return over


def load_models(config: RunConfig) -> tuple[ModelConfig, Mesh | None, Params, Params]:
    """The model, checked against the run and the devices; the mesh; the policy's params and the
    frozen reference's (cast to the compute dtype) on it."""
    random_init = config.model_init == "random"
    if random_init:  # config.json only: no weight file is opened
        model = load_config(config.model_dir, dtype=config.dtype)
    else:
        params, model = load_model(config.model_dir, dtype=config.dtype)
    config.check_against(context_length=model.max_position_embeddings, num_devices=jax.device_count())
    data, fsdp, tensor = config.mesh_shape(jax.device_count())
    mesh = make_mesh(data, fsdp, tensor) if jax.device_count() > 1 else None
    if model.num_kv_heads % tensor and model.attention == "auto":
        # cuDNN flash attention needs q, k and v sharded alike, and a tensor axis that does
        # not divide the kv heads leaves k and v replicated while q is split: use XLA's.
        model = model.replace(attention="xla")
    shardings = param_shardings(model, mesh) if mesh is not None else None
    if random_init:  # created in their shards (no full copy on one device); the reference is the same params
        key = jax.random.key(config.train.seed)
        params = init_params(model, key) if mesh is None else init_params_sharded(model, key, mesh)
    elif shardings is not None:
        params = shard_params(params, shardings)
    ref_dir = config.ref_model_dir or config.model_dir
    ref = params if ref_dir == config.model_dir else load_model(ref_dir, dtype=config.dtype, shardings=shardings)[0]
    # The reference is frozen in the compute dtype; the policy gets its own fp32 copy.
    return model, mesh, params, cast_params(ref, model.jnp_dtype)
