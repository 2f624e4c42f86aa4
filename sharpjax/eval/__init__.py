"""Evaluation: pass@k / maj@k over n samples per problem on math benchmarks.

`sharpjax.eval.metrics` (pure Python + numpy) is imported eagerly; `evaluate` and
`EvalResult` (`sharpjax.eval.harness`, which imports JAX and the sampler) load lazily, so the
CLI (`python -m sharpjax.eval`) reports a bad argument before paying for those imports.
"""

from sharpjax.eval.metrics import (
    DEFAULT_KS,
    ProblemRecord,
    maj_at_k,
    pass_at_k,
    results_to_json,
    results_to_markdown,
    summarize,
)

_LAZY = {"EvalResult", "default_render_fn", "evaluate"}

__all__ = [
    "DEFAULT_KS",
    "EvalResult",
    "ProblemRecord",
    "default_render_fn",
    "evaluate",
    "maj_at_k",
    "pass_at_k",
    "results_to_json",
    "results_to_markdown",
    "summarize",
]


def __getattr__(name: str):
    if name in _LAZY:
        from sharpjax.eval import harness

        return getattr(harness, name)
    raise AttributeError(f"module 'sharpjax.eval' has no attribute {name!r}")
