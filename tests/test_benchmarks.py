"""The benchmark scripts run at their tiny CPU size and print what BENCHMARKS.md records.

They are smoke tests (a shared CPU gives no meaningful timings); the train-step benchmark
also checks that its two sides compute the same loss on the same weights.
"""

import json
import os
import re
import statistics
import subprocess
import sys

import numpy as np
import pytest

from tests.tiny import require_torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, timeout=300, env=None):
    env = dict(env or os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.slow  # compiles the step for sharpjax and runs torch's (~45 s idle)
@pytest.mark.guard  # CI's second stage, once (Python 3.11): the fast suite stays near 20 minutes
def test_train_step_benchmark_tiny(tmp_path):
    require_torch()  # the benchmark's other side is a PyTorch HF step
    out = _run(["benchmarks/train_step.py", "--size", "tiny", "--iters", "1", "--json", str(tmp_path / "r.json")])
    assert re.search(r"^ratio sharpjax / torch: [0-9.]+x$", out, re.M), out
    assert "MFU n/a" in out  # CPU: no peak FLOP/s without --peak-tflops
    # Same initial weights and batch: the fp32 step-0 losses agree (the same loss on both sides).
    diff = float(re.search(r"step-0 loss \(same weights\).*\|diff\| (\S+)", out).group(1))
    assert diff < 1e-4, out
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["tokens_per_step"] == 8 * 128
    # The reported throughputs come from the measured step times of the requested iterations.
    for side in ("sharpjax", "torch (cpu)"):
        times = results[side]["times_s"]
        assert len(times) == 1 and all(t > 0 for t in times), results[side]
        assert results[side]["tok_s"] == pytest.approx(8 * 128 / statistics.median(times))


@pytest.mark.slow  # the quick RL-step benchmark end to end (~55 s idle)
@pytest.mark.guard  # CI's second stage, once (Python 3.11): the fast suite stays near 20 minutes
def test_rl_step_benchmark_quick(tmp_path):
    cache = os.environ.get("SHARPJAX_TEST_CACHE") or str(tmp_path / "cache")  # the quick SFT base model
    env = dict(os.environ, SHARPJAX_CACHE_DIR=cache)
    args = ["benchmarks/rl_step.py", "--size", "quick", "--steps", "5", "--json", str(tmp_path / "r.json")]
    out = _run(args, env=env)
    assert re.search(r"^ratio padded / trimmed step time: [0-9.]+x$", out, re.M), out
    results = json.loads((tmp_path / "r.json").read_text())
    # What the benchmark compares must be the same computation: at step 1 (same weights, same
    # key) trimming the padding changes no sample or reward, and the loss and gradient only by
    # fp32 summation order; the padded side really scored more columns than the trimmed one needed.
    trimmed, padded = results["trimmed"]["step1"], results["padded"]["step1"]
    assert trimmed["reward/reward"] == padded["reward/reward"]
    assert trimmed["response_length"] == padded["response_length"] < results["padded"]["budget"]
    # Scored columns: the update's own log-probs (entropy) and the reference's (KL to the base).
    assert trimmed["entropy"] > 0.1 and trimmed["entropy"] == pytest.approx(padded["entropy"], rel=1e-4)
    assert trimmed["kl_to_base"] == pytest.approx(padded["kl_to_base"], rel=1e-4, abs=1e-4)
    assert trimmed["loss"] == pytest.approx(padded["loss"], rel=1e-4, abs=1e-6)
    assert trimmed["grad_norm"] == pytest.approx(padded["grad_norm"], rel=1e-4, abs=1e-6)


@pytest.mark.slow  # every stage of the GPU check at toy sizes (~1 min idle, 3 on a shared CPU)
@pytest.mark.guard  # CI's second stage (issue 28)
def test_gpu_check_tiny(tmp_path):
    """benchmarks/gpu_check.py --tiny: every stage of the GPU check at toy sizes on the CPU, one
    JSON with the issue's table (measured and planned) and BENCHMARKS.md's summary line."""
    out = tmp_path / "check.json"
    stdout = _run(["benchmarks/gpu_check.py", "--tiny", "--out", str(out)], timeout=900,
                  env=dict(os.environ, SHARPJAX_DATA_DIR=os.environ.get("SHARPJAX_DATA_DIR", "")))
    res = json.loads(out.read_text())
    assert all(": exit 0 " in s for s in res["stages"]) and len(res["stages"]) == 6, res["stages"]
    # The GPU-only kernel tests ran and, on this CPU, skipped (1 + 2 parametrized cases).
    assert res["gpu_kernel_tests"] == {"exit": 0, "skipped": 3}, res["gpu_kernel_tests"]
    table = res["table"]
    assert table["rollout_tok_s"] > 0 and table["rollout_xla_tok_s"] > 0
    assert table["realistic_skip_s"] > 0 and table["realistic_noskip_s"] > 0 and table["realistic_tokens"] > 0
    assert table["step_s"] > 0 and table["rollout_s"] > 0 and table["update_s"] > 0
    # The paper config's "auto" knobs resolved by the launcher's plan: one sampler call of every row.
    paper = res["paper_step"]
    assert paper["sampler_calls"] == 1 and paper["rows_per_call"] == paper["rows"] == 16
    assert paper["remat"] in ("none", "dots", "full") and len(paper["steps"]) == 2
    assert table["plan"]["method"] == "analytic" and table["plan"]["peak_gib"] > 0
    assert set(paper["plan"]["programs"]) == {"rollout", "scoring", "train_step"}
    # The paper config groups the update's micro-batches by length (train.group_by_length).
    assert table["compiles"] >= 4 and {c["program"] for c in paper["compiled"]} >= {"sampler", "train_micro"}
    # The update's own optimized HLO was dumped and read (a toy step needs no XLA rematerialization).
    assert paper["train_step_xla_remat"] and table["train_step_xla_remat_gemms"] == 0
    line = stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"gpu_check \d{4}-\d\d-\d\d cpu: rollout n/a HF \(n/a roofline\), train MFU n/a, "
                        r"llama3b h200x1 step [0-9.]+ s, peak [0-9.]+ GiB \(plan [0-9.]+ GiB\)", line), line
    assert line == res["summary"]


def _decode_cost():
    import importlib.util

    spec = importlib.util.spec_from_file_location("decode_cost", os.path.join(ROOT, "benchmarks", "decode_cost.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_decode_cost_bytes_by_hand():
    """One prompt x 2 rows of lengths 1 and 3, a 64-slot prompt: the bytes of each decode step
    counted by hand (a row reads KV at step t only while t + 1 < its length; the prompt part
    while one of its rows does; whole 64-slot blocks)."""
    dc = _decode_cost()
    shape = dict(num_params=1000, num_layers=2, num_kv_heads=1, head_dim=4, vocab_size=10, prompt_len=64, samples=2)
    fixed, slot = 2 * 1000 + 2 * 10 * 12, 2 * 2 * 1 * 4 * 2
    lengths = np.array([1, 3])
    skip = dc.decode_bytes(lengths=lengths, mode="skip", **shape)
    np.testing.assert_array_equal(skip, fixed + slot * np.array([64 + 64, 64 + 64, 0]))
    noskip = dc.decode_bytes(lengths=lengths, mode="noskip", **shape)
    np.testing.assert_array_equal(noskip, fixed + slot * np.array([64 + 2 * 64] * 3))
    dense = dc.decode_bytes(lengths=lengths, mode="dense", **shape)
    np.testing.assert_array_equal(dense, fixed + slot * np.array([64 + 2 * 3] * 3))


def _update_cost():
    import importlib.util

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))  # update_cost imports decode_cost
    spec = importlib.util.spec_from_file_location("update_cost", os.path.join(ROOT, "benchmarks", "update_cost.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_update_cost_of_equal_micro_batches_is_the_plans_update():
    """update_cost.py sums the plan's closed form per micro-batch: with every micro-batch at the
    batch's width it is the plan's own roofline of the scanned update; narrower ones cost less."""
    from experiments.rl_math import get_config
    from sharpjax.plan import plan_run
    from sharpjax.train.config import RunConfig

    c = get_config("llama3b:task:h200x1")
    c.train.remat, c.rollout.chunk_prompts = "dots", 32
    run = RunConfig.from_config_dict(c)
    plan = plan_run(run, "h200x1", method="analytic")
    s, gpu = plan.shapes, plan.target.gpu
    per = s.rows // s.micro_batches
    update = _update_cost().update_seconds
    step = next(p for p in plan.programs if p.name == "train_step")
    assert update(run, plan.model, s, gpu, [(s.width, per)] * s.micro_batches) == pytest.approx(step.time_s(gpu),
                                                                                             rel=1e-9)
    narrower = [(s.width, per)] * (s.micro_batches - 1) + [(s.prompt_len + 256, per)]
    assert update(run, plan.model, s, gpu, narrower) < step.time_s(gpu)


def test_update_cost_measures_both_updates_tiny(tmp_path):
    """update_cost.py --measure times train_step and the length-grouped update on one batch
    with realistic lengths: both run, on the same loss."""
    out = tmp_path / "update.json"
    _run(["benchmarks/update_cost.py", "--prompts", "256", "--seeds", "1", "--measure", "tiny",
          "--measure-shape", "16", "4", "8", "56", "--repeats", "1", "--json", str(out)])
    m = json.loads(out.read_text())["measured"]
    assert m["train_step_s"] > 0 and m["group_by_length_s"] > 0 and m["width"] <= 8 + 56
    assert m["loss_group_by_length"] == pytest.approx(m["loss_train_step"], rel=1e-5, abs=1e-7)


def test_realistic_lengths_distribution():
    """The stated distribution: median 400 tokens, 10% of rows at the budget, in [1, budget], seeded."""
    dc = _decode_cost()
    x = dc.realistic_lengths(20000, 1536, seed=0)
    assert x.min() >= 1 and x.max() == 1536
    assert abs(np.median(x) - 400) < 15 and abs((x == 1536).mean() - 0.10) < 0.01
    np.testing.assert_array_equal(x[:256], dc.realistic_lengths(20000, 1536, seed=0)[:256])
    assert abs(np.median(dc.realistic_lengths(20000, 512, seed=1)) - 400 * 512 / 1536) < 6  # scaled below 1536


@pytest.mark.slow  # sharpjax compiled three times and HF generate, tiny (~50 s on a shared CPU)
@pytest.mark.guard  # CI's second stage (issue 28 item 3)
def test_rollout_benchmark_realistic_lengths_tiny(tmp_path):
    """`--lengths realistic` at the tiny size: both sides generate the forced per-row lengths
    (the script asserts it), and it reports tokens generated, the skip / no-skip times and the
    HF ratio under the same lengths."""
    require_torch()  # the HF side
    out = _run(["benchmarks/rollout.py", "--size", "tiny", "--lengths", "realistic", "--repeats", "1",
                "--compare-full", "--json", str(tmp_path / "r.json")])
    assert re.search(r"^ratio sharpjax / HF: [0-9.]+x$", out, re.M), out
    assert re.search(r"^sharpjax \(finished rows skipped\): [0-9.]+s  [0-9,]+ tokens", out, re.M), out
    res = json.loads((tmp_path / "r.json").read_text())
    lengths = _decode_cost().realistic_lengths(8, 32, seed=0)
    assert res["tokens_generated"] == lengths.sum() < 8 * 32 and res["steps"] == lengths.max()
    for name in ("skip", "noskip", "full"):
        assert res[f"sharpjax_{name}_s"] > 0
    assert res["hf_tok_s"] == pytest.approx(res["tokens_generated"] / res["hf_s"])


def test_verify_cost_times_the_trainers_verification(tmp_path, data_dir):
    """benchmarks/verify_cost.py at 8 responses: every solution checked against its own answer
    verifies (the even rows), the ones checked against another problem's mostly do not."""
    out = tmp_path / "v.json"
    _run(["benchmarks/verify_cost.py", "--rows", "8", "--repeats", "1", "--workers", "1", "--json", str(out)],
         env=dict(os.environ, SHARPJAX_DATA_DIR=str(data_dir)))
    res = json.loads(out.read_text())
    assert res["rows"] == 8 and res["verifier"] == "math_verify" and res["workers"] == 1
    assert 4 <= res["solutions"]["verified_correct"] <= 6, res  # 4 own answers; a shared answer may add one
    assert res["solutions"]["seconds"] > 0 and res["random"]["mean_chars"] > 5 * res["solutions"]["mean_chars"]


@pytest.mark.slow  # needs the jax-cuda12 plugin: CI's -m aot stages run it
@pytest.mark.aot
def test_rollout_aot_breakdown_tiny(tmp_path):
    """`rollout.py --aot-breakdown` at the tiny size for an H200 (compile-only): the kernels read
    from the compiled HLO and the launches in XLA's thunk sequence are two readers of one decode
    step, so they must count the same kernels; the report carries both."""
    from sharpjax.plan.targets import GPUS
    from tests.test_platform import _require_aot

    _require_aot()
    target = tmp_path / "h200.pbtxt"
    target.write_text(GPUS["h200"].target_config)
    out = _run(["benchmarks/rollout.py", "--size", "tiny", "--aot-target", str(target), "--aot-breakdown",
                "--json", str(tmp_path / "b.json")])
    res = json.loads((tmp_path / "b.json").read_text())
    loop = res["decode_loop_launches"]
    assert loop["launches"] == res["total"]["kernels"] > 0, (loop, res["total"])
    assert 0 <= loop["in_graphs"] <= loop["launches"]
    assert re.search(rf"one decode step = {loop['launches']} launches", out), out
