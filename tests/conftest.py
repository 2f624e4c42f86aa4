"""Shared fixtures: tiny random Hugging Face checkpoints of the three paper families.

Each is built with transformers' own PyTorch classes and `save_pretrained`, so sharpjax is
tested through the real HF import path against an independent reference implementation.
"""

import os

import numpy as np
import pytest

FAMILIES = ("llama", "qwen2", "qwen3")
_BASE = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=16384,
    rms_norm_eps=1e-6,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
_LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def hf_config(family: str, *, tie: bool | None = None):
    import transformers

    if family == "llama":
        # As Llama-3.2-3B: tied embeddings, llama3 rope scaling.
        return transformers.LlamaConfig(**_BASE, rope_parameters=_LLAMA3_ROPE, tie_word_embeddings=tie is not False)
    if family == "qwen2":
        return transformers.Qwen2Config(**_BASE, tie_word_embeddings=bool(tie))
    if family == "qwen3":
        return transformers.Qwen3Config(**_BASE, tie_word_embeddings=bool(tie))
    raise ValueError(family)


def build_hf_model(family: str, *, tie: bool | None = None, seed: int = 0):
    """A tiny HF PyTorch model with every weight random (norms near 1, biases nonzero)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(hf_config(family, tie=tie)).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
    """Factory: `hf_checkpoint(family, tie=None) -> directory` with weights and tokenizer."""
    from sharpjax.models.tokenizer import build_char_tokenizer

    made = {}

    def make(family: str, tie: bool | None = None) -> str:
        if (family, tie) not in made:
            path = str(tmp_path_factory.mktemp(f"{family}_tie{tie}"))
            build_hf_model(family, tie=tie).save_pretrained(path)
            build_char_tokenizer().save_pretrained(path)
            made[family, tie] = path
        return made[family, tie]

    return make


@pytest.fixture
def left_padded_batch():
    """Three rows of lengths 9, 5 and 2, left-padded to 9, with ids in [3, 512)."""
    rng = np.random.default_rng(0)
    lengths = [9, 5, 2]
    tokens = np.zeros((3, 9), np.int32)
    mask = np.zeros((3, 9), np.int32)
    for i, n in enumerate(lengths):
        tokens[i, 9 - n :] = rng.integers(3, 512, n)
        mask[i, 9 - n :] = 1
    return tokens, mask


def pytest_configure(config):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def data_dir():
    """The benchmark data directory (math500.jsonl, ...): $SHARPJAX_DATA_DIR, else the
    checkout's sibling ../shared/data. Tests that need the real files skip without it."""
    from pathlib import Path

    env = os.environ.get("SHARPJAX_DATA_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    if not (path / "math500.jsonl").is_file():
        pytest.skip(
            f"benchmark data not found at {path} (no math500.jsonl): set SHARPJAX_DATA_DIR to "
            "the directory holding the benchmark JSONL files to run these tests."
        )
    return path.resolve()
