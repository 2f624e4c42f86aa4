"""Two `jax.distributed` processes on CPU (localhost coordinator) == one process with two devices."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from sharpjax.models import load_model
from sharpjax.train.metrics import read_metrics
from tests.tiny import make_tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "tests", "train", "_tiny_run.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(**extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", **extra)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(k, None) if k not in extra else None
    return env


def _single_process_run(model_dir: str, workdir: str) -> None:
    """The reference: `_tiny_run.py` in one process with two devices (rows over the data axis)."""
    single = subprocess.run([sys.executable, SCRIPT, model_dir, workdir], cwd=ROOT, timeout=600,
                            env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"), capture_output=True,
                            text=True)
    assert single.returncode == 0, single.stdout + single.stderr[-3000:]


def _two_processes(command: list[str]) -> list[tuple[str, str]]:
    """`command` as processes 0 and 1 of a localhost `jax.distributed` job, one device each; both
    must exit 0. Returns each process's (stdout, stderr)."""
    port = _free_port()
    procs = [
        subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=_env(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                                  JAX_PROCESS_ID=str(i), XLA_FLAGS="--xla_force_host_platform_device_count=1"))
        for i in range(2)
    ]
    try:
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out + err[-3000:]
    return outs


@pytest.mark.slow
@pytest.mark.guard  # CI's second stage: multi-process training must keep matching one process
def test_two_processes_match_one(tmp_path):
    model_dir = make_tiny_model(str(tmp_path / "model"))
    _single_process_run(model_dir, str(tmp_path / "single"))
    outs = _two_processes([sys.executable, SCRIPT, model_dir, str(tmp_path / "multi")])
    assert "process 0/2 devices 2 done step 2" in outs[0][0] and "process 1/2 devices 2 done step 2" in outs[1][0]

    a, b = read_metrics(str(tmp_path / "single")), read_metrics(str(tmp_path / "multi"))
    # Step 0 holds the data counts (issue 27: over-long prompts dropped before step 1), then the steps.
    assert [r["step"] for r in a] == [r["step"] for r in b] == [0, 1, 2]
    assert a[0]["data/dropped_long_prompts"] == b[0]["data/dropped_long_prompts"] == 0
    a, b = a[1:], b[1:]
    for ra, rb in zip(a, b):
        for key in ("reward/reward", "reward/ref_logp_sum", "response_length", "loss", "grad_norm", "kl_to_base"):
            np.testing.assert_allclose(rb[key], ra[key], rtol=1e-5, atol=1e-5, err_msg=key)
    pa, _ = load_model(str(tmp_path / "single" / "export" / "last"))
    pb, _ = load_model(str(tmp_path / "multi" / "export" / "last"))
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), atol=1e-5)


@pytest.mark.slow
@pytest.mark.guard  # CI's second stage: the real launcher under jax.distributed, FSDP over processes
def test_launcher_two_processes_fsdp(tmp_path):
    """`python -m sharpjax.train` in two processes (one device each, the mesh's fsdp axis across
    them): the README's multi-host command, on CPU; the same results as one process with two
    devices (`_tiny_run.py`, rows over the data axis) up to reduction order."""
    model_dir = make_tiny_model(str(tmp_path / "model"))
    _single_process_run(model_dir, str(tmp_path / "single"))
    config = os.path.join(ROOT, "tests", "train", "_tiny_config.py") + ":" + model_dir
    _two_processes([sys.executable, "-m", "sharpjax.train", "--config", config, "--workdir", str(tmp_path / "fsdp")])
    a, b = read_metrics(str(tmp_path / "single")), read_metrics(str(tmp_path / "fsdp"))
    assert [r["step"] for r in a] == [r["step"] for r in b] == [0, 1, 2]
    for ra, rb in zip(a[1:], b[1:]):
        for key in ("reward/reward", "response_length", "loss", "grad_norm"):
            np.testing.assert_allclose(rb[key], ra[key], rtol=1e-5, atol=1e-5, err_msg=key)
