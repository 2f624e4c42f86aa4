"""Tasks: problems, how to render them, and how to verify answers (`Task`), with a registry.

    math        the paper's benchmarks (JSONL in SHARPJAX_DATA_DIR), math-verify   `tasks/math.py`
    arithmetic  the synthetic task of the small-scale reproduction, exact integers  `tasks/arithmetic.py`
"""

from __future__ import annotations

from sharpjax.errors import ConfigError
from sharpjax.tasks.base import Task, VerifyFn

__all__ = ["TASKS", "Task", "VerifyFn", "build_task"]

TASKS = ("math", "arithmetic")


def build_task(config, tokenizer) -> Task:
    """The task named by `config.data.task` (a `RunConfig`), prompts rendered by `tokenizer`."""
    if config.data.task == "math":
        from sharpjax.tasks import math

        return math.build_task(config, tokenizer)
    if config.data.task == "arithmetic":
        from sharpjax.tasks import arithmetic

        return arithmetic.build_task(config, tokenizer)
    raise ConfigError(f"config.data.task={config.data.task!r} must be one of {', '.join(TASKS)}.")
