"""Issue 27, bug 1: a training prompt longer than every usable bucket is dropped before step 1.

Before, it crashed the run when its batch came up (`ValueError: prompt of N tokens is longer
than the largest bucket`), and every resume replayed that batch and crashed again.
"""

import json
import logging

import pytest

from sharpjax.train.config import ConfigError, RunConfig
from sharpjax.train.metrics import read_metrics
from sharpjax.train.trainer import train
from tests.tiny import make_tiny_model, tiny_config

BUCKET = 256


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    # The paper's prompt alone is ~150 characters (one token each): a context that holds it.
    return make_tiny_model(str(tmp_path_factory.mktemp("tiny_512")), max_position_embeddings=512)


def _write(path, problems):
    path.write_text("".join(json.dumps(p) + "\n" for p in problems))
    return str(path)


def _config(model_dir, train_path, **overrides):
    return RunConfig.from_config_dict(tiny_config(
        model_dir, reward="power-a2", data__task="math", data__train_path=train_path, data__validation=(),
        rollout__prompt_buckets=(128, BUCKET), rollout__max_total_length=BUCKET + 8, rollout__max_new_tokens=8,
        rollout__prompts_per_step=7, train__steps=1, eval__at_start=False, **overrides,
    ))


@pytest.mark.slow  # ~20 s: one jitted step on prompts of 256 tokens
@pytest.mark.guard  # CI's second stage: the paper's runs must survive MATH's long problems
def test_an_over_long_training_prompt_is_dropped_and_counted(model_dir, tmp_path, caplog):
    short = [{"id": f"p{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(6)]
    long = {"id": "long", "problem": "Compute " + "x + " * 60 + "1.", "answer": "1"}  # ~400 tokens > 256
    path = _write(tmp_path / "train.jsonl", short[:3] + [long] + short[3:])
    # One step of 7 prompts draws all 7 problems but the dropped one: 6 and a repeat.
    with caplog.at_level(logging.WARNING, logger="sharpjax"):
        result = train(_config(model_dir, path), str(tmp_path / "run"), progress=False)
    assert result.last_step == 1 and not result.interrupted
    record = read_metrics(str(tmp_path / "run"))[0]
    assert record["step"] == 0
    assert record["data/dropped_long_prompts"] == 1 and record["data/train_problems"] == 6
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert f"dropped 1 of 7 training prompts longer than {BUCKET} tokens" in warning and "long" in warning


def test_a_training_file_of_only_over_long_prompts_is_refused_before_the_model_loads(model_dir, tmp_path,
                                                                                     monkeypatch):
    path = _write(tmp_path / "train.jsonl", [{"problem": "y" * 400, "answer": "1"}])

    def no_load(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("sharpjax.train.load.load_model", no_load)
    with pytest.raises(ConfigError, match=r"train\.jsonl: every one of its 1 prompts is longer than 256 tokens"):
        train(_config(model_dir, path), str(tmp_path / "run"), progress=False)


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("\n", "holds no problems"),
    ('{"problem": "1+1?", "answer": "2"}\n{"problem": \n', r"train\.jsonl:2: not valid JSON"),
])
def test_training_file_errors_are_one_line_before_the_model_loads(model_dir, tmp_path, monkeypatch, content, message):
    """Issue 27: a missing, empty or malformed training file was a traceback after the model loaded."""
    path = tmp_path / "train.jsonl"
    if content is not None:
        path.write_text(content)
    monkeypatch.setattr("sharpjax.train.load.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ConfigError, match=rf"^config\.data\.train='math_train': .*{message}"):
        train(_config(model_dir, str(path)), str(tmp_path / "run"), progress=False)
