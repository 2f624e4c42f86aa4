"""A tiny base model and RL config for loop tests; also the entry point of the multi-process test.

`python tests/train/_tiny_run.py MODEL_DIR WORKDIR` trains 2 steps of the quick arithmetic
config; with JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID set, each process runs
it as one member of a `jax.distributed` job.
"""

import sys

import jax

from tests.tiny import tiny_config


def main(model_dir: str, workdir: str) -> None:
    from sharpjax.parallel import maybe_initialize_distributed
    from sharpjax.train.config import RunConfig
    from sharpjax.train.trainer import train

    maybe_initialize_distributed()
    config = RunConfig.from_config_dict(
        tiny_config(model_dir, reward="power-a2", train__steps=2, data__validation=(), rollout__prompts_per_step=4)
    )
    result = train(config, workdir, progress=False)
    print(f"process {jax.process_index()}/{jax.process_count()} devices {jax.device_count()} "
          f"done step {result.last_step}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
