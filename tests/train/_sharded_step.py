"""Subprocess with 8 fake CPU devices: 3 sharded steps == 3 single-device steps (1e-5)."""

import jax
import numpy as np

from sharpjax.parallel import make_mesh, param_shardings, shard_params
from sharpjax.train.optim import make_optimizer
from sharpjax.train.step import init_train_state, make_train_step
from tests.tiny import tiny_setup


def run(mesh):
    params, _, scored, cfg = tiny_setup(kl_coef=0.1, micro_batches=2, lr=1e-3)
    if mesh is not None:
        params = shard_params(params, param_shardings(cfg.model, mesh))
    state = init_train_state(params, make_optimizer(cfg.optim), mesh)
    step = make_train_step(cfg, state, mesh)
    for _ in range(3):
        state, metrics = step(state, scored.batch)
    return state, metrics


def main():
    assert jax.device_count() == 8
    expected, _ = run(None)
    for data, fsdp, tensor in [(1, 4, 2), (8, 1, 1)]:
        mesh = make_mesh(data, fsdp, tensor)
        got, metrics = run(mesh)
        q = got.params["layers"]["q"]
        assert len(q.sharding.device_set) == 8
        err = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                  for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(expected.params)))
        assert err < 1e-5, (data, fsdp, tensor, err)
        print(f"data={data} fsdp={fsdp} tensor={tensor}: max |param diff| after 3 steps {err:.2e}, q spec {q.sharding.spec}")


if __name__ == "__main__":
    main()
