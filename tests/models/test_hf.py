"""HF import/export round trip and clear errors on bad checkpoints."""

import json
import os
import re
import shutil

import numpy as np
import pytest
import safetensors.numpy
import transformers

from sharpjax.errors import CheckpointError, ConfigError, ModelFileError
from sharpjax.models import load_model, save_model
from sharpjax.models.hf import check_model_files
from sharpjax.models.tokenizer import load_tokenizer, render_chat
from tests.tiny import FAMILIES, require_torch


def read_tensors(model_dir):
    out = {}
    for fname in os.listdir(model_dir):
        if fname.endswith(".safetensors"):
            out |= safetensors.numpy.load_file(os.path.join(model_dir, fname))
    return out


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("max_shard_bytes", [2**40, 100_000])
def test_round_trip_gives_identical_tensors(hf_checkpoint, tmp_path, family, max_shard_bytes):
    torch = require_torch()
    src = hf_checkpoint(family)
    params, config = load_model(src, dtype="float32")
    save_model(str(tmp_path), params, config, max_shard_bytes=max_shard_bytes)
    if max_shard_bytes < 2**40:
        assert os.path.exists(tmp_path / "model.safetensors.index.json")
    original, exported = read_tensors(src), read_tensors(tmp_path)
    assert sorted(original) == sorted(exported)
    for name in original:
        np.testing.assert_array_equal(original[name], exported[name], err_msg=name)
    # transformers loads what we wrote, with the same weights.
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32)
    ref = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    for (n1, p1), (n2, p2) in zip(ref.state_dict().items(), reloaded.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1
    # and sharpjax reloads its own (sharded) export.
    again, _ = load_model(str(tmp_path), dtype="float32")
    embeds = zip(np.asarray(params["embed"])[None], np.asarray(again["embed"])[None])
    assert all(np.array_equal(a, b) for a, b in embeds)


def test_unknown_model_type(hf_checkpoint, tmp_path):
    dst = shutil.copytree(hf_checkpoint("qwen3"), tmp_path / "m")
    cfg = json.loads((dst / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"model_type='gpt2' is not supported"):
        load_model(str(dst))


def test_config_missing_field(hf_checkpoint, tmp_path):
    dst = shutil.copytree(hf_checkpoint("llama"), tmp_path / "m")
    cfg = json.loads((dst / "config.json").read_text())
    del cfg["hidden_size"]
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"config.json: required field 'hidden_size' is missing"):
        load_model(str(dst))


def test_missing_tensor_names_file_and_tensor(hf_checkpoint, tmp_path):
    dst = shutil.copytree(hf_checkpoint("qwen2", False), tmp_path / "m")
    tensors = safetensors.numpy.load_file(str(dst / "model.safetensors"))
    del tensors["model.layers.1.self_attn.k_proj.bias"]
    safetensors.numpy.save_file(tensors, str(dst / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model.layers.1.self_attn.k_proj.bias.*model.safetensors"):
        load_model(str(dst))


def test_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="config.json not found"):
        load_model(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    with pytest.raises(ConfigError, match="required field"):
        load_model(str(tmp_path))


def test_tokenizer_and_chat_template_from_checkpoint(hf_checkpoint):
    tok = load_tokenizer(hf_checkpoint("llama"))
    text = render_chat(tok, "What is 1+1?")
    assert text == "<|user|>What is 1+1?<|end|><|assistant|>"
    assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.padding_side == "left"


def test_corrupt_config_json_names_the_file(hf_checkpoint, tmp_path):
    # A ModelFileError (a SharpjaxError: the launcher prints one line), naming the file.
    dst = shutil.copytree(hf_checkpoint("llama"), tmp_path / "m")
    text = (dst / "config.json").read_text()
    for corrupt in (text[: len(text) // 2], "[1, 2]", ""):
        (dst / "config.json").write_text(corrupt)
        for load in (load_model, check_model_files):
            with pytest.raises(ModelFileError, match=re.escape(str(dst / "config.json"))):
                load(str(dst))


@pytest.mark.parametrize("max_shard_bytes", [None, 20_000], ids=["single", "sharded"])
def test_truncated_safetensors_names_the_file(hf_checkpoint, tmp_path, max_shard_bytes):
    params, config = load_model(hf_checkpoint("qwen3"), dtype="float32")
    shard = {} if max_shard_bytes is None else {"max_shard_bytes": max_shard_bytes}
    save_model(str(tmp_path), params, config, **shard)
    files = sorted(tmp_path.glob("*.safetensors"))
    victim = files[-1]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 1000])  # an interrupted download
    for load in (load_model, check_model_files):
        with pytest.raises(ModelFileError, match=re.escape(str(victim)) + ".*truncated or corrupt"):
            load(str(tmp_path))


def _truncate(path, keep):
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.parametrize("damage, name, message", [
    (lambda d: (d / "tokenizer.json").unlink(), "tokenizer.json", "not found: the model directory has no tokenizer"),
    (lambda d: _truncate(d / "tokenizer.json", 1000), "tokenizer.json", "cannot be read as a tokenizer (EOF"),
    (lambda d: (d / "tokenizer.json").write_text('{"a": 1}'), "tokenizer.json", "cannot be read as a tokenizer"),
    (lambda d: _truncate(d / "tokenizer_config.json", 50), "tokenizer_config.json", "is not valid JSON"),
    (lambda d: _truncate(d / "chat_template.jinja", 60), "chat_template.jinja", "is not valid Jinja (unexpected"),
    (lambda d: _truncate(d / "chat_template.jinja", 0), "chat_template.jinja", "is empty"),
    (lambda d: (d / "chat_template.jinja").write_bytes(b"\xff{{"), "chat_template.jinja", "is not UTF-8 text"),
], ids=["no-tokenizer.json", "tokenizer-truncated", "tokenizer-not-one", "config-truncated", "template-truncated",
        "template-empty", "template-not-utf8"])
def test_damaged_tokenizer_files_name_the_file(hf_checkpoint, tmp_path, damage, name, message):
    """Issue 27: a truncated or corrupt tokenizer file or chat template is one line naming the file (the
    template failed only at the first render, after the weights loaded); a missing tokenizer.json said
    "install sentencepiece"."""
    dst = shutil.copytree(hf_checkpoint("llama"), tmp_path / "m")
    damage(dst)
    with pytest.raises(ModelFileError) as e:
        load_tokenizer(str(dst))
    assert str(e.value).startswith(f"{dst / name}") and message in str(e.value), str(e.value)
    assert "\n" not in str(e.value) and "sentencepiece" not in str(e.value)


def test_reference_llama_uses_llama3_rope_scaling():
    # Why setup.cfg's floor is transformers>=5.0: the reference models are configured with
    # `rope_parameters`, which transformers 4.x ignores without a word (its key was
    # `rope_scaling`), so every Llama parity test would compare against default RoPE.
    from tests.tiny import build_hf_model

    assert build_hf_model("llama").model.rotary_emb.rope_type == "llama3"


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
@pytest.mark.parametrize("max_shard_bytes", [2**40, 20_000], ids=["single", "sharded"])
def test_saved_files_follow_the_umask(hf_checkpoint, tmp_path, umask, max_shard_bytes):
    """Issue 27: safetensors wrote the weights of every export 0600 (its temporary file's mode) while
    config.json and the tokenizer files followed the umask: the group could read all but the weights."""
    params, config = load_model(hf_checkpoint("qwen3"), dtype="float32")
    old = os.umask(umask)
    try:
        save_model(str(tmp_path / "m"), params, config, max_shard_bytes=max_shard_bytes)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "m").iterdir()}
    shards = [n for n in modes if n.endswith(".safetensors")]
    assert (len(shards) == 1) == (max_shard_bytes > 2**30) and "config.json" in modes
    assert modes == dict.fromkeys(modes, 0o666 & ~umask), modes
