"""The paper's prompt (PAPER.md): one user turn, the model's own chat template, no system
prompt, generation prompt on.

The template contains a literal `{}` (of `boxed{}`), so it is filled with `str.replace`, never
`str.format` (which would read `{}` as a field).

Two backslashes, as the authors' model saw it: NeMo RL reads its prompt file raw and fills it
with `str.format`, so the file's `\\\\boxed{{}}` reaches the model as `\\\\boxed{}` (the paper
prints one). A different token sequence from the paper's text is a different prompt; we match
what was run (issue 26, item 7).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sharpjax.data.datasets import Problem

if TYPE_CHECKING:
    import transformers

__all__ = ["PROMPT_TEMPLATE", "format_prompt", "render_prompt", "render_prompts"]

PROMPT_TEMPLATE = (
    "Think step-by-step to solve the following problem. Output your answer inside of "
    "\\\\boxed{} tags.:\n{problem}\n\nLet's think step-by-step"
)
_FIELD = "{problem}"


def _text(problem: str | Problem) -> str:
    if isinstance(problem, Problem):
        return problem.problem
    if not isinstance(problem, str):
        raise TypeError(
            f"expected the problem text (str) or a Problem, got {type(problem).__name__}."
        )
    return problem


def format_prompt(problem: str | Problem) -> str:
    """The user message: `PROMPT_TEMPLATE` with the problem text inserted verbatim.

    Args:
      problem: The problem statement, or a `Problem` (its `.problem` is used).

    Returns:
      The user-turn text (no chat formatting).
    """
    return PROMPT_TEMPLATE.replace(_FIELD, _text(problem))


def render_prompt(tokenizer: transformers.PreTrainedTokenizerBase, problem: str | Problem) -> str:
    """The full prompt string the model sees: `format_prompt` as one user turn rendered with
    the tokenizer's chat template, generation prompt on (`sharpjax.models.tokenizer.render_chat`).

    Raises:
      ValueError: The tokenizer has no chat template.
    """
    from sharpjax.models.tokenizer import render_chat  # transformers: only when rendering.

    return render_chat(tokenizer, format_prompt(problem))


def render_prompts(
    tokenizer: transformers.PreTrainedTokenizerBase, problems: list[str] | list[Problem]
) -> list[str]:
    """`render_prompt` over a batch (e.g. one `PromptIterator.next()`)."""
    return [render_prompt(tokenizer, p) for p in problems]
