"""The training loop: exact resume, SIGTERM checkpointing, config validation, exports."""

import os
import signal

import jax
import numpy as np
import pytest

from sharpjax.models import load_model
from sharpjax.train.config import ConfigError, RunConfig
from sharpjax.train.metrics import read_metrics
from sharpjax.train.trainer import Trainer, train
from tests.tiny import make_tiny_model, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMING = ("_s", "tokens_per_s", "time")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return make_tiny_model(str(tmp_path_factory.mktemp("tiny_base")))


def _comparable(records):
    return [{k: v for k, v in r.items() if not k.endswith(TIMING)} for r in records]


def test_resume_is_bit_identical(tiny_model_dir, tmp_path):
    config_dict = tiny_config(tiny_model_dir)
    config = RunConfig.from_config_dict(config_dict)
    full = train(config, str(tmp_path / "full"), progress=False)
    assert full.last_step == 4 and set(full.validation) == {0, 2, 4}

    first = train(config, str(tmp_path / "resumed"), stop_after=3, progress=False)
    assert first.interrupted and first.last_step == 3
    second = train(config, str(tmp_path / "resumed"), progress=False)
    assert second.last_step == 4 and not second.interrupted

    a, b = read_metrics(str(tmp_path / "full")), read_metrics(str(tmp_path / "resumed"))
    assert [r["step"] for r in a] == [r["step"] for r in b]
    assert _comparable(a) == _comparable(b)
    assert any("kl_to_base" in r for r in a) and any("val/arithmetic/pass@1" in r for r in a)
    pa, _ = load_model(full.export_dirs["last"])
    pb, _ = load_model(second.export_dirs["last"])
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # Training moved the policy away from the base model.
    base, _ = load_model(tiny_model_dir)
    assert max(float(np.abs(np.asarray(x) - np.asarray(y)).max())
               for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(base))) > 0
    assert "best" in full.export_dirs and full.best_step in (2, 4)
    # Resuming those checkpoints with other settings would mix two runs: refused, naming the setting.
    other = RunConfig.from_config_dict(tiny_config(tiny_model_dir, optim__learning_rate=0.123))
    with pytest.raises(ConfigError, match=r"optim\.learning_rate: .* 0\.123 now.*new --workdir"):
        train(other, str(tmp_path / "resumed"), progress=False)


def test_sigterm_checkpoints_and_stops(tiny_model_dir, tmp_path, monkeypatch):
    config = RunConfig.from_config_dict(tiny_config(tiny_model_dir, reward="power-a2", eval__at_start=False))
    trainer = Trainer(config, str(tmp_path), progress=False)
    original = trainer.rollout_and_update
    during = []

    def previous_handler(signum, frame):  # must neither run nor stay replaced after the run
        raise AssertionError("the run's own SIGTERM handler should have caught the signal")

    def step_then_signal(step):
        out = original(step)
        during.append(signal.getsignal(signal.SIGTERM))
        if step == 0:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(trainer, "rollout_and_update", step_then_signal)
    saved = signal.signal(signal.SIGTERM, previous_handler)
    try:
        result = trainer.run()
        after = signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, saved)
    assert result.interrupted and result.last_step == 1
    assert trainer.checkpointer.latest_step() == 1
    assert during and during[0] is not previous_handler  # the run installs its own handler ...
    assert after is previous_handler  # ... and puts the previous one back


BAD_CONFIGS = [
    ({"reward__alpah": 2.0}, "config.reward.alpah: unknown field"),
    ({"reward__mode": "optimization", "reward__alpha": 0.0, "reward__beta_inv": 0.0}, "R = 0 for every response"),
    ({"rollout__samples_per_prompt": 1}, "config.rollout.samples_per_prompt"),
    ({"train__micro_batches": 3}, "config.train.micro_batches=3"),
    ({"train__tokens_per_micro_batch": 0}, "config.train.tokens_per_micro_batch"),
    ({"rollout__temperature": 0.0}, "config.rollout.temperature"),
    ({"data__task": "poetry"}, "config.data.task"),
    # issue 16: options that were accepted and then ignored or wrong are refused, naming the field.
    ({"rollout__top_p": 0.9}, "config.rollout.top_p=0.9"),
    # issue 26: a per-token weight cannot correct tempered multi-token rollouts.
    ({"rollout__temperature": 0.7}, "config.rollout.temperature=0.7: training samples at temperature 1.0 only"),
    ({"rollout__top_k": 20}, "config.rollout.top_k=20"),
    ({"loss__ppo_clip_eps": 0.2}, "config.loss.ppo_clip_eps=0.2"),
    # Best-checkpoint selection would be silently off (item 5).
    ({"eval__metric": "pass@4", "eval__num_samples": 2}, "config.eval.metric='pass@4'.*num_samples=2"),
    ({"eval__metric": "no_answer"}, "config.eval.metric='no_answer'"),
    ({"eval__metric": "pass@3", "eval__num_samples": 4}, "config.eval.metric='pass@3'"),
    ({"data__validation": ("math500",)}, "config.data.validation=.*arithmetic"),
    ({"data__task": "math", "data__validation": ("math_500",)}, "config.data.validation: unknown benchmark"),
    ({"train__remat": "dot"}, "config.train.remat='dot' must be one of 'none', 'dots', 'full', 'auto'"),
]


@pytest.mark.parametrize("overrides, message", BAD_CONFIGS)
def test_bad_configs_name_the_field(tiny_model_dir, overrides, message):
    c = tiny_config(tiny_model_dir)
    for dotted, value in overrides.items():
        section, leaf = dotted.split("__")
        c[section][leaf] = value
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RunConfig.from_config_dict(c)


@pytest.mark.parametrize("overrides, message", [b for b in BAD_CONFIGS if "unknown field" not in b[1]])
def test_configs_built_in_python_are_refused_alike(tiny_model_dir, overrides, message):
    """`train()` and `Trainer` take a RunConfig built in Python: it refuses what the launcher does."""
    import dataclasses

    good = RunConfig.from_config_dict(tiny_config(tiny_model_dir))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        sections = {}
        for dotted, value in overrides.items():
            section, leaf = dotted.split("__")
            sections[section] = dataclasses.replace(sections.get(section, getattr(good, section)), **{leaf: value})
        dataclasses.replace(good, **sections)


def test_remat_auto_is_resolved_before_the_step_is_built(tiny_model_dir, tmp_path):
    """train.remat="auto" is a valid setting; a Trainer built without the launcher gets it resolved
    by the plan first, as the launcher does (here: no target, no GPU -> "full"; on a fake target
    the tiny model fits -> "none"), and the step gets the resolved policy."""
    from sharpjax.plan import preflight_run

    config = RunConfig.from_config_dict(tiny_config(tiny_model_dir, train__remat="auto"))
    assert config.train.remat == "auto"
    for plan, expected in ((dict(), "full"), (dict(target="h100x1", method="analytic"), "none")):
        c = tiny_config(tiny_model_dir, train__remat="auto")
        c.plan.update(plan)
        resolved, _ = preflight_run(RunConfig.from_config_dict(c))
        trainer = Trainer(resolved, str(tmp_path / expected), progress=False)
        try:
            assert trainer.step_fns.config.remat == trainer.config.train.remat == expected
        finally:
            trainer.close()


@pytest.mark.parametrize("overrides, named", [
    (dict(train__remat="auto"), "config.train.remat='auto'"),
    (dict(rollout__chunk_prompts="auto"), "config.rollout.chunk_prompts='auto'"),
])
def test_an_unresolved_auto_stops_a_direct_train_call(tiny_model_dir, tmp_path, overrides, named):
    """The trainer does not plan (the plan sits above it): an "auto" not resolved by
    `preflight_run` stops train()/Trainer in one line naming the setting and the call to make,
    before the workdir is made."""
    config = RunConfig.from_config_dict(tiny_config(tiny_model_dir, **overrides))
    for build in (Trainer, train):
        with pytest.raises(ConfigError) as e:
            build(config, str(tmp_path / "w"), progress=False)
        message = str(e.value)
        assert named in message and "sharpjax.plan.preflight_run(config)" in message and "\n" not in message
    assert not (tmp_path / "w").exists()


def test_default_and_small_scale_settings_need_no_plan():
    """RunConfig's defaults (remat "full", chunk_prompts None: one sampler call) and every
    small-scale run (the main job's, reproduce.py, which calls train() with no plan) are resolved."""
    from sharpjax.configs.small_scale import SIZES, arithmetic_rl_config
    from sharpjax.reproduce import DEFAULT_MODES, parse_mode
    from sharpjax.train.config import RolloutConfig, TrainConfig

    assert TrainConfig().remat == "full" and RolloutConfig().chunk_prompts is None
    for size in SIZES:
        for mode in DEFAULT_MODES:
            c = arithmetic_rl_config(size, parse_mode(mode)[0])
            assert "auto" not in (c.train.get("remat"), c.rollout.get("chunk_prompts")), (size, mode)


def test_checks_against_model_and_mesh(tiny_model_dir):
    config = RunConfig.from_config_dict(tiny_config(tiny_model_dir, rollout__max_total_length=4096))
    with pytest.raises(ConfigError, match="over the model's context of 160"):
        config.check_against(context_length=160, num_devices=1)
    config = RunConfig.from_config_dict(tiny_config(tiny_model_dir, rollout__prompts_per_step=3))
    with pytest.raises(ConfigError, match="not divisible by mesh data x fsdp"):
        config.check_against(context_length=4096, num_devices=8)
    config = RunConfig.from_config_dict(tiny_config(tiny_model_dir, mesh__fsdp=3))
    with pytest.raises(ConfigError, match="needs"):
        config.check_against(context_length=4096, num_devices=8)
    # Loading the model runs the same check before anything compiles.
    config = RunConfig.from_config_dict(tiny_config(tiny_model_dir, rollout__max_total_length=4096))
    with pytest.raises(ConfigError, match="max_total_length=4096"):
        Trainer(config, "/tmp/unused-workdir-never-written", progress=False)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("learning_rate", float("nan"), "config.optim.learning_rate=nan must be a finite number"),
        ("learning_rate", float("inf"), "config.optim.learning_rate=inf must be a finite number"),
        ("learning_rate", 0.0, "config.optim.learning_rate=0.0 must be > 0"),
        ("weight_decay", float("nan"), "config.optim.weight_decay=nan must be a finite number"),
        ("weight_decay", -1.0, "config.optim.weight_decay=-1.0 must be >= 0"),
        ("max_grad_norm", float("nan"), "config.optim.max_grad_norm=nan must be a finite number"),
        ("max_grad_norm", -1.0, "config.optim.max_grad_norm=-1.0 must be >= 0"),
    ],
)
def test_optimizer_numbers_that_would_poison_the_weights_are_refused(tiny_model_dir, field, value, message):
    c = tiny_config(tiny_model_dir)
    c.optim[field] = value
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        RunConfig.from_config_dict(c)


def test_max_skipped_updates_must_be_positive(tiny_model_dir):
    with pytest.raises(ConfigError, match="config.train.max_skipped_updates=0 must be a positive integer"):
        RunConfig.from_config_dict(tiny_config(tiny_model_dir, train__max_skipped_updates=0))


def test_each_response_gets_its_own_prompts_room(tiny_model_dir, tmp_path, monkeypatch):
    """issue 26, item 1: budget = max_total_length - the row's own prompt length (the paper's NeMo
    RL + vLLM), not max_total_length - the batch's prompt bucket: a short prompt beside a long one
    keeps its room. Item 7: a sharpening run (w_task = 0) still verifies its rollouts and logs the
    accuracy as reward/task (the main job's accuracy figure), without it entering the reward."""
    import dataclasses
    import types

    from sharpjax.tasks.arithmetic import ArithmeticProblem

    total = 96
    config = RunConfig.from_config_dict(tiny_config(
        tiny_model_dir, reward="power-a2", rollout__max_new_tokens=None, rollout__ignore_eos=True,
        rollout__max_total_length=total, rollout__prompts_per_step=2, rollout__samples_per_prompt=2,
        train__micro_batches=1, eval__at_start=False,
    ))
    trainer = Trainer(config, str(tmp_path), progress=False)
    short, long = "1+2", "+".join(["1"] * 24)
    batch = [ArithmeticProblem(id="s", problem=short, answer="3", solution=""),
             ArithmeticProblem(id="l", problem=long, answer="24", solution="")]
    monkeypatch.setattr(trainer.iterator, "next", lambda: batch)
    # A verifier that marks 3 of the 4 responses correct (the tiny random model answers nothing).
    marks = [types.SimpleNamespace(score=s) for s in (1.0, 0.0, 1.0, 1.0)]
    monkeypatch.setattr(trainer, "task", dataclasses.replace(trainer.task, verify=lambda texts, answers: marks))
    lengths = [len(trainer.tokenizer(trainer.task.render(p.problem), add_special_tokens=False)["input_ids"])
               for p in batch]
    assert lengths == [6, 50]  # the long one pads the batch to the 64 bucket: 32 tokens left before the fix
    out = trainer.rollout_and_update(0)
    trainer.close()
    # ignore_eos: every response uses its whole budget.
    np.testing.assert_array_equal(out["histograms"]["response_lengths"], [90, 90, 46, 46])
    assert out["scalars"]["reward/task"] == 0.75
    assert config.reward.w_task == 0
