"""pass@k / maj@k and the evaluation summaries: re-exported from `sharpjax.sample_metrics`.

They live below `tasks` and `sft` (which both use them) so that no layer imports `eval` from below
(ARCHITECTURE.md, "Layers"); this module keeps `sharpjax.eval.metrics` working for its users.
"""

from sharpjax.sample_metrics import *  # noqa: F403
from sharpjax.sample_metrics import (  # noqa: F401 - diagnose.metrics imports them from here
    _CORRECT,
    __all__,  # noqa: F401
    _vote_keys,
)
