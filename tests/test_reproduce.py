"""The small-scale reproduction end to end (`python -m sharpjax`): plumbing and the directions of the effects.

The fast test runs the quick sizes (an SFT model of ~30 s that solves almost nothing), so it
checks what must hold whatever the accuracy: the runs of different reward modes see the same
prompts and sampling keys, so "task" (whose reward is 0 for every sample of a model that
solves nothing: zero advantages, no update) is the base model's own behaviour, and the
sharpening rewards must move away from it in the predicted directions. The slow test runs the
default sizes (the main job) and asserts the task reward's gain in accuracy.
"""

import json
import os

import pytest

from sharpjax.reproduce import DEFAULT_INFERENCE_MODES, FIXED_LENGTH, ReproduceConfig, run


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
    # The task run never moved (no sample solved anything): it is the base model.
    assert task["train_task_reward_last"] == 0.0 and abs(task["kl_to_base_last"]) < 1e-4
    for sharpened in (lik, power):
        # KL to the base model is positive and grows with training.
        assert sharpened["kl_to_base_last"] > 0.1
        assert sharpened["kl_to_base_last"] > sharpened["kl_to_base_first"]
        # The base model likes the sharpened policy's samples more than its own.
        assert sharpened["base_loglik_last"] > task["base_loglik_last"]
    # Likelihood maximization shortens responses (fewer tokens, fewer log-prob terms).
    assert lik["train_length_last"] < task["train_length_last"]


@pytest.mark.slow
def test_default_pipeline_task_reward_improves_accuracy(tmp_path):
    settings = ReproduceConfig(size="default", modes=("task", "likelihood"), seeds=(0,))  # 300 problems x 16
    results = run(str(tmp_path), settings, progress=False)
    base, task, lik = results["base"], results["runs"]["task_seed0"], results["runs"]["likelihood_seed0"]
    assert task["last"]["pass@1"] > base["pass@1"] + 0.015, (base["pass@1"], task["last"]["pass@1"])
    # Same prompts and sampling keys at the last steps: the base model likes likelihood's samples more.
    assert lik["base_loglik_last"] > task["base_loglik_last"]
    assert lik["kl_to_base_last"] > lik["kl_to_base_first"] > 0


def test_fixed_length_run_and_rerun_reuses_finished_runs(tmp_path, monkeypatch):
    settings = ReproduceConfig(size="quick", modes=("likelihood:fixed",), seeds=(0,), test_problems=4,
                                 eval_samples=2, inference_modes=("temp-a4",))
    first = run(str(tmp_path), settings, progress=False)
    fixed = first["runs"]["likelihood-fixed_seed0"]
    config = json.loads((tmp_path / "runs" / "likelihood-fixed_seed0" / "config.json").read_text())
    assert config["rollout"]["ignore_eos"] is True
    # Ignoring EOS, every training response runs to the token budget: the length cannot move.
    assert fixed["train_length_first"] == fixed["train_length_last"] == FIXED_LENGTH

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
    assert settings.inference_modes == DEFAULT_INFERENCE_MODES
    main_job.main(["--size", "large", "--inference-modes", "temp-a2,power-smc-a4"])
    assert calls[-1][1].size == "large" and calls[-1][1].test_problems == 500
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
