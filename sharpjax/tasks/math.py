"""The paper's task: math benchmarks from JSONL files, the paper's prompt, math-verify."""

from __future__ import annotations

import functools

from sharpjax.errors import ConfigError
from sharpjax.tasks.base import Task

__all__ = ["build_task"]


def build_task(config, tokenizer) -> Task:
    """Training and validation problems of `config.data` (a `RunConfig`), rendered with the paper's prompt."""
    from sharpjax.data import load_dataset, render_prompt
    from sharpjax.rewards import verify_batch

    data = config.data
    # A missing, empty or malformed file is the user's: one line naming it (ConfigError), not a traceback.
    try:
        train = load_dataset(data.train, data_dir=data.data_dir, path=data.train_path)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"config.data.train={data.train!r}: {e}") from None
    validation = {}
    for name in data.validation:
        try:
            validation[name] = load_dataset(name, data_dir=data.data_dir, limit=data.validation_limit)
        except (ValueError, FileNotFoundError) as e:
            raise ConfigError(f"config.data.validation {name!r}: {e}") from None
    return Task(
        name="math",
        train=train,
        validation=validation,
        render=functools.partial(render_prompt, tokenizer),
        verify=functools.partial(verify_batch, verifier=data.verifier),
    )
