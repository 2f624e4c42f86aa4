"""Shared fixtures: tiny random Hugging Face checkpoints of the three paper families.

Each is built with transformers' own PyTorch classes and `save_pretrained`, so sharpjax is
tested through the real HF import path against an independent reference implementation.
"""

import os

import numpy as np
import pytest

from tests.tiny import build_hf_model


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


def in_ci() -> bool:
    """CI=true (set by CI services): missing test data is a failure, not a skip."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def find_data_dir():
    """The benchmark data directory (math500.jsonl, ...): $SHARPJAX_DATA_DIR, else the
    checkout's sibling ../shared/data. Without it the calling test skips, or, under CI=true,
    fails: CI must run every test that guards the data-dependent code."""
    from pathlib import Path

    env = os.environ.get("SHARPJAX_DATA_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    if not (path / "math500.jsonl").is_file():
        message = (
            f"benchmark data not found at {path} (no math500.jsonl): set SHARPJAX_DATA_DIR to "
            "the directory holding the benchmark JSONL files to run these tests."
        )
        if in_ci():
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message)
    return path.resolve()


@pytest.fixture(scope="session")
def data_dir():
    """`find_data_dir()` as a fixture."""
    return find_data_dir()
