"""Synthetic tasks with verifiable answers (small enough to train a base model on CPU)."""

from sharpjax.tasks.arithmetic import (
    ArithmeticProblem,
    Difficulty,
    check,
    format_prompt,
    generate_problems,
)

__all__ = ["ArithmeticProblem", "Difficulty", "check", "format_prompt", "generate_problems"]
