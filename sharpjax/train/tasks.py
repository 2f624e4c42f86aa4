"""What the loop trains on: problems, how to render them, and how to score answers.

A `Task` is the only thing the loop knows about data: "math" reads the benchmark JSONL files
and verifies with math-verify; "arithmetic" generates the synthetic problems of the
small-scale reproduction (`sharpjax.tasks.arithmetic`) and checks integers exactly.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from sharpjax.train.config import ConfigError, RunConfig


@dataclasses.dataclass
class Task:
    """Problems (objects with `.problem` and `.answer`) and the two host-side functions.

    Attributes:
      train: training problems, iterated by a seeded, epoch-aware `PromptIterator`.
      validation: benchmark name -> held-out problems.
      render: problem text -> prompt text (chat template applied, generation prompt on).
      score: (responses, reference answers) -> task reward per response, [N] floats in {0, 1}.
    """

    train: Sequence[Any]
    validation: dict[str, Sequence[Any]]
    render: Callable[[str], str]
    score: Callable[[list[str], list[str]], np.ndarray]

    def train_iterator(self, batch_size: int, seed: int):
        from sharpjax.data import PromptIterator

        return PromptIterator(self.train, batch_size=batch_size, seed=seed)


def _math_score(responses: list[str], answers: list[str], *, verifier: str = "boxed") -> np.ndarray:
    from sharpjax.rewards import verify_batch

    return np.asarray([r.score for r in verify_batch(responses, answers, verifier=verifier)], np.float32)


def build_task(config: RunConfig, tokenizer) -> Task:
    """The task of `config.data`, with prompts rendered by `tokenizer`'s chat template."""
    data = config.data
    if data.task == "math":
        from sharpjax.data import load_dataset, render_prompt

        train = load_dataset(data.train, data_dir=data.data_dir, path=data.train_path)
        validation = {
            name: load_dataset(name, data_dir=data.data_dir, limit=data.validation_limit) for name in data.validation
        }
        score = functools.partial(_math_score, verifier=data.verifier)
        return Task(train, validation, lambda text: render_prompt(tokenizer, text), score)
    if data.task == "arithmetic":
        from sharpjax.models.tokenizer import render_chat
        from sharpjax.tasks import arithmetic

        difficulty = arithmetic_difficulty(data.difficulty, config.model_dir)
        train = arithmetic.generate_problems(
            data.num_train_problems, seed=config.train.seed, difficulty=difficulty, split="train"
        )
        # A disjoint seed stream for held-out problems.
        held_out = arithmetic.generate_problems(
            data.num_validation_problems, seed=config.train.seed + 10_000, difficulty=difficulty, split="test"
        )
        validation = {"arithmetic": held_out} if data.validation else {}

        def score(responses, answers):
            return np.asarray([arithmetic.check(r, a) for r, a in zip(responses, answers)], np.float32)

        return Task(train, validation, lambda p: render_chat(tokenizer, arithmetic.format_prompt(p)), score)
    raise ConfigError(f"config.data.task={data.task!r} must be 'math' or 'arithmetic'.")


def arithmetic_difficulty(name: str, model_dir: str):
    """"auto": the difficulty the base model was trained on (its sft_info.json), else the default."""
    import json
    import os

    from sharpjax.tasks.arithmetic import Difficulty

    if name == "default":
        return Difficulty()
    if name == "auto":
        info_path = os.path.join(model_dir, "sft_info.json")
        if os.path.exists(info_path):
            with open(info_path) as f:
                fields = json.load(f)["config"]["difficulty"]
            return Difficulty.from_dict(fields)
        return Difficulty()
    raise ConfigError(f"config.data.difficulty={name!r} must be 'auto' (from the base model's sft_info.json) or 'default'.")
