"""Faults and hostile input (issue 17): real signals, real processes, real damaged files.

    NaN reaching the weights       -> test_diverging_run_stops_and_exports_the_last_checkpoint
    two processes on one workdir   -> test_workdir_lock_*, test_launcher_lock_kill_ctrl_c_and_sigterm
    damaged checkpoints            -> test_rerun_after_damaged_checkpoints_resumes_the_newest_intact_one
    SIGTERM / Ctrl-C exit status   -> test_launcher_lock_kill_ctrl_c_and_sigterm
(The step-level guard is in test_step.py, the Checkpointer-level damage in test_checkpoint.py.)
"""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sharpjax.errors import EXIT_INTERRUPTED, TrainingDiverged, WorkdirLockedError
from sharpjax.models import load_model
from sharpjax.train.checkpoint import Checkpointer
from sharpjax.train.config import RunConfig
from sharpjax.train.lock import WorkdirLock
from sharpjax.train.metrics import read_metrics
from sharpjax.train.trainer import train
from tests.tiny import make_tiny_model, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMING = ("_s", "tokens_per_s", "time")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return make_tiny_model(str(tmp_path_factory.mktemp("tiny_base")))


def _env():
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")


def _wait_for(predicate, proc, timeout=300, what="the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process exited ({proc.returncode}) before {what}:\n{out[-2000:]}\n{err[-3000:]}")
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"timed out waiting for {what}")


def _train_steps(workdir, since: float = 0.0) -> list[int]:
    """Steps of the training records (those with a reward) in workdir/metrics.jsonl, written after `since`."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    return [r["step"] for r in read_metrics(path) if "reward/reward" in r and r["time"] >= since]


def _comparable(records):
    return [{k: v for k, v in r.items() if not k.endswith(TIMING)} for r in records]


# ---- 4. one process per workdir --------------------------------------------------------


def test_workdir_lock_is_exclusive_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from sharpjax.train.lock import WorkdirLock; "
         "lock = WorkdirLock(sys.argv[1]); print('locked', flush=True); time.sleep(600)", str(tmp_path)],
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(WorkdirLockedError, match=rf"in use by another training process \(pid {holder.pid} "):
            WorkdirLock(tmp_path)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The kernel dropped the dead process's lock: no stale lock file to clean up.
    with WorkdirLock(tmp_path) as lock:
        with pytest.raises(WorkdirLockedError):  # also exclusive within one process
            WorkdirLock(tmp_path)
    lock.release()  # idempotent
    WorkdirLock(tmp_path).release()


# ---- 3. non-finite updates ------------------------------------------------------------------


def test_diverging_run_stops_and_exports_the_last_checkpoint(tiny_model_dir, tmp_path, monkeypatch):
    """From the 3rd update on the learning rate is NaN (as a broken schedule would make it)."""
    import sharpjax.train.optim as optim

    real = optim.make_schedule
    monkeypatch.setattr(optim, "make_schedule",
                        lambda config: lambda count: jnp.where(count < 2, real(config)(count), jnp.nan))
    config = RunConfig.from_config_dict(tiny_config(
        tiny_model_dir, reward="power-a2", train__steps=8, train__max_skipped_updates=2, train__checkpoint_every=2,
        train__keep_last=3, eval__at_start=False, data__validation=(),
    ))
    workdir = str(tmp_path / "run")
    with pytest.raises(TrainingDiverged, match=r"step 4: 2 updates in a row were skipped .*last checkpoint \(step 2\)"
                       r".*config\.optim\.learning_rate"):
        train(config, workdir, progress=False)
    records = [r for r in read_metrics(workdir) if "reward/reward" in r]
    assert [(r["step"], r["update_skipped"]) for r in records] == [(1, 0.0), (2, 0.0), (3, 1.0), (4, 1.0)]
    with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
        assert ckpt.all_steps() == [2]  # the streak's steps are not checkpointed as done
    exported, _ = load_model(os.path.join(workdir, "export", "last"))
    base, _ = load_model(tiny_model_dir)
    leaves = [np.asarray(x) for x in jax.tree.leaves(exported)]
    assert all(np.isfinite(x).all() for x in leaves)
    # It is the trained policy of step 2, not the base model.
    assert max(float(np.abs(x - np.asarray(y)).max()) for x, y in zip(leaves, jax.tree.leaves(base))) > 0


# ---- 5. damaged checkpoints: a rerun resumes the newest intact one ---------------------------


@pytest.mark.slow  # two runs of 6 and 8 steps (~30 s); test_checkpoint.py covers the damage itself
@pytest.mark.guard
def test_rerun_after_damaged_checkpoints_resumes_the_newest_intact_one(tiny_model_dir, tmp_path):
    config = RunConfig.from_config_dict(tiny_config(
        tiny_model_dir, reward="power-a2", train__steps=6, train__checkpoint_every=2, train__keep_last=3,
        eval__at_start=False, data__validation=(),
    ))
    workdir = tmp_path / "run"
    full = train(config, str(workdir), progress=False)
    assert full.last_step == 6
    before = read_metrics(str(workdir))
    ckpts = workdir / "checkpoints"
    assert sorted(os.listdir(ckpts)) == ["2", "4", "6"]
    # A kill mid-save left the newest step empty; a killed cleanup left step 2 half-deleted.
    for name in os.listdir(ckpts / "6"):
        shutil.rmtree(ckpts / "6" / name) if (ckpts / "6" / name).is_dir() else os.remove(ckpts / "6" / name)
    shutil.rmtree(ckpts / "2" / "info")
    shutil.rmtree(ckpts / "2" / "state" / "ocdbt.process_0")

    # Extended to 8 steps (a resumable change), so retention must delete the half-deleted step 2.
    again = train(dataclasses.replace(config, train=dataclasses.replace(config.train, steps=8)), str(workdir),
                  progress=False)
    assert again.last_step == 8 and not again.interrupted
    # Steps 5 and 6 were redone from step 4: the same records, once each (bit-identical resume).
    # Step 0 is the data record (training problems, dropped prompts), written once by the fresh run.
    after = read_metrics(str(workdir))
    assert [r["step"] for r in after] == list(range(0, 9))
    assert _comparable(after[:7]) == _comparable(before)
    assert sorted(os.listdir(ckpts)) == ["4", "6", "8"]  # the half-deleted step 2 fell to retention
    assert os.listdir(str(ckpts) + ".damaged") == ["6"]  # the empty one was moved aside


# ---- 4 + 6. the launcher: lock, kill before the first checkpoint, Ctrl-C, SIGTERM ------------


@pytest.mark.slow
@pytest.mark.guard  # CI's second stage: slow, so not in the fast suite, but run
def test_launcher_lock_kill_ctrl_c_and_sigterm(tiny_model_dir, tmp_path):
    workdir = str(tmp_path / "run")
    cmd = [sys.executable, "-m", "sharpjax.train", "--config", "experiments/rl_arithmetic.py:quick:power-a2",
           f"--config.model_dir={tiny_model_dir}", "--config.rollout.max_total_length=96",
           "--config.rollout.max_new_tokens=16", "--config.data.validation=()", "--config.eval.at_start=False",
           "--config.train.steps=1000", "--config.train.checkpoint_every=1000", "--workdir", workdir]

    def start():
        return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    first = start()
    _wait_for(lambda: _train_steps(workdir), first, what="the first training step")
    # A second process on the same workdir: one line, status 2, nothing written.
    second = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert second.returncode == 2, second.stderr[-3000:]
    assert second.stderr.strip().splitlines() == [
        f"error: {workdir} is in use by another training process (pid {first.pid} on {os.uname().nodename}); "
        "wait for it to finish, or use another --workdir."
    ]
    # Killed before its first checkpoint: its records must not stay around to be appended to.
    first.send_signal(signal.SIGKILL)
    first.communicate()
    assert not os.path.exists(os.path.join(workdir, "checkpoints", "1"))

    t_third = time.time()
    third = start()  # the lock of the killed process is gone
    _wait_for(lambda: len(_train_steps(workdir, since=t_third)) >= 2, third, what="two steps of the rerun")
    third.send_signal(signal.SIGINT)  # Ctrl-C: checkpoint, exit 3
    out, err = third.communicate(timeout=300)
    assert third.returncode == EXIT_INTERRUPTED, err[-3000:]
    assert "interrupted: checkpointed at step" in err and "Traceback" not in err
    with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
        ctrl_c_step = ckpt.latest_step()
    steps = _train_steps(workdir)
    assert steps == list(range(1, ctrl_c_step + 1)), steps  # no step twice

    t_fourth = time.time()
    fourth = start()  # resumes, and SIGTERM: checkpoint, exit 3 (a scheduler requeues)
    _wait_for(lambda: _train_steps(workdir, since=t_fourth), fourth, what="a step after resuming")
    fourth.send_signal(signal.SIGTERM)
    out, err = fourth.communicate(timeout=300)
    assert fourth.returncode == EXIT_INTERRUPTED, err[-3000:]
    with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
        sigterm_step = ckpt.latest_step()
    assert sigterm_step > ctrl_c_step
    assert _train_steps(workdir) == list(range(1, sigterm_step + 1))
    # Library INFO logs (orbax's ~70 lines per checkpoint) stay off unless --verbosity asks.
    # sharpjax's own INFO lines (the trainer's, and each compile with its shape: train/compiles.py) are expected.
    ours = (" trainer.py:", " compiles.py:")
    library_info = [line for line in err.splitlines() if line.startswith("I") and not any(o in line for o in ours)]
    assert not library_info, err[-3000:]
    assert json.loads(open(os.path.join(workdir, "config.json")).read())["train"]["steps"] == 1000


# ---- 1. the main job: SIGTERM during RL, then the same command finishes it ----------------


@pytest.mark.slow
@pytest.mark.guard  # CI's second stage: slow, so not in the fast suite, but run
def test_main_job_sigterm_during_rl_then_rerun_resumes(tmp_path, monkeypatch):
    from sharpjax.reproduce import ROW_FILE, ReproduceConfig, run

    cache = os.environ.get("SHARPJAX_TEST_CACHE") or str(tmp_path / "cache")
    monkeypatch.setenv("SHARPJAX_CACHE_DIR", cache)
    # The uninterrupted reference (in process; also trains the cached base model the job reuses).
    reference = run(str(tmp_path / "reference"), ReproduceConfig(size="quick", modes=("task",), seeds=(0,),
                                                                 test_problems=4, eval_samples=2), progress=False)

    job = tmp_path / "job"
    run_dir = job / "runs" / "task_seed0"
    cmd = [sys.executable, "-m", "sharpjax", "--quick", "--workdir", str(job), "--modes", "task",
           "--test-problems", "4", "--eval-samples", "2"]
    env = _env() | {"SHARPJAX_CACHE_DIR": cache}
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and metrics.read_text().strip(), first, timeout=900,
              what="the RL run's first metrics record")
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=600)
    assert first.returncode == EXIT_INTERRUPTED, err[-3000:]
    assert "interrupted: task_seed0 stopped at step" in err and "run the same command again" in err
    assert not (run_dir / ROW_FILE).exists() and not (job / "results.json").exists()
    with Checkpointer(run_dir / "checkpoints") as ckpt:
        assert 1 <= ckpt.latest_step() < 4

    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    results = json.loads((job / "results.json").read_text())
    assert _train_steps(str(run_dir)) == [1, 2, 3, 4]  # resumed, no step twice
    got = {k: v for k, v in results["runs"]["task_seed0"].items() if k != "workdir"}
    want = {k: v for k, v in reference["runs"]["task_seed0"].items() if k != "workdir"}
    assert got == want
    assert results["base"] == reference["base"]
