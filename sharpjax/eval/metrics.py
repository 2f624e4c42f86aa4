"""pass@k / maj@k and the evaluation summaries: re-exported from `sharpjax.sample_metrics`.

They live below `tasks` and `sft` (which both use them) so that no layer imports `eval` from below
(ARCHITECTURE.md, "Layers"); this module keeps `sharpjax.eval.metrics` working for its users.
"""

from sharpjax.sample_metrics import (  # noqa: F401 - re-exports, private ones included (diagnose uses them)
    _CORRECT,
    DEFAULT_KS,
    ProblemRecord,
    _vote_keys,
    maj_at_k,
    pass_at_k,
    results_to_json,
    results_to_markdown,
    summarize,
)

__all__ = [
    "DEFAULT_KS",
    "ProblemRecord",
    "maj_at_k",
    "pass_at_k",
    "results_to_json",
    "results_to_markdown",
    "summarize",
]
