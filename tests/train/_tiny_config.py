"""The multi-process launcher test's config: `--config tests/train/_tiny_config.py:MODEL_DIR`.

The tiny arithmetic run of `_tiny_run.py` (2 steps, 4 prompts), with the weights and optimizer
state sharded over every device of every process (mesh fsdp = all devices), as the paper's runs
shard theirs over GPUs.
"""

from tests.tiny import tiny_config


def get_config(model_dir: str):
    c = tiny_config(model_dir, reward="power-a2", train__steps=2, data__validation=(), rollout__prompts_per_step=4)
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
    return c
