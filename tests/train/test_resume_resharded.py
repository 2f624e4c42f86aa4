"""Resume on another device count (issue 29, item 3): a run checkpointed on 4 fake CPU devices
(fsdp = 4) resumes on 2 (fsdp = 2), and one checkpointed on 1 device resumes on 4, with the
checkpointed params restored bit for bit onto the new mesh, then trains to its last step."""

import os
import subprocess
import sys

import pytest

from tests.tiny import make_tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _phase(devices, model_dir, workdir, fsdp, phase):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "train", "_resume_resharded.py"), model_dir,
                           workdir, str(fsdp), phase], env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert f"{phase} on {devices} devices, fsdp={fsdp}: ok" in proc.stdout, proc.stdout


@pytest.mark.slow
@pytest.mark.guard
@pytest.mark.parametrize("saved_on, resumed_on", [((4, 4), (2, 2)), ((1, 1), (4, 4))], ids=["4to2", "1to4"])
def test_resume_on_another_device_count(tmp_path, saved_on, resumed_on):
    model_dir = make_tiny_model(str(tmp_path / "model"))
    workdir = str(tmp_path / "run")
    _phase(*saved_on[:1], model_dir, workdir, saved_on[1], "save")
    _phase(*resumed_on[:1], model_dir, workdir, resumed_on[1], "resume")
