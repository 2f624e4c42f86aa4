"""The small-scale reproduction end to end (`python -m sharpjax`): plumbing, and what must hold on any machine.

The fast test runs the quick size from the shipped quick base model (sharpjax/assets/base_quick,
the same weights on every machine; it solves almost nothing). At 4 steps of 4 x 4 samples the
effects the paper is about are below the seed noise (measured over seeds 0-4, see the test), so
it asserts only what follows from the computation: the modes see the same prompts and sampling
keys, a run whose task reward is 0 everywhere does not move beyond AdamW's weight decay, a
sharpening reward moves the policy. The slow test runs the default sizes (the main job) and
asserts the task reward's gain in accuracy.
"""

import json
import os

import jax
import numpy as np
import pytest

from sharpjax.models.hf import load_model
from sharpjax.reproduce import DEFAULT_INFERENCE_MODES, FIXED_LENGTH, ReproduceConfig, run
from sharpjax.train.metrics import read_metrics


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SHARPJAX_CACHE_DIR", os.environ.get("SHARPJAX_TEST_CACHE") or str(tmp_path_factory.getbasetemp() / "cache"))


def test_quick_pipeline_end_to_end(tmp_path):
    settings = ReproduceConfig(size="quick", modes=("task", "likelihood", "power-a2"), seeds=(0,),
                                 test_problems=8, eval_samples=4, inference_modes=("temp-a2", "power-mcmc-a2"))
    results = run(str(tmp_path), settings, progress=False)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["summary"].keys() == {"task", "likelihood", "power-a2"}
    assert on_disk["inference"].keys() == {"temp-a2", "power-mcmc-a2"}
    table = (tmp_path / "results.md").read_text()
    assert "| likelihood |" in table and "| infer:power-mcmc-a2 |" in table and "cost_ratio" in table
    for k in ("pass@1", "pass@4", "maj@4", "mean_length", "no_answer_rate"):
        assert k in results["base"]
    base, temp, mcmc = results["base"], results["inference"]["temp-a2"], results["inference"]["power-mcmc-a2"]
    for row in (base, temp, mcmc):
        assert (row["num_problems"], row["num_samples"]) == (8, 4)
    # Plain sampling (T = 1 or 1/alpha) draws exactly the response tokens: cost = n * mean length.
    for row in (base, temp):
        assert row["token_cost_per_problem"] == pytest.approx(4 * row["mean_length"], rel=1e-6)
    # Power MCMC draws every token of its final responses and 8 blocks x 2 MH proposals per chain of >= 1 token
    # each (a suffix from a uniform position: ~half a response on average, rejected ones included).
    assert mcmc["token_cost_per_problem"] >= 4 * max(mcmc["mean_length"], 16)
    assert mcmc["token_cost_per_problem"] > 2 * base["token_cost_per_problem"]  # ~8x expected
    runs = results["runs"]
    for mode in ("task", "likelihood", "power-a2"):
        assert os.path.isdir(runs[f"{mode}_seed0"]["workdir"])
        assert os.path.exists(os.path.join(runs[f"{mode}_seed0"]["workdir"], "export", "last", "config.json"))
    task, lik, power = runs["task_seed0"], runs["likelihood_seed0"], runs["power-a2_seed0"]
    # The effect directions this test used to assert (sharpened base log-likelihood > task's, likelihood
    # shortens) do not hold across seeds at this size. Quick job on the shipped base, seeds 0-4, last step,
    # likelihood minus task: base log-likelihood +1.27, +0.68, +0.22, -0.005, +1.38 (power-a2: +1.27,
    # +0.01, -0.13, -0.005, +1.38); length -1.4, -1.9, -0.5, 0.0, -1.1; the k1 KL estimate of likelihood
    # at the last step 0.72, 2.21, 0.68, -0.09, 0.64 (negative on seed 3); the task run's rollouts solved
    # a problem on seeds 3 and 4. Another CPU's RL numerics are a perturbation like another seed, so
    # none of those is asserted here; what follows is exact on any machine.
    for other in (lik, power):
        # Step 1: the same base weights, prompts and sampling keys in every mode: the same rollouts.
        assert other["train_length_first"] == task["train_length_first"]
        np.testing.assert_allclose(other["base_loglik_first"], task["base_loglik_first"], rtol=1e-6)
    for row in (task, lik, power):
        # Policy = base at step 1: log pi - log pi_ref is the sampler's log-prob minus the scorer's, the same
        # fp32 numbers by two code paths (~1e-6 per token, ~30 tokens).
        assert abs(row["kl_to_base_first"]) < 1e-3, row["kl_to_base_first"]

    base_params = jax.tree.leaves(load_model(results["base_model"])[0])
    config = json.loads((tmp_path / "runs" / "task_seed0" / "config.json").read_text())
    lr, wd, steps = config["optim"]["learning_rate"], config["optim"]["weight_decay"], config["train"]["steps"]
    assert config["optim"]["warmup_steps"] == 0 and config["loss"]["kl_coef"] == 0  # the closed forms below

    def moved(row):
        last = jax.tree.leaves(load_model(os.path.join(row["workdir"], "export", "last"))[0])
        return [(np.asarray(p, np.float64), np.asarray(q, np.float64)) for p, q in zip(base_params, last)]

    train_task = [r["reward/task"] for r in read_metrics(task["workdir"]) if "reward/task" in r]
    assert len(train_task) == steps
    if max(train_task) == 0:  # seed 0 on the shipped base (measured): no rollout solved anything
        # All rewards 0 -> RLOO advantages exactly 0 -> gradient 0 -> Adam's update 0 / (0 + eps) = 0: only
        # AdamW's decay, p <- p (1 - lr wd) per step; |p_T - p_0| <= steps lr wd |p| plus fp32 rounding
        # (an ulp of p per step, doubled for the product and the sum).
        for p0, p1 in moved(task):
            bound = steps * lr * wd * np.abs(p0) + 2 * steps * np.spacing(np.abs(p0).astype(np.float32))
            assert np.all(np.abs(p1 - p0) <= bound), np.max(np.abs(p1 - p0) - bound)
    for row in (lik, power):
        # A sequence-likelihood reward differs between samples: non-zero advantages every step, and Adam
        # moves every parameter with a non-zero gradient by ~lr per step (its first step is exactly
        # lr * g / (|g| + eps)); decay alone moves none by more than steps lr wd |p| < 2e-5 here.
        # Measured (seeds 0 and 3): max |p_T - p_0| 1.2e-3 = 4 lr; the task run of seed 0 1.5e-5.
        assert max(np.max(np.abs(p1 - p0)) for p0, p1 in moved(row)) > lr
    # The job's figures, next to results.md (no fixed-length mode here, so no fixed-length figure).
    for name in ("accuracy", "length", "pass_at_k"):
        assert_png(tmp_path / f"figures_{name}.png")
    assert not (tmp_path / "figures_fixed_length.png").exists()


def assert_png(path):
    """A non-empty PNG: the signature and more than an empty canvas (a blank 110-dpi figure is ~5 KB)."""
    assert path.is_file(), path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000, (path, path.stat().st_size)


@pytest.mark.slow
def test_default_pipeline_effect_directions(tmp_path):
    """The 3-seed table's effects (BENCHMARKS.md, 2026-12-01), each with a margin of many seed stds.

    Measured (mean +- std over seeds 0-2, from base pass@1 0.589, trap stop-early rate 0.64, length 21.0):
    task pass@1 0.768 +- 0.008; likelihood pass@1 0.502 +- 0.001, stop-early rate 0.977 +- 0.003,
    length 19.47 +- 0.01. The margins below are 5-20 seed stds, so RL-time numerics of another CPU
    cannot flip them; a sign error in the reward or the advantage would.
    """
    settings = ReproduceConfig(size="default", modes=("task", "likelihood"), seeds=(0,), inference_modes=())
    results = run(str(tmp_path), settings, progress=False)
    base, task, lik = results["base"], results["runs"]["task_seed0"]["last"], results["runs"]["likelihood_seed0"]["last"]
    assert task["pass@1"] > base["pass@1"] + 0.08, (base["pass@1"], task["pass@1"])  # +0.18 measured
    assert task["trap_pass@1"] > base["trap_pass@1"] + 0.2  # it learns to finish the work (+0.40)
    assert lik["shortcut_rate"] > base["shortcut_rate"] + 0.15  # likelihood stops early (+0.34)
    assert lik["mean_length"] < base["mean_length"] - 0.8  # and shortens (-1.5 tokens)
    assert lik["pass@1"] < base["pass@1"] - 0.04  # and loses accuracy (-0.087)
    # Same prompts and sampling keys at the last steps: the base model likes likelihood's samples more.
    runs = results["runs"]
    assert runs["likelihood_seed0"]["base_loglik_last"] > runs["task_seed0"]["base_loglik_last"]


@pytest.mark.slow  # a fixed-length main job and its rerun (~45 s idle)
@pytest.mark.guard  # CI's second stage, once (Python 3.11): the fast suite stays near 20 minutes
def test_fixed_length_run_and_rerun_reuses_finished_runs(tmp_path, monkeypatch):
    settings = ReproduceConfig(size="quick", modes=("likelihood:fixed",), seeds=(0,), test_problems=4,
                                 eval_samples=2, inference_modes=("temp-a4",))
    first = run(str(tmp_path), settings, progress=False)
    fixed = first["runs"]["likelihood-fixed_seed0"]
    config = json.loads((tmp_path / "runs" / "likelihood-fixed_seed0" / "config.json").read_text())
    assert config["rollout"]["ignore_eos"] is True
    # Ignoring EOS, every training response runs to the token budget: the length cannot move.
    assert fixed["train_length_first"] == fixed["train_length_last"] == FIXED_LENGTH
    assert_png(tmp_path / "figures_fixed_length.png")

    # A rerun of the same command trains nothing again: it reads the finished run's saved evaluation.
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    def no_evaluation(*args, **kwargs):
        raise AssertionError("a finished inference-time row was evaluated again")

    monkeypatch.setattr("sharpjax.reproduce.train", no_training)
    monkeypatch.setattr("sharpjax.reproduce._evaluate_inference", no_evaluation)
    again = run(str(tmp_path), settings, progress=False)
    assert again["runs"]["likelihood-fixed_seed0"] == fixed
    assert again["inference"] == first["inference"]
    assert again["summary"] == first["summary"]


def test_unknown_mode_fails_before_any_work(tmp_path):
    from sharpjax.train.config import ConfigError

    with pytest.raises(ConfigError, match="unknown reward preset 'taks'"):
        run(str(tmp_path), ReproduceConfig(size="quick", modes=("task", "taks")), progress=False)
    with pytest.raises(ConfigError, match="':fixed'"):
        run(str(tmp_path), ReproduceConfig(size="quick", modes=("likelihood:fixd",)), progress=False)
    for bad in ("power-mcmc", "power-mcmc-a0", "power-mcmc-ax", "greedy-a2", "temp-a-1"):
        with pytest.raises(ConfigError, match=f"inference mode '{bad}'"):
            run(str(tmp_path), ReproduceConfig(size="quick", modes=("task",), inference_modes=(bad,)), progress=False)
    assert not (tmp_path / "runs").exists()


def test_main_job_command_line(monkeypatch, capsys):
    import sharpjax.__main__ as main_job

    calls = []
    monkeypatch.setattr(main_job, "run", lambda workdir, settings: calls.append((workdir, settings)))
    main_job.main(["--quick", "--seeds", "2", "--modes", "task,likelihood:fixed", "--workdir", "w"])
    workdir, settings = calls[-1]
    assert workdir == "w" and settings.size == "quick" and settings.seeds == (0, 1)
    assert settings.modes == ("task", "likelihood:fixed") and (settings.test_problems, settings.eval_samples) == (16, 4)
    assert settings.retrain_base is False  # the shipped base model unless asked
    assert settings.inference_modes == DEFAULT_INFERENCE_MODES
    main_job.main(["--size", "large", "--retrain-base", "--inference-modes", "temp-a2,power-smc-a4"])
    assert calls[-1][1].size == "large" and calls[-1][1].test_problems == 500 and calls[-1][1].retrain_base
    assert calls[-1][1].inference_modes == ("temp-a2", "power-smc-a4")
    main_job.main(["--quick", "--inference-modes", ""])
    assert calls[-1][1].inference_modes == ()
    for bad, message in ((["--modes", "task,taks"], "unknown reward preset 'taks'"),
                         (["--test-problems", "0"], "positive integer"),
                         (["--seeds", "x"], "--seeds 'x'"),
                         (["--size", "huge"], "invalid choice"),
                         (["--inference-modes", "power-mcmc-a4,tmp-a2"], "inference mode 'tmp-a2'")):
        with pytest.raises(SystemExit):
            main_job.main(bad)
        assert message in capsys.readouterr().err
    assert len(calls) == 3


def test_retrain_base_reaches_the_base_model_resolution(tmp_path, monkeypatch):
    """--retrain-base -> resolve_model_dir(..., retrain=True); by default the shipped model (retrain=False)."""
    calls = []

    def resolve(model_dir, *, retrain=False):
        calls.append((model_dir, retrain))
        raise KeyboardInterrupt  # stop before any work

    monkeypatch.setattr("sharpjax.reproduce.resolve_model_dir", resolve)
    for retrain in (False, True):
        with pytest.raises(KeyboardInterrupt):
            run(str(tmp_path), ReproduceConfig(size="quick", modes=("task",), retrain_base=retrain), progress=False)
    assert calls == [("sft:quick", False), ("sft:quick", True)]
