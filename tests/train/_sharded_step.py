"""Subprocess with 8 fake CPU devices: 3 sharded steps == 3 single-device steps (1e-5), with
`train_step` and with the length-grouped update (`train.group_by_length`)."""

import jax
import numpy as np

from sharpjax.parallel import batch_sharding, make_mesh, param_shardings, put_global, shard_params
from sharpjax.train.optim import make_optimizer
from sharpjax.train.step import init_train_state, length_grouped_update, make_grouped_update, make_train_step
from tests.tiny import tiny_setup


def run(mesh, grouped=False):
    params, rollout, scored, cfg = tiny_setup(kl_coef=0.1, micro_batches=2, lr=1e-3)
    if mesh is not None:
        params = shard_params(params, param_shardings(cfg.model, mesh))
    state = init_train_state(params, make_optimizer(cfg.optim), mesh)
    if grouped:
        update = make_grouped_update(cfg, state, mesh)
        put_rows = (lambda x: put_global(x, batch_sharding(mesh, x.ndim))) if mesh is not None else np.asarray
        host, lengths = jax.tree.map(np.asarray, scored.batch), np.asarray(rollout.lengths)
        step = lambda state, _: length_grouped_update(  # noqa: E731
            update, state, host, lengths, micro_batches=2, prompt_len=6, put_rows=put_rows)
    else:
        step = make_train_step(cfg, state, mesh)
    for _ in range(3):
        state, metrics = step(state, scored.batch)
    return state, metrics


def main():
    assert jax.device_count() == 8
    for grouped in (False, True):
        expected, _ = run(None, grouped)
        for data, fsdp, tensor in [(1, 4, 2), (8, 1, 1)]:
            mesh = make_mesh(data, fsdp, tensor)
            got, metrics = run(mesh, grouped)
            q = got.params["layers"]["q"]
            assert len(q.sharding.device_set) == 8
            err = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                      for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(expected.params)))
            assert err < 1e-5, (data, fsdp, tensor, grouped, err)
            print(f"data={data} fsdp={fsdp} tensor={tensor} grouped={grouped}: max |param diff| after 3 steps "
                  f"{err:.2e}, q spec {q.sharding.spec}")


if __name__ == "__main__":
    main()
