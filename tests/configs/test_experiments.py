"""Every experiment config (the paper's sweep, the small-scale runs) builds a valid RunConfig."""

import importlib.util
import os

import pytest

from sharpjax.configs import reward_preset
from sharpjax.errors import ConfigError
from sharpjax.train.config import RunConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "experiments", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_paper_run_is_a_valid_config():
    rl_math, sweep = _load("rl_math"), _load("sweep")
    args = [a for m in ("llama3b", "qwen25_3b", "qwen3_4b") for a in sweep.runs(m)]
    assert len(args) == 2 * 2 * (2 + 5 * 3) + (2 + 5 * 2)  # PAPER.md: 34 per 3B model, 12 for Qwen3-4B
    for arg in args:
        run = RunConfig.from_config_dict(rl_math.get_config(arg))
        assert run.rollout.samples_per_prompt == 8 and run.optim.learning_rate == 1e-6 and run.loss.kl_coef == 0
        assert run.rollout.ignore_eos == arg.endswith(":fixed")
        run.check_against(context_length=131072, num_devices=8)
    llama = RunConfig.from_config_dict(rl_math.get_config("llama3b:tilted-a4-b100"))
    assert (llama.reward.mode, llama.reward.alpha, llama.reward.beta_inv) == ("sampling", 4.0, 100.0)
    assert (llama.rollout.prompts_per_step, llama.train.steps, llama.rollout.max_total_length) == (32, 500, 2048)
    qwen3 = RunConfig.from_config_dict(rl_math.get_config("qwen3_4b:likelihood"))
    assert (qwen3.rollout.prompts_per_step, qwen3.train.steps, qwen3.rollout.max_total_length) == (64, 1000, 4096)
    assert qwen3.data.validation == ("aime24",)


@pytest.mark.parametrize("size", ["quick", "default", "large"])
def test_small_scale_configs_are_valid(size):
    run = RunConfig.from_config_dict(_load("rl_arithmetic").get_config(f"{size}:power-a4"))
    assert run.data.task == "arithmetic" and run.reward.alpha == 4.0
    assert run.model_dir == ("sft:quick" if size == "quick" else "sft:default")
    run.check_against(context_length=256, num_devices=1, prompt_length=max(run.rollout.prompt_buckets))


def test_reward_presets():
    assert reward_preset("power-a1.25") == dict(mode="sampling", alpha=1.25, beta_inv=0.0)
    with pytest.raises(ConfigError, match="unknown reward preset"):
        reward_preset("power")
    with pytest.raises(ValueError, match="expected <model>:<reward>"):
        _load("rl_math").get_config("gpt5:task")
