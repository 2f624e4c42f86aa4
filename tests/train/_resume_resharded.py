"""Subprocess with N fake CPU devices (issue 29, item 3): one phase of a run that is checkpointed
on one device count and resumed on another.

    python tests/train/_resume_resharded.py MODEL_DIR WORKDIR FSDP save|resume

"save" trains 2 of 4 steps and writes the params it checkpointed to WORKDIR/saved.npz; "resume"
(on another device count and fsdp) restores them, checks they are those params bit for bit,
sharded over its own mesh, and trains to step 4.
"""

import sys

import jax
import numpy as np

from tests.tiny import tiny_config


def main(model_dir: str, workdir: str, fsdp: int, phase: str) -> None:
    from sharpjax.parallel import to_host
    from sharpjax.train.config import RunConfig
    from sharpjax.train.trainer import Trainer

    config = RunConfig.from_config_dict(tiny_config(
        model_dir, reward="power-a2", train__steps=4, data__validation=(), rollout__prompts_per_step=4,
        mesh__data=-1, mesh__fsdp=fsdp,
    ))
    trainer = Trainer(config, workdir, progress=False)
    flat = {jax.tree_util.keystr(k): to_host(v) for k, v in jax.tree_util.tree_leaves_with_path(trainer.state.params)}
    if phase == "save":
        assert not trainer.resumed
        trainer.run(stop_after=2)
        flat = {jax.tree_util.keystr(k): to_host(v)
                for k, v in jax.tree_util.tree_leaves_with_path(trainer.state.params)}
        np.savez(f"{workdir}/saved.npz", **flat)
    else:
        assert trainer.resumed and trainer.start_step == 2, (trainer.resumed, trainer.start_step)
        saved = np.load(f"{workdir}/saved.npz")
        assert set(saved.files) == set(flat)
        for name, value in flat.items():
            np.testing.assert_array_equal(value, saved[name], err_msg=name)
        q = trainer.state.params["layers"]["q"]
        assert len(q.sharding.device_set) == jax.device_count(), q.sharding
        assert "fsdp" in str(q.sharding.spec) or fsdp == 1, q.sharding.spec
        result = trainer.run()
        assert result.last_step == 4, result
    print(f"{phase} on {jax.device_count()} devices, fsdp={fsdp}: ok", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
