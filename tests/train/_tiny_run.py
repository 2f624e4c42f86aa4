"""A tiny base model and RL config for loop tests; also the entry point of the multi-process test.

`python tests/train/_tiny_run.py MODEL_DIR WORKDIR` trains 2 steps of the quick arithmetic
config; with JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID set, each process runs
it as one member of a `jax.distributed` job.
"""

import sys

import jax

from sharpjax.models import ModelConfig, init_params, save_model
from sharpjax.models.tokenizer import build_char_tokenizer
from sharpjax.train.presets import arithmetic_rl_config


def make_tiny_model(path: str) -> str:
    tok = build_char_tokenizer()
    cfg = ModelConfig(model_type="llama", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=8, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_ids=(tok.eos_token_id,), pad_token_id=tok.pad_token_id,
                      max_position_embeddings=160)
    save_model(path, init_params(cfg, jax.random.key(0), init_std=0.2), cfg)
    tok.save_pretrained(path)
    return path


def tiny_config(model_dir, reward="tilted-a2-b1", **overrides):
    """The quick arithmetic config, shrunk; overrides use `section__field=value`."""
    c = arithmetic_rl_config("quick", reward)
    c.model_dir = model_dir
    c.rollout.max_total_length = 96
    c.rollout.max_new_tokens = 24
    c.data.num_validation_problems = 4
    c.train.steps = 4
    c.eval.every = 2
    for dotted, value in overrides.items():
        node = c
        *path, leaf = dotted.split("__")
        for p in path:
            node = node[p]
        node[leaf] = value
    return c


def main(model_dir: str, workdir: str) -> None:
    from sharpjax.train.config import RunConfig
    from sharpjax.train.loop import maybe_initialize_distributed, train

    maybe_initialize_distributed()
    config = RunConfig.from_config_dict(
        tiny_config(model_dir, reward="power-a2", train__steps=2, data__validation=(), rollout__prompts_per_step=4)
    )
    result = train(config, workdir, progress=False)
    print(f"process {jax.process_index()}/{jax.process_count()} devices {jax.device_count()} "
          f"done step {result.last_step}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
