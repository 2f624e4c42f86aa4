"""The `Task` seam: what the trainer, SFT, evaluation and the main job know about data.

A task is problems (objects with `.problem` and `.answer`), how to render one as the
model's prompt, and how to verify responses against reference answers. Everything that
samples and scores goes through it, so "correct" means one thing in training rewards,
validation, the evaluation harness and the results table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np

from sharpjax.rewards.math import VerifyResult

__all__ = ["Task", "VerifyFn"]

# (responses [N], reference answers [N]) -> one VerifyResult per response, in order.
VerifyFn = Callable[[list[str], list[str]], Sequence[VerifyResult]]


@dataclasses.dataclass(frozen=True)
class Task:
    """Problems plus the two host-side functions that give them meaning.

    Attributes:
      name: the task's registry name ("math", "arithmetic").
      train: training problems, iterated by a seeded, epoch-aware `PromptIterator`.
      validation: benchmark name -> held-out problems.
      render: problem text -> prompt text (chat template applied, generation prompt on).
      verify: (responses, references) -> `VerifyResult`s: the score (the task reward r in
        {0, 1}) and the canonical answer majority votes count.
    """

    name: str
    train: Sequence[Any]
    validation: dict[str, Sequence[Any]]
    render: Callable[[str], str]
    verify: VerifyFn

    def score(self, responses: list[str], answers: list[str]) -> np.ndarray:
        """The task reward per response: [N] float32 in {0, 1}."""
        return np.asarray([r.score for r in self.verify(responses, answers)], np.float32)

    def train_iterator(self, batch_size: int, seed: int, *, skip: Collection[int] = ()):
        """Seeded batches of `train`; the indices in `skip` are never drawn (`PromptIterator`)."""
        from sharpjax.data import PromptIterator

        return PromptIterator(self.train, batch_size=batch_size, seed=seed, skip=skip)
