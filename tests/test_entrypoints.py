"""The main job and the benchmark scripts run (tiny, CPU): what README and BENCHMARKS.md promise."""

import os
import subprocess
import sys

from tests.tiny import require_torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(args, timeout=600):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_rollout_benchmark_runs_and_prints_ratio(tmp_path):
    require_torch()  # the benchmark's other side is HF generate
    out = run(["benchmarks/rollout.py", "--size", "tiny", "--repeats", "1", "--json", str(tmp_path / "r.json")])
    assert "ratio sharpjax / HF:" in out
