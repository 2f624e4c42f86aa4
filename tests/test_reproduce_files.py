"""Issue 27: the main job's own files. Results are written atomically and a damaged one is
redone (bug 3: a 0-byte reproduce_eval.json or inference/<mode>.json, left by a SIGKILL
mid-write, made every rerun die with a JSONDecodeError naming no file); one main job per
workdir; a --workdir that is a file is one line. No model is loaded here."""

import json
import logging
import os

import pytest

import sharpjax.reproduce as reproduce
from sharpjax.errors import ConfigError, WorkdirLockedError
from sharpjax.train.lock import WorkdirLock

SETTINGS = reproduce.ReproduceConfig(size="quick", modes=("task",), inference_modes=("temp-a2",))
ROW = {"pass@1": 0.5, "mean_length": 10.0, "token_cost_per_problem": 40.0}


def test_an_empty_finished_row_is_redone_with_a_warning_naming_it(tmp_path, caplog):
    (tmp_path / reproduce.ROW_FILE).write_text("")  # SIGKILL between open() and json.dump()
    with caplog.at_level(logging.WARNING, logger="sharpjax"):
        assert reproduce._finished_row(str(tmp_path), {"size": "quick"}) is None
    assert f"{tmp_path / reproduce.ROW_FILE} is damaged" in caplog.text


def test_an_empty_inference_row_is_evaluated_again_and_rewritten_whole(tmp_path, monkeypatch, caplog):
    path = tmp_path / reproduce.INFERENCE_ROW_DIR / "temp-a2.json"
    path.parent.mkdir()
    path.write_text("")
    calls = []
    monkeypatch.setattr(reproduce, "_evaluate_inference", lambda *a: calls.append(a[-1]) or dict(ROW))
    results = {"base_model": "b", "base": dict(ROW)}
    with caplog.at_level(logging.WARNING, logger="sharpjax"):
        rows = reproduce._inference_rows(str(tmp_path), "b", [], SETTINGS, None, results, lambda *a: None)
    assert calls == ["temp-a2"] and rows == {"temp-a2": ROW}
    assert f"{path} is damaged" in caplog.text
    assert json.loads(path.read_text())["row"] == ROW
    assert os.listdir(path.parent) == ["temp-a2.json"]  # no temporary file left


def test_a_write_killed_midway_leaves_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    path.write_text('{"old": 1}')

    def killed(fd):
        raise KeyboardInterrupt  # the signal arrives after part of the text is written

    monkeypatch.setattr(os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        reproduce.write_atomic(str(path), json.dumps({"new": "x" * 100_000}))
    assert json.loads(path.read_text()) == {"old": 1}
    assert os.listdir(tmp_path) == ["results.json"]


def test_a_second_main_job_on_the_workdir_stops_at_once(tmp_path, monkeypatch):
    def no_work(*a, **k):
        raise AssertionError("the second job started working")

    monkeypatch.setattr(reproduce, "resolve_model_dir", no_work)
    with WorkdirLock(tmp_path):  # the first job
        with pytest.raises(WorkdirLockedError, match=f"{tmp_path} is in use by another"):
            reproduce.run(str(tmp_path), SETTINGS, progress=False)


def test_a_workdir_that_is_a_file_is_one_line(tmp_path, monkeypatch, capsys):
    import sharpjax.__main__ as main_job

    monkeypatch.setattr(reproduce, "resolve_model_dir", lambda *a, **k: pytest.fail("work started"))
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match=r"--workdir .*f: is a file, not a directory"):
        reproduce.run(str(tmp_path / "f"), SETTINGS, progress=False)
    with pytest.raises(SystemExit) as e:
        main_job.main(["--quick", "--workdir", str(tmp_path / "f" / "sub")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err == f"error: --workdir {tmp_path}/f/sub: {tmp_path}/f is a file, so no directory can be made under it; " \
                  "give another path.\n"


# A launcher run in a child process whose work (named by `stage`) is replaced by a wait: the test
# sends SIGTERM once the child says it is there.
# The stage sleeps in short calls: once JAX has started its threads (the launcher's preflight
# does), the kernel may deliver SIGTERM to any of them, and then one long `time.sleep` in the main
# thread is not interrupted; Python runs the handler at the main thread's next bytecode, which
# real loading and compiling reach within a call. (A single sleep(120) made this test flaky: 1 in 4.)
_CHILD = """
import runpy, sys, time
import sharpjax.{module} as target
def stage(*args, **kwargs):
    print("STAGE", flush=True)
    for _ in range(1200):  # work between calls, as loading and compiling are: see the note below
        time.sleep(0.1)
target.{name} = stage
sys.argv[0] = "{launcher}"
runpy.run_module("{launcher}", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("launcher", ["main job, base evaluation", "train launcher, before the loop"])
def test_sigterm_outside_rl_exits_3(tmp_path, launcher):
    """Issue 27: SIGTERM during the main job's base evaluation (or SFT, or the train launcher's
    loading) killed the process (exit 143, a failure to a scheduler); inside RL it exits 3."""
    import signal
    import subprocess
    import sys

    from tests.tiny import make_tiny_model

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if launcher.startswith("main"):
        code = _CHILD.format(module="reproduce", name="_evaluate_dir", launcher="sharpjax")
        args = ["--size", "quick", "--modes", "task", "--inference-modes", "", "--workdir", str(tmp_path / "w")]
        then = "finished runs and evaluations are kept; run the same command to continue."
    else:
        code = _CHILD.format(module="train.trainer", name="train", launcher="sharpjax.train")
        model = make_tiny_model(str(tmp_path / "model"))
        args = ["--config", "experiments/rl_arithmetic.py:quick:task", f"--config.model_dir={model}",
                "--workdir", str(tmp_path / "w")]
        then = "stopped before the next checkpoint; run the same command to resume."
    child = subprocess.Popen([sys.executable, "-c", code, *args], cwd=root, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    try:
        for line in child.stdout:
            if line.startswith("STAGE"):
                break
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 3, err[-2000:]
    assert err.strip().splitlines()[-1] == f"interrupted by SIGTERM: {then}", err[-2000:]
