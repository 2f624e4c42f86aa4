"""SFT of the arithmetic base model: loss mask, learning, caching, HF export, accuracy."""

import dataclasses
import importlib.util
import json
import os
import pathlib
import re
import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sharpjax.eval import harness
from sharpjax.models import apply, init_params, load_model
from sharpjax.models.tokenizer import build_char_tokenizer, load_tokenizer
from sharpjax.sft import (
    SFTConfig,
    SFTEvalConfig,
    SFTModelConfig,
    SFTOptimConfig,
    SFTTaskConfig,
    encode_examples,
    measure_accuracy,
    sft_loss,
    train_base_model,
)
from sharpjax.sft import base_model as sft
from sharpjax.tasks.arithmetic import Difficulty, generate_problems
from tests.tiny import require_torch

EXPERIMENT = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "sft_arithmetic.py"

# Small enough to train in seconds on a contended CPU, big enough to learn the format.
TINY = SFTConfig(
    model=SFTModelConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16),
    task=SFTTaskConfig(max_seq_len=48, shortcut_from_step=40),
    optim=SFTOptimConfig(steps=80, batch_size=16, learning_rate=1e-2, warmup_steps=10),
    eval=SFTEvalConfig(eval_problems=8, eval_samples=2, max_new_tokens=40, log_every=40),
)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return train_base_model(str(tmp_path_factory.mktemp("sft") / "base"), TINY)


def test_training_lowers_the_loss(tiny_model_dir):
    info = sft.load_sft_info(tiny_model_dir)
    assert info["config"] == TINY.to_dict()
    assert np.isclose(info["initial_loss"], np.log(len(build_char_tokenizer())), atol=0.3)  # ~uniform at init
    assert info["final_loss"] < 0.5 * info["initial_loss"]
    assert info["train_seconds"] > 0
    acc = info["accuracy"]
    assert len(acc["per_problem"]) == TINY.eval.eval_problems
    # The recorded accuracy is the exported model's: re-measured from the saved directory with
    # the same problems and key, every per-problem fraction (a multiple of 1 / eval_samples)
    # comes out the same, and mean@1 is their mean.
    from sharpjax.sft.train import split_problems

    params, config = load_model(tiny_model_dir)
    again = measure_accuracy(
        params, config, load_tokenizer(tiny_model_dir), split_problems(TINY)[1],
        key=jax.random.key(TINY.eval.eval_seed), num_samples=TINY.eval.eval_samples,
        max_new_tokens=TINY.eval.max_new_tokens,
    )
    assert list(again.per_problem) == acc["per_problem"] and again.greedy == acc["greedy"]
    assert acc["mean_at_1"] == pytest.approx(np.mean(acc["per_problem"]))
    assert all(p * TINY.eval.eval_samples == round(p * TINY.eval.eval_samples) for p in acc["per_problem"])


def test_loss_mask_covers_exactly_the_response():
    tok = build_char_tokenizer()
    problems = generate_problems(3, seed=0, difficulty=Difficulty(max_operands=3))
    tokens, attn, resp = encode_examples(tok, problems, max_seq_len=48)
    assert tokens.shape == attn.shape == resp.shape == (3, 48)
    for i, p in enumerate(problems):
        n_resp = len(p.solution) + 1  # one token per character, plus the end-of-turn token
        n_real = 1 + len(p.problem) + 2 + n_resp  # <|user|> problem <|end|> <|assistant|> response
        np.testing.assert_array_equal(attn[i], (np.arange(48) >= 48 - n_real).astype(np.int32))
        np.testing.assert_array_equal(resp[i], (np.arange(48) >= 48 - n_resp).astype(np.int32))
        assert tok.decode(tokens[i][resp[i] == 1]) == p.solution + "<|end|>"
        assert tok.decode(tokens[i][(attn[i] == 1) & (resp[i] == 0)]) == f"<|user|>{p.problem}<|end|><|assistant|>"

    # The loss by hand: full-forward logits, log-softmax in numpy, response positions only.
    config = TINY.model_config(tok)
    params = init_params(config, jax.random.key(0), init_std=0.5)
    logits = np.asarray(apply(params, jnp.asarray(tokens), jnp.asarray(attn), config=config), np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(
        -1, keepdims=True
    )
    total, count = 0.0, 0
    for i in range(3):
        for t in range(1, 48):
            if resp[i, t]:
                total -= logp[i, t - 1, tokens[i, t]]
                count += 1
    loss, metrics = sft_loss(params, tokens, attn, resp, config=config)
    assert int(metrics["num_tokens"]) == count == sum(len(p.solution) + 1 for p in problems)
    np.testing.assert_allclose(float(loss), total / count, rtol=1e-5)
    # The mask matters: counting prompt positions too gives a different loss.
    all_mask_loss, _ = sft_loss(params, tokens, attn, attn, config=config)
    assert not np.isclose(float(all_mask_loss), float(loss))


def test_too_long_examples_are_an_error():
    tok = build_char_tokenizer()
    problems = generate_problems(4, seed=0, difficulty=Difficulty(min_operands=4, max_operands=4, max_digits=3))
    with pytest.raises(ValueError, match="max_seq_len"):
        encode_examples(tok, problems, max_seq_len=20)


def test_second_call_is_cached(tiny_model_dir, monkeypatch):
    info_path = os.path.join(tiny_model_dir, sft.INFO_FILE)
    mtime = os.path.getmtime(info_path)
    weights_mtime = os.path.getmtime(os.path.join(tiny_model_dir, "model.safetensors"))

    def no_training(config):
        raise AssertionError("train() was called for a cached model")

    monkeypatch.setattr(sft, "train", no_training)
    assert train_base_model(tiny_model_dir, TINY) == tiny_model_dir
    assert os.path.getmtime(info_path) == mtime
    assert os.path.getmtime(os.path.join(tiny_model_dir, "model.safetensors")) == weights_mtime
    # A different config is not a cache hit.
    with pytest.raises(AssertionError, match="train\\(\\) was called"):
        train_base_model(tiny_model_dir, TINY.replace(seed=TINY.seed + 1))


def test_incomplete_directory_is_not_a_cache_hit(tmp_path, monkeypatch):
    out = tmp_path / "m"
    out.mkdir()
    (out / sft.INFO_FILE).write_text(json.dumps({"format_version": sft.FORMAT_VERSION, "config": TINY.to_dict()}))
    called = []
    monkeypatch.setattr(sft, "train", lambda config: called.append(config) or (_ for _ in ()).throw(RuntimeError("x")))
    with pytest.raises(RuntimeError):
        train_base_model(str(out), TINY)  # no weights next to the info: retrain
    assert called == [TINY]
    assert not (out / sft.INFO_FILE).exists()  # the stale info was removed before training


def test_saved_directory_loads_in_sharpjax_and_transformers(tiny_model_dir):
    torch = require_torch()
    import transformers

    params, config = load_model(tiny_model_dir)
    tok = load_tokenizer(tiny_model_dir)
    assert len(tok) == config.vocab_size and tok.eos_token_id in config.eos_token_ids
    tokens, attn, _ = encode_examples(tok, generate_problems(4, seed=5), max_seq_len=TINY.task.max_seq_len)
    ours = np.asarray(apply(params, jnp.asarray(tokens), jnp.asarray(attn), config=config))

    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    positions = np.maximum(np.cumsum(attn, -1) - 1, 0)
    with torch.no_grad():
        theirs = hf(
            input_ids=torch.as_tensor(tokens, dtype=torch.long),
            attention_mask=torch.as_tensor(attn, dtype=torch.long),
            position_ids=torch.as_tensor(positions, dtype=torch.long),
        ).logits.numpy()
    real = attn.astype(bool)
    np.testing.assert_allclose(ours[real], theirs[real], atol=2e-4, rtol=2e-4)


def test_measure_accuracy_aggregates_checks(monkeypatch):
    """With a fake sampler that answers correctly exactly where we say, the numbers follow."""
    tok = build_char_tokenizer()
    config = TINY.model_config(tok)
    problems = generate_problems(5, seed=0)
    by_prompt = {p.problem: p for p in problems}
    calls = []

    def fake_generate_text(params, model_config, tokenizer, prompts, key, sampling, *, buckets):
        calls.append(sampling)
        texts = []
        for prompt in prompts:
            p = by_prompt[prompt.removeprefix("<|user|>").removesuffix("<|end|><|assistant|>")]
            i = problems.index(p)
            for s in range(sampling.num_samples):
                # Problem i: samples s < i are right (so i of 4 right, capped); greedy right for even i.
                right = (i % 2 == 0) if sampling.greedy else s < i
                texts.append(p.solution if right else "\\boxed{x}")
        rows = len(texts)  # the harness reads lengths and finished flags of the rollout
        return texts, types.SimpleNamespace(lengths=np.ones(rows, np.int32), finished=np.ones(rows, bool))

    monkeypatch.setattr(harness, "generate_text", fake_generate_text)
    acc = measure_accuracy(None, config, tok, problems, key=jax.random.key(0), num_samples=4, batch_size=2)
    assert acc.per_problem == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert acc.mean_at_1 == pytest.approx(0.5)
    assert acc.greedy == pytest.approx(3 / 5)
    assert acc.to_dict()["fraction_mixed"] == pytest.approx(3 / 5)
    assert {s.greedy for s in calls} == {True, False}
    assert all(s.temperature == 1.0 and s.stop_token_ids == (tok.eos_token_id,) for s in calls)
    with pytest.raises(ValueError, match="at least one"):
        measure_accuracy(None, config, tok, [], key=jax.random.key(0))


@pytest.mark.parametrize(
    ("section", "change", "match"),
    [
        ("optim", dict(steps=0), "optim.steps"),
        ("model", dict(num_heads=3, num_kv_heads=2), "multiple"),
        ("model", dict(head_dim=15), "even"),
        ("optim", dict(learning_rate=0.0), "learning_rate"),
        ("optim", dict(warmup_steps=80), "warmup_steps"),
        ("task", dict(max_seq_len=512), "max_position_embeddings"),
        ("task", dict(difficulty={"max_operands": 3}), "Difficulty"),
    ],
)
def test_bad_config_is_rejected(section, change, match):
    with pytest.raises((ValueError, TypeError), match=match):
        TINY.replace(**{section: dataclasses.replace(getattr(TINY, section), **change)})


def test_config_round_trips_and_rejects_unknown_fields():
    assert SFTConfig.from_config_dict(json.loads(json.dumps(TINY.to_dict()))) == TINY
    with pytest.raises(ValueError, match="SFTConfig.optim.stepz: unknown field"):
        SFTConfig.from_config_dict({"optim": {"stepz": 3}})
    with pytest.raises(ValueError, match=r"SFTConfig.optim.steps='3' must be of type int"):
        SFTConfig.from_config_dict({"optim": {"steps": "3"}})


@pytest.mark.parametrize(("flat", "section"), [("steps", "optim"), ("hidden_size", "model"), ("eval_seed", "eval"),
                                               ("difficulty", "task")])
def test_a_flat_field_names_its_section(flat, section):
    """The layout before the sections (`steps` at the top) is a ConfigError naming the new path, not a traceback."""
    moved = re.escape(f"SFTConfig.{flat} is now SFTConfig.{section}.{flat}")
    with pytest.raises(sft.ConfigError, match=moved):
        SFTConfig.from_config_dict({flat: TINY.to_dict()[section][flat]})
    with pytest.raises(sft.ConfigError, match=moved):
        TINY.replace(**{flat: getattr(getattr(TINY, section), flat)})


def _experiment_module():
    spec = importlib.util.spec_from_file_location("sft_arithmetic_config", EXPERIMENT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("preset", ["default", "quick"])
def test_experiment_presets_build_configs(preset):
    cfg = _experiment_module().get_config(preset)
    config = SFTConfig.from_config_dict(cfg)
    assert config.seed == cfg.seed and config.optim.steps == cfg.optim.steps
    assert config.task.difficulty == Difficulty.from_dict(cfg.task.difficulty)
    from sharpjax.configs.small_scale import sft_config

    assert config == sft_config(preset)  # the experiment file is the recipe, nothing added or lost
    # Every training example of the preset fits its sequence length.
    problems = generate_problems(2000, seed=config.seed, difficulty=config.task.difficulty)
    encode_examples(build_char_tokenizer(), problems, max_seq_len=config.task.max_seq_len)


def test_experiment_rejects_unknown_preset_and_typos():
    module = _experiment_module()
    with pytest.raises(ValueError, match="preset"):
        module.get_config("fast")
    cfg = module.get_config("quick")
    cfg.optim.stepz = 3
    with pytest.raises(ValueError, match="stepz"):
        SFTConfig.from_config_dict(cfg)


@pytest.mark.slow
@pytest.mark.guard  # CI's second stage: the RL runs' base model stays calibrated
def test_default_preset_is_a_mediocre_base_model(tmp_path):
    """The base model the RL runs start from: some answers right, lots of room to improve."""
    config = SFTConfig.from_config_dict(_experiment_module().get_config("default"))
    info = sft.load_sft_info(train_base_model(str(tmp_path / "base"), config))
    assert 0.15 <= info["accuracy"]["mean_at_1"] <= 0.7, info["accuracy"]
    assert info["accuracy"]["fraction_mixed"] > 0.2


# --- The shipped base models (sharpjax/assets/base_<size>) -------------------------------------------------


@pytest.mark.parametrize("size", ["quick", "default"])
def test_shipped_base_model_is_the_recipe_and_loads(size):
    """The shipped weights are what sft_config(size) trains: a changed recipe must come with new weights."""
    from sharpjax.configs.small_scale import sft_config

    model_dir = sft.shipped_model_dir(size)
    info = sft.load_sft_info(model_dir)
    assert info is not None, f"no {sft.INFO_FILE} in {model_dir}"
    # On failure: the recipe in sharpjax/sft/config.py changed; retrain and ship the model
    # (sharpjax/assets/README.md has the command).
    assert info["format_version"] == sft.FORMAT_VERSION and info["config"] == sft_config(size).to_dict()
    params, model_config = load_model(model_dir)
    tokenizer = load_tokenizer(model_dir)
    assert model_config.num_params == info["num_params"] == sum(x.size for x in jax.tree.leaves(params))
    assert model_config.vocab_size == len(tokenizer)
    assert sft.resolve_model_dir(f"sft:{size}") == model_dir


def test_sft_size_resolves_to_the_shipped_model_without_training(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARPJAX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(sft, "train", lambda config: pytest.fail("sft:quick trained a model"))
    before = {p.name: p.stat().st_mtime_ns for p in pathlib.Path(sft.shipped_model_dir("quick")).iterdir()}
    assert sft.resolve_model_dir("sft:quick") == sft.shipped_model_dir("quick")
    assert {p.name: p.stat().st_mtime_ns for p in pathlib.Path(sft.shipped_model_dir("quick")).iterdir()} == before
    assert not (tmp_path / "cache").exists()  # nothing written anywhere


def test_changed_recipe_needs_retrain_base_then_uses_the_retrained_model(tmp_path, monkeypatch):
    """A recipe that no longer matches the shipped weights is an error naming --retrain-base, never stale weights."""
    import sharpjax.sft.config as sft_config_module

    monkeypatch.setenv("SHARPJAX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(sft_config_module, "sft_config", lambda name="default": TINY)  # "someone changed the recipe"
    with pytest.raises(sft.ConfigError, match=r"--retrain-base.*") as err:
        sft.resolve_model_dir("sft:quick")
    assert "optim.steps (150 there, 80 now)" in str(err.value)

    trained = []
    real_train = sft.train
    monkeypatch.setattr(sft, "train", lambda config: trained.append(config) or real_train(config))
    retrained = sft.resolve_model_dir("sft:quick", retrain=True)
    assert retrained == str(tmp_path / "cache" / "sft_quick") and trained == [TINY]
    assert sft.load_sft_info(retrained)["config"] == TINY.to_dict()
    # From now on sft:quick is the model retrained with the current recipe (no second training).
    assert sft.resolve_model_dir("sft:quick") == retrained
    assert sft.resolve_model_dir("sft:quick", retrain=True) == retrained and len(trained) == 1


def test_a_damaged_sft_info_is_one_line_naming_it(tmp_path, monkeypatch):
    """Issue 27: a truncated sft_info.json was a JSONDecodeError naming no file (data.difficulty 'auto'),
    and for the shipped model "it has no readable sft_info.json"."""
    from sharpjax.configs.small_scale import sft_config
    from sharpjax.errors import ModelFileError
    from sharpjax.tasks.arithmetic import difficulty_for

    model = shutil.copytree(sft.shipped_model_dir("quick"), tmp_path / "m")
    info = model / "sft_info.json"
    info.write_text(info.read_text()[:100])
    monkeypatch.setattr(sft, "shipped_model_dir", lambda size: str(model))
    monkeypatch.setenv("SHARPJAX_CACHE_DIR", str(tmp_path / "cache"))
    for call in (sft.load_sft_info, sft.check_model_dir, lambda d: difficulty_for("auto", d),
                 lambda d: sft.resolve_model_dir("sft:quick")):
        with pytest.raises(ModelFileError, match=re.escape(f"{info} is not valid JSON (")):
            call(str(model))
    assert not sft._is_cached(str(model), sft_config("quick"))  # a cache: trained again, not an error
    info.write_text('{"config": {}}')
    with pytest.raises(ModelFileError, match=re.escape(f"{info} has no config.task.difficulty object")):
        difficulty_for("auto", str(model))


def test_difficulty_auto_reads_the_sectioned_and_the_earlier_flat_sft_info(tmp_path):
    """config.task.difficulty (SFTConfig's sections); a model trained before them recorded config.difficulty."""
    from sharpjax.tasks.arithmetic import difficulty_for

    hard = Difficulty(max_operands=4, ops=("+", "-", "*"))
    sectioned = TINY.replace(task=dataclasses.replace(TINY.task, difficulty=hard)).to_dict()
    flat = {k: v for section in ("model", "task", "optim", "eval") for k, v in sectioned[section].items()}
    for config in (sectioned, flat):
        (tmp_path / "sft_info.json").write_text(json.dumps({"config": config}))
        assert difficulty_for("auto", str(tmp_path)) == hard


def test_shipped_assets_are_package_data():
    """Every file of sharpjax/assets matches setup.cfg's package_data, so `pip install .` (a wheel) has them."""
    import configparser
    import fnmatch

    root = pathlib.Path(__file__).resolve().parents[2]
    cfg = configparser.ConfigParser()
    cfg.read(root / "setup.cfg")
    patterns = [p.strip() for p in cfg["options.package_data"]["sharpjax"].replace("\n", ",").split(",") if p.strip()]
    assets = root / "sharpjax" / "assets"
    files = [p.relative_to(root / "sharpjax").as_posix() for p in assets.rglob("*") if p.is_file()]
    files = [f for f in files if "__pycache__" not in f]
    for size in ("quick", "default"):
        for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", sft.INFO_FILE):
            assert f"assets/base_{size}/{name}" in files
    # fnmatch's * also matches '/', so compare directory depth too (setuptools' glob does not cross it).
    unmatched = [f for f in files if not any(fnmatch.fnmatch(f, p) and f.count("/") == p.count("/") for p in patterns)]
    assert not unmatched, (unmatched, patterns)


def test_training_solutions_mix_the_two_styles_at_the_configured_share():
    from sharpjax.sft.train import training_solutions
    from sharpjax.tasks import arithmetic

    problems = generate_problems(4000, seed=3, difficulty=Difficulty())
    mixed = training_solutions(problems, shortcut_fraction=0.6, seed=1)
    traps = [(p, s) for p, s in zip(problems, mixed) if arithmetic.is_trap(p)]
    share = sum(arithmetic.stopped_early(s, p) for p, s in traps) / len(traps)
    assert abs(share - 0.6) < 4 * (0.6 * 0.4 / len(traps)) ** 0.5  # 4 binomial standard deviations
    for p, s in zip(problems, mixed):
        assert s in (arithmetic.shortcut_solution(p), p.solution)
    assert training_solutions(problems, shortcut_fraction=0.6, seed=1) == mixed  # deterministic by seed
    assert training_solutions(problems, shortcut_fraction=0.6, seed=2) != mixed
    assert training_solutions(problems, shortcut_fraction=0.0, seed=1) == [p.solution for p in problems]
    shortcuts = [arithmetic.shortcut_solution(p) for p in problems]
    assert training_solutions(problems, shortcut_fraction=1.0, seed=1) == shortcuts
    with pytest.raises(ValueError, match="shortcut_fraction"):
        TINY.replace(task=dataclasses.replace(TINY.task, shortcut_fraction=1.5))
