"""FSDP splits the work (issue 29): per-device FLOPs and temporaries of the compiled programs
on N fake CPU devices against N = 1 (`sharpjax.plan.worksplit`), and its HLO reader."""

import json
import os

import jax
import jax.numpy as jnp
import pytest

from sharpjax.plan.worksplit import collective_seconds, hlo_stats
from tests.models.test_sharding import ROOT, run_with_8_devices


def test_hlo_stats_counts_dots_inside_loops():
    f = jax.jit(lambda a, b: jax.lax.fori_loop(0, 5, lambda i, x: jnp.tanh(x @ b), a))
    text = f.lower(jnp.ones((8, 16)), jnp.ones((16, 16))).compile().as_text()
    assert hlo_stats(text).dot_flops == 2 * 8 * 16 * 16 * 5


def test_collective_seconds_ring():
    gib = 2.0**30
    # 4 devices: an all-gather sends 3/4 of its result, an all-reduce twice 3/4 of its operand.
    t = collective_seconds({"all-gather": [1, gib / 4, gib], "all-reduce": [1, gib, gib]}, 4, 900e9)
    assert t == pytest.approx((0.75 * gib + 1.5 * gib) / 900e9)


# Tolerances. Every dot of the three programs works on rows (batch-sharded) or is a weight
# gradient contracted over rows, so the per-device dot FLOPs are exactly 1/N when nothing is
# replicated; 5% leaves room for the collectives' re-layout and the sampler's per-row
# bookkeeping. XLA's cost analysis also counts elementwise ops, some of which run on replicated
# scalars and per-row vectors (the loss's normalizers, the optimizer's norms): 10%. Temporaries
# hold the activations (1/N) plus one gathered layer's weights and its gradient before the
# reduce-scatter (not 1/N); at this shape the activations dominate: 1.3/N (measured 1.03/N).
@pytest.mark.slow
@pytest.mark.guard  # CI's second stage: the 4-GPU runs must split the work, not replicate it
@pytest.mark.parametrize("remat", ["none", "full"])
def test_fsdp_splits_flops_and_activations(remat):
    proc = run_with_8_devices([os.path.join(ROOT, "tests", "_worksplit.py"), remat], timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    splits = json.loads(proc.stdout.split("SPLITS ", 1)[1])
    one = {s["program"]: s for s in splits if s["n"] == 1}
    for s in (s for s in splits if s["n"] > 1):
        ref, n, what = one[s["program"]], s["n"], f"{s['program']} on mesh {s['mesh']}"
        assert ref["dot_flops"] > 0 and s["dot_flops"] > 0, what
        assert 1 / n * 0.99 <= s["dot_flops"] / ref["dot_flops"] <= 1 / n * 1.05, (what, s["largest_dots"])
        assert s["flops"] / ref["flops"] <= 1 / n * 1.10, what
        if s["program"] == "train_step":  # the sampler's cache and the scoring's chunks: see BENCHMARKS.md
            assert s["temp_bytes"] / ref["temp_bytes"] <= 1.3 / n, what
