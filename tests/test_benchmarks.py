"""The benchmark scripts run at their tiny CPU size and print what BENCHMARKS.md records.

They are smoke tests (a shared CPU gives no meaningful timings); the train-step benchmark
also checks that its two sides compute the same loss on the same weights.
"""

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, timeout=300, env=None):
    env = dict(env or os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_train_step_benchmark_tiny(tmp_path):
    out = _run(["benchmarks/train_step.py", "--size", "tiny", "--iters", "1", "--json", str(tmp_path / "r.json")])
    assert re.search(r"^ratio sharpjax / torch: [0-9.]+x$", out, re.M), out
    assert "MFU n/a" in out  # CPU: no peak FLOP/s without --peak-tflops
    # Same initial weights and batch: the fp32 step-0 losses agree (the same loss on both sides).
    diff = float(re.search(r"step-0 loss \(same weights\).*\|diff\| (\S+)", out).group(1))
    assert diff < 1e-4, out
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["tokens_per_step"] == 8 * 128
    assert results["ratio"] == pytest.approx(results["sharpjax"]["tok_s"] / results["torch (cpu)"]["tok_s"])


def test_rl_step_benchmark_quick(tmp_path):
    cache = os.environ.get("SHARPJAX_TEST_CACHE") or str(tmp_path / "cache")  # the quick SFT base model
    env = dict(os.environ, SHARPJAX_CACHE_DIR=cache)
    out = _run(["benchmarks/rl_step.py", "--size", "quick", "--steps", "5", "--json", str(tmp_path / "r.json")], env=env)
    assert re.search(r"^ratio padded / trimmed step time: [0-9.]+x$", out, re.M), out
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["ratio"] == pytest.approx(results["padded"]["step_s"] / results["trimmed"]["step_s"])
