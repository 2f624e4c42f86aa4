"""The paper's task: math benchmarks from JSONL files, the paper's prompt, math-verify."""

from __future__ import annotations

import functools

from sharpjax.tasks.base import Task

__all__ = ["build_task"]


def build_task(config, tokenizer) -> Task:
    """Training and validation problems of `config.data` (a `RunConfig`), rendered with the paper's prompt."""
    from sharpjax.data import load_dataset, render_prompt
    from sharpjax.rewards import verify_batch

    data = config.data
    train = load_dataset(data.train, data_dir=data.data_dir, path=data.train_path)
    validation = {
        name: load_dataset(name, data_dir=data.data_dir, limit=data.validation_limit) for name in data.validation
    }
    return Task(
        name="math",
        train=train,
        validation=validation,
        render=functools.partial(render_prompt, tokenizer),
        verify=functools.partial(verify_batch, verifier=data.verifier),
    )
