"""Sharding rules, and the jitted forward on 8 fake CPU devices (in a subprocess)."""

import os
import subprocess
import sys

import jax
import pytest
from jax.sharding import AbstractMesh, PartitionSpec

from sharpjax.parallel import logical_to_spec, make_mesh

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_with_8_devices(args, timeout=600):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize(
    "family",
    # The other families are slow, and run in CI's second stage (guard).
    ["llama"] + [pytest.param(f, marks=(pytest.mark.slow, pytest.mark.guard)) for f in ("qwen2", "qwen3")],
)
def test_sharded_forward_matches_unsharded(hf_checkpoint, family):
    proc = run_with_8_devices([os.path.join(ROOT, "tests", "models", "_sharded_forward.py"), hf_checkpoint(family)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fsdp=4 tensor=2" in proc.stdout


def test_logical_to_spec_replicates_indivisible_dims():
    # On a mesh with fsdp=4, tensor=2 (abstract: the rules need only the axis sizes; a 1x1x1
    # mesh replicates everything whatever the sizes, so it could not tell the cases apart).
    mesh = AbstractMesh((1, 4, 2), ("data", "fsdp", "tensor"))
    assert logical_to_spec(("embed", "heads"), (64, 4), mesh) == PartitionSpec("fsdp", "tensor")
    assert logical_to_spec(("embed", "heads"), (66, 3), mesh) == PartitionSpec(None, None)
    assert logical_to_spec(("embed", "kv_heads"), (64, 1), mesh) == PartitionSpec("fsdp", None)
    assert logical_to_spec(("layers", "embed", "mlp"), (2, 6, 8), mesh) == PartitionSpec(None, None, "tensor")


def test_mesh_errors():
    with pytest.raises(ValueError, match="needs 16 devices"):
        make_mesh(4, 2, 2, devices=jax.devices()[:1])
