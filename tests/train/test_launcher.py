"""`python -m sharpjax.train`: config file + command-line overrides, errors before compiling."""

import os
import subprocess
import sys

from sharpjax.train.metrics import read_metrics
from tests.tiny import make_tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def launch(*flags, timeout=600):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "sharpjax.train", *flags], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_launcher_trains_with_overrides_and_rejects_bad_configs(tmp_path):
    model = make_tiny_model(str(tmp_path / "model"))
    common = ["--config", "experiments/rl_arithmetic.py:quick:power-a2", f"--config.model_dir={model}",
              "--config.rollout.max_total_length=96", "--config.rollout.max_new_tokens=16",
              "--config.data.num_validation_problems=2"]
    bad = launch(*common, "--config.reward.alpha=-1.0", "--workdir", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "config.reward" in bad.stderr and "alpha" in bad.stderr, bad.stderr[-2000:]
    assert not os.path.exists(tmp_path / "bad")
    # Issue 27: --stop_after 0 trained to the end; a --workdir under a file was a traceback.
    zero = launch(*common, "--stop_after", "0", "--workdir", str(tmp_path / "zero"))
    assert zero.returncode == 2 and "--stop_after 0: must be a step >= 1" in zero.stderr, zero.stderr[-2000:]
    (tmp_path / "file").write_text("")
    under = launch(*common, "--workdir", str(tmp_path / "file" / "w"))
    assert under.returncode == 2 and under.stderr.strip().splitlines()[-1] == (
        f"error: --workdir {tmp_path}/file/w: {tmp_path}/file is a file, so no directory can be made under it; "
        "give another path."), under.stderr[-2000:]
    too_long = launch(*common, "--config.rollout.max_total_length=4096", "--workdir", str(tmp_path / "long"))
    assert too_long.returncode == 2 and "max_total_length=4096" in too_long.stderr, too_long.stderr[-2000:]

    # remat="auto" on a (fake) H100 target: the plan resolves it once, before the step is built.
    ok = launch(*common, "--config.train.steps=2", "--config.eval.every=0", "--config.reward.alpha=4.0",
                "--config.train.remat=auto", "--config.plan.target=h100x1", "--config.plan.method=analytic",
                "--workdir", str(tmp_path / "run"))
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "done: step 2" in ok.stdout
    assert ok.stdout.count("remat: auto -> none (analytic plan, h100x1: train_step peak ") == 1
    assert "remat: auto" not in ok.stderr  # the trainer got the resolved policy: no second resolution
    records = read_metrics(str(tmp_path / "run"))
    assert [r["step"] for r in records if "reward/reward" in r] == [1, 2]
    import json

    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["reward"]["alpha"] == 4.0 and config["train"]["steps"] == 2
    assert config["train"]["remat"] == "auto"  # the setting as given: a resume resolves it again


def test_launcher_names_the_bad_file_of_a_model_directory(tmp_path):
    # issue 16, item 6: a corrupt config.json or a truncated safetensors file (issue 27: or chat template) stops
    # the launcher with one line naming the file (exit 2, no traceback), before anything trains or compiles.
    model = make_tiny_model(str(tmp_path / "model"))
    common = ["--config", "experiments/rl_arithmetic.py:quick:power-a2", f"--config.model_dir={model}",
              "--workdir", str(tmp_path / "run")]
    # Issue 27: a truncated chat template failed at the first render, after the weights loaded.
    template = os.path.join(model, "chat_template.jinja")
    good_template = open(template).read()
    with open(template, "w") as f:
        f.write(good_template[:60])
    out = launch(*common)
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1].startswith(
        f"error: {template}: the chat template is not valid Jinja ("), out.stderr[-2000:]
    with open(template, "w") as f:
        f.write(good_template)
    weights = os.path.join(model, "model.safetensors")
    data = open(weights, "rb").read()
    with open(weights, "wb") as f:
        f.write(data[:-100])
    out = launch(*common)
    assert out.returncode == 2 and f"{weights} cannot be read as safetensors" in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    with open(os.path.join(model, "config.json"), "w") as f:
        f.write('{"model_type": "llama", ')
    out = launch(*common)
    assert out.returncode == 2 and f"{model}/config.json is not valid JSON" in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and not os.path.exists(tmp_path / "run")
