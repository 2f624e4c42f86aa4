"""`rollout.hlo.kernel_costs`: one row per kernel of a compiled loop body, bytes as the kernel moves them."""

import jax
import jax.numpy as jnp

from sharpjax.rollout.hlo import kernel_costs, shape_bytes, while_bodies


def test_shape_bytes():
    assert shape_bytes("f32[64,128]{1,0}") == 64 * 128 * 4
    assert shape_bytes("(bf16[2,3]{1,0}, s32[])") == 2 * 3 * 2 + 4


def test_kernel_costs_count_a_gather_and_an_in_place_update_by_what_they_move():
    table_VD = jnp.zeros((4096, 64), jnp.float32)  # 1 MiB, of which each step gathers 8 rows

    def loop(table, ids_B):
        def body(state):
            i, buf_BMD = state
            rows_BD = jnp.take(table, (ids_B + i) % table.shape[0], axis=0) * 2.0
            return i + 1, jax.lax.dynamic_update_slice(buf_BMD, rows_BD[:, None], (0, i, 0))

        return jax.lax.while_loop(lambda s: s[0] < 16, body, (0, jnp.zeros((8, 16, 64), jnp.float32)))[1]

    hlo = jax.jit(loop).lower(table_VD, jnp.arange(8, dtype=jnp.int32)).compile().as_text()
    (body,) = while_bodies(hlo)
    rows = kernel_costs(hlo, body, jax.devices("cpu")[0].client)
    assert rows and all(r["hbm_bytes"] >= 0 for r in rows)
    # Far less than the table (1 MiB) or the buffer (32 KiB) per step: the 8 gathered rows
    # (2 KiB), written into the buffer in place.
    moved = sum(r["hbm_bytes"] for r in rows)
    assert moved < 16 * 1024, [(r["name"], r["hbm_bytes"], r["bytes"]) for r in rows]
