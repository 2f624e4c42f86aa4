"""`config.model_init="random"`: a real training run from a model directory with no weights (issue 24, item 6)."""

import json
import logging
import math
import os

import jax
import numpy as np
import pytest
import transformers

from sharpjax.configs import base_config
from sharpjax.errors import ModelFileError
from sharpjax.models import ModelConfig, init_params
from sharpjax.models.tokenizer import build_char_tokenizer
from sharpjax.sft import check_model_dir
from sharpjax.train.config import ConfigError, RunConfig
from sharpjax.train.metrics import read_metrics
from sharpjax.train.trainer import Trainer, train

# Above the byte-level BPE's 262 base ids, so the learned tokenizer has room for merges.
VOCAB = 400


def _config_only_model_dir(path, vocab_size=VOCAB) -> str:
    """A directory holding a tiny Llama's config.json and nothing else."""
    cfg = ModelConfig(model_type="llama", vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=8, tie_word_embeddings=True, bos_token_id=1,
                      eos_token_ids=(2,), pad_token_id=0, max_position_embeddings=512)
    os.makedirs(path)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg.to_hf_dict(), f)
    return str(path)


def _math_jsonl(path) -> str:
    """Sixteen MATH-like problems: every one says "apples" (a word a learned BPE makes one token)."""
    with open(path, "w") as f:
        for i in range(16):
            row = {"problem": f"Sam has {i} apples and buys {i + 3} more apples. How many apples does Sam have?",
                   "answer": str(2 * i + 3), "solution": f"Sam has $\\boxed{{{2 * i + 3}}}$ apples."}
            f.write(json.dumps(row) + "\n")
    return str(path)


def _run_config(model_dir, train_path, **fields) -> RunConfig:
    c = base_config(model_dir)
    c.model_init = "random"
    c.dtype = "float32"
    c.data.train, c.data.train_path, c.data.validation = "apples", train_path, ()
    c.rollout.prompts_per_step, c.rollout.samples_per_prompt = 2, 2
    c.rollout.max_total_length, c.rollout.max_new_tokens = 512, 8
    c.train.steps, c.train.checkpoint_every = 2, 1
    c.eval.every, c.eval.at_start = 0, False
    for name, value in fields.items():
        c[name] = value
    return RunConfig.from_config_dict(c)


def test_random_init_trains_with_a_bpe_tokenizer_learned_from_the_data(tmp_path, caplog):
    model_dir = _config_only_model_dir(tmp_path / "model")
    config = _run_config(model_dir, _math_jsonl(tmp_path / "apples.jsonl"))
    workdir = str(tmp_path / "run")
    with caplog.at_level(logging.INFO, logger="sharpjax"):
        result = train(config, workdir, progress=False)

    assert result.last_step == 2 and not result.interrupted
    records = [r for r in read_metrics(workdir) if "reward/reward" in r]
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        assert all(math.isfinite(v) for v in r.values() if isinstance(v, (int, float))), r
    assert any(name.isdigit() for name in os.listdir(os.path.join(workdir, "checkpoints")))
    assert sorted(os.listdir(model_dir)) == ["config.json"]  # nothing written into the model directory

    assert f"no tokenizer files in {model_dir}: built a byte-level BPE tokenizer" in caplog.text
    # The exported policy carries that tokenizer: learned from the data (a frequent word is one
    # token) and within the model's rows (every id has an embedding).
    tok = transformers.AutoTokenizer.from_pretrained(result.export_dirs["last"])
    assert tok.tokenize(" apples") == ["Ġapples"]
    assert len(tok) <= VOCAB and tok.eos_token == "<|end|>"


def test_random_init_never_reads_weight_files(tmp_path):
    # Unreadable weights beside config.json and a tokenizer: a pretrained load stops on them; a
    # random one never opens them, uses the directory's tokenizer, and starts the policy and the
    # reference from the same params, the seed's.
    model_dir = _config_only_model_dir(tmp_path / "model", vocab_size=len(build_char_tokenizer()))
    weights = os.path.join(model_dir, "model.safetensors")
    with open(weights, "wb") as f:
        f.write(b"not a safetensors file")
    build_char_tokenizer().save_pretrained(model_dir)
    train_path = _math_jsonl(tmp_path / "apples.jsonl")

    check_model_dir(model_dir, weights=False)  # the launcher's check of a random-weights run
    with pytest.raises(ModelFileError, match="cannot be read as safetensors"):
        check_model_dir(model_dir)
    with pytest.raises(ModelFileError, match="cannot be read as safetensors"):
        Trainer(_run_config(model_dir, train_path, model_init="pretrained"), str(tmp_path / "pretrained"))

    config = _run_config(model_dir, train_path)
    trainer = Trainer(config, str(tmp_path / "run"), progress=False)
    try:
        assert len(trainer.tokenizer) == len(build_char_tokenizer())
        expected = init_params(trainer.model, jax.random.key(config.train.seed))
        for x, y, ref in zip(jax.tree.leaves(trainer.state.params), jax.tree.leaves(expected),
                             jax.tree.leaves(trainer.ref_params)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
            np.testing.assert_array_equal(np.asarray(ref), np.asarray(y))
    finally:
        trainer.close()


def test_random_init_errors_are_one_line(tmp_path):
    train_path = _math_jsonl(tmp_path / "apples.jsonl")
    model_dir = _config_only_model_dir(tmp_path / "model")
    with pytest.raises(ConfigError, match=r"^config\.model_init='zeros' must be one of 'pretrained', 'random'\.$"):
        _run_config(model_dir, train_path, model_init="zeros")
    with pytest.raises(ConfigError, match=r"config\.ref_model_dir=.* config\.model_init='random'.*leave"):
        _run_config(model_dir, train_path, ref_model_dir=str(tmp_path / "other"))

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelFileError, match=r"config\.json not found"):
        check_model_dir(str(empty), weights=False)
    with pytest.raises(ModelFileError, match=r"config\.json not found"):
        train(_run_config(str(empty), train_path), str(tmp_path / "run_empty"), progress=False)

    # No tokenizer files and fewer rows than a byte-level BPE's base ids: refused, not clamped.
    small = _config_only_model_dir(tmp_path / "small", vocab_size=100)
    with pytest.raises(ConfigError, match=r"vocab_size=100 is under the 262 ids"):
        train(_run_config(small, train_path), str(tmp_path / "run_small"), progress=False)
