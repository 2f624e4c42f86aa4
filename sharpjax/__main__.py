"""The main job: `python -m sharpjax [--size quick|default|large] [--workdir runs/main] [--seeds N]`.

Runs the small-scale reproduction on the CPU (`sharpjax.reproduce`): the project's own
arithmetic base model (shipped with the package, the same weights on every machine;
`--retrain-base` trains it here instead), its evaluation, RL from it with each reward of the
family (task, likelihood maximization, its fixed-length variant, power sampling alpha=2 and 4,
tilted sampling), the
evaluation of each, the base model sharpened at inference time instead (temperature 1/alpha,
power sampling; `--inference-modes`), a results table with each row's token cost (results.md)
and its figures (figures_*.png). Nothing is downloaded.

Rerunning the same command continues an interrupted job: finished runs are reused, an
interrupted run resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import sys

from sharpjax.configs.small_scale import SIZES
from sharpjax.errors import EXIT_INTERRUPTED, SharpjaxError, exit_interrupted_on_signals  # 3: SIGTERM / Ctrl-C
from sharpjax.reproduce import DEFAULT_INFERENCE_MODES, DEFAULT_MODES, ReproduceConfig, RunInterrupted, parse_seeds, run


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=tuple(SIZES), default="default",
                        help="quick: tiny, for CI (plumbing only, numbers mean little); default: ~10 min on a 2-core "
                        "CPU; large: 2x the batch, ~4x the steps, 500 held-out problems (for a GPU)")
    parser.add_argument("--quick", action="store_true", help="the same as --size quick")
    parser.add_argument("--workdir", default="runs/main", help="where runs, results.md and results.json go")
    parser.add_argument("--seeds", default="1", help="a count (3: seeds 0,1,2) or a comma list (0,5; one seed: 2,)")
    parser.add_argument("--modes", default=",".join(DEFAULT_MODES),
                        help="reward presets: task, likelihood, power-a<alpha>, tilted-a<alpha>-b<beta_inv>; "
                        "a ':fixed' suffix (likelihood:fixed) makes a fixed-length (ignore-EOS) run")
    parser.add_argument("--inference-modes", default=",".join(DEFAULT_INFERENCE_MODES),
                        help="the base model sharpened at inference time, no training: temp-a<alpha> (T = 1/alpha), "
                        "power-mcmc-a<alpha>, power-smc-a<alpha> (pi^alpha; power-mcmc draws ~8x the tokens of plain "
                        "sampling: ~4.5 min per row at 300 x 16 on a 2-core CPU, ~20 s for a temp row); "
                        "an empty string for none")
    parser.add_argument("--test-problems", type=_positive_int, default=None,
                        help="held-out problems (default: the size's, " + _per_size("test_problems") + ")")
    parser.add_argument("--eval-samples", type=_positive_int, default=None,
                        help="samples per problem (default: the size's, " + _per_size("test_samples") + ")")
    parser.add_argument("--retrain-base", action="store_true",
                        help="train the base model on this machine (SFT, minutes; cached in $SHARPJAX_CACHE_DIR, "
                        "default ~/.cache/sharpjax) instead of using the one shipped in sharpjax/assets")
    args = parser.parse_args(argv)
    # Progress of the SFT and training loops; libraries (orbax, jax) stay at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True)
    logging.getLogger("sharpjax").setLevel(logging.INFO)
    try:
        seeds = tuple(parse_seeds(args.seeds))
    except ValueError as e:
        parser.error(str(e))
    try:  # every setting is checked here, before the base model is trained
        settings = ReproduceConfig(
            size="quick" if args.quick else args.size,
            modes=tuple(m for m in args.modes.split(",") if m),
            seeds=seeds,
            inference_modes=tuple(m for m in args.inference_modes.split(",") if m),
            test_problems=args.test_problems,
            eval_samples=args.eval_samples,
            retrain_base=args.retrain_base,
        )
    except SharpjaxError as e:
        parser.error(str(e))
    try:
        # Outside RL too (base evaluation, SFT, inference rows): exit 3 like inside it, not 143.
        with exit_interrupted_on_signals("finished runs and evaluations are kept; run the same command to continue."):
            run(args.workdir, settings)
    except RunInterrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except SharpjaxError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _per_size(field: str) -> str:
    return ", ".join(f"{name} {getattr(s, field)}" for name, s in SIZES.items())


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return int(value)


if __name__ == "__main__":
    main()
