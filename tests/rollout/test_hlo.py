"""`rollout.hlo.kernel_costs`: one row per kernel of a compiled loop body, bytes as the kernel moves them;
`loop_launches`: what the GPU runtime launches per loop iteration, and how much of it as CUDA graphs."""

import jax
import jax.numpy as jnp

from sharpjax.rollout.hlo import kernel_costs, loop_launches, rematerialized, shape_bytes, while_bodies


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


# The shape of XLA:GPU's `*.thunk_sequence_after_thunk_passes.txt` (from a compile-only H200 dump of
# `sample`, trimmed): a loop whose body is partly in command buffers, then one whose body is one.
THUNKS = """\
000: kCommandBuffer [source       | next=009 (1)]
    001: kCustomKernel [source       | next=002 (1)] input_reduce_fusion grid: [8, 1, 1] threads: [256, 1, 1]
    004: kCopy         [source       | next=005 (1)] kCopy
009: kWhile         [prev=000 (1) | next=000 (1)]
condition:
    010: kCustomKernel [source | sink] loop_compare_fusion grid: [1, 1, 1] threads: [1, 1, 1]
  body:
    011: kDynamicSliceFusion [source       | next=013 (1)] params=1, results=1
        012: kCopy [source | sink] kCopy
    013: kCustomKernel       [prev=011 (1) | next=000 (2)] fusion_458 grid: [4096, 1, 1] threads: [256, 1, 1]
    000: kCommandBuffer      [prev=014 (1) | next=000 (2)]
        016: kCustomKernel [source       | next=018 (2)] gemm_fusion_dot_5 grid: [131072, 1, 1] threads: [64, 1, 1]
        017: kCustomKernel [source       | next=018 (1)] input_concatenate_fusion_3 grid: [2048, 1, 1]
    032: kCustomKernel       [prev=030 (1) | next=033 (1)] gemm_fusion_dot_5 grid: [131072, 1, 1] threads: [64, 1, 1]
    057: kCustomKernel       [source       | sink        ] loop_add_fusion_7 grid: [1, 1, 1] threads: [1, 1, 1]
000: kCommandBuffer [prev=009 (1) | next=084 (1)]
    058: kCustomKernel [source        | next=059 (1)] loop_gather_pad_fusion grid: [98304, 1, 1]
084: kWhile         [prev=000 (1) | next=000 (1)]
condition:
    085: kCustomKernel [source | sink] loop_and_fusion grid: [1, 1, 1] threads: [1, 1, 1]
  body:
    000: kCommandBuffer [source | sink]
        086: kCustomKernel [source        | next=087 (1) ] loop_add_slice_fusion grid: [1, 1, 1] threads: [2, 1, 1]
        091: kCopy         [prev=089 (2)  | next=092 (1) ] kCopy
        109: kCustomKernel [prev=108 (1)  | next=110 (1) ] mha_forward grid: [1, 6, 512] threads: [128, 1, 1]
        137: kCustomKernel [prev=136 (1)  | sink         ] gemm_fusion_dot_27 grid: [64128, 1, 1]
000: kCommandBuffer [prev=084 (1) | sink        ]
    139: kCustomKernel [source       | next=141 (2)] loop_pad_fusion_1 grid: [384, 1, 1] threads: [128, 1, 1]
"""


def test_loop_launches_counts_each_body_and_what_runs_as_a_cuda_graph():
    first, decode = loop_launches(THUNKS)
    # The condition's kernel and the thunks before/after the loop are not the body; a sliced
    # fusion's wrapper is not a launch, its copy is.
    assert first == {"launches": 6, "in_graphs": 2, "graphs": 1}
    assert decode == {"launches": 4, "in_graphs": 4, "graphs": 1}
    assert loop_launches(THUNKS.replace("kCommandBuffer", "kSequential")) == [
        {"launches": 6, "in_graphs": 0, "graphs": 0}, {"launches": 4, "in_graphs": 0, "graphs": 0}]


def test_rematerialized_counts_what_xla_cloned_to_fit():
    """Lines of a compiled 3B train step (one H200, remat "dots", 16 rows a micro-batch), trimmed:
    XLA's rematerialization names its clones `.remat`, `.remat2`; a use of a clone is not one."""
    hlo = """\
  %loop_dynamic_slice_fusion.remat = bf16[1,16,256,3072]{3,2,1,0} fusion(%get-tuple-element.545, %gte.538)
  %bitcast.remat.23 = bf16[4096,3072]{1,0} bitcast(%loop_dynamic_slice_fusion.remat)
  %gemm_fusion_dot.1.remat = f32[4096,128256]{1,0} fusion(%bitcast.remat.23, %gte.547), kind=kCustom
  %input_reduce_fusion = f32[16,256,501]{2,1,0} fusion(%gemm_fusion_dot.1.remat, %loop_select_fusion)
  %gemm_fusion_dot.1.remat2 = f32[4096,128256]{1,0} fusion(%bitcast.remat.24, %gte.547), kind=kCustom
  %custom-call.7.remat = (bf16[64,64]{1,0}, s8[0]{0}) custom-call(%a, %b), custom_call_target="__cublas$gemm"
  ROOT %gemm_fusion_dot.9 = f32[4096,128256]{1,0} fusion(%p0, %p1), kind=kCustom
"""
    assert rematerialized(hlo) == {"ops": 5, "gemms": 3}
    assert rematerialized(hlo.replace(".remat", "")) == {"ops": 0, "gemms": 0}
