"""The main job: `python -m sharpjax [--size quick|default|large] [--workdir runs/main] [--seeds N]`.

Runs the small-scale reproduction on the CPU (`sharpjax.reproduce`): the project's own
arithmetic base model (trained once and cached), its evaluation, RL from it with each reward
of the family (task, likelihood maximization, power sampling alpha=2 and 4, tilted sampling),
the evaluation of each, and a results table. Nothing is downloaded.

Rerunning the same command continues an interrupted job: finished runs are reused, an
interrupted run resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import logging

from sharpjax.reproduce import DEFAULT_MODES, ReproduceSettings, parse_mode, parse_seeds, run
from sharpjax.train.config import ConfigError


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("quick", "default", "large"), default="default",
                        help="quick: tiny, for CI (plumbing only, numbers mean little); default: ~20 min on a 2-core "
                        "CPU; large: 4x the batch, ~4x the steps, 500 held-out problems (for a GPU)")
    parser.add_argument("--quick", action="store_true", help="the same as --size quick")
    parser.add_argument("--workdir", default="runs/main", help="where runs, results.md and results.json go")
    parser.add_argument("--seeds", default="1", help="a count (3: seeds 0,1,2) or a comma list (0,5; one seed: 2,)")
    parser.add_argument("--modes", default=",".join(DEFAULT_MODES),
                        help="reward presets: task, likelihood, power-a<alpha>, tilted-a<alpha>-b<beta_inv>; "
                        "a ':fixed' suffix (likelihood:fixed) makes a fixed-length (ignore-EOS) run")
    parser.add_argument("--test-problems", type=_positive_int, default=None, help="held-out problems (default 300; quick 16; large 500)")
    parser.add_argument("--eval-samples", type=_positive_int, default=None, help="samples per problem (default 16; quick 4)")
    args = parser.parse_args(argv)
    # Progress of the SFT and training loops; libraries (orbax, jax) stay at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True)
    logging.getLogger("sharpjax").setLevel(logging.INFO)
    modes = tuple(m for m in args.modes.split(",") if m)
    for mode in modes:
        try:
            parse_mode(mode)
        except ConfigError as e:
            parser.error(f"--modes: {e}")
    size = "quick" if args.quick else args.size
    settings = ReproduceSettings(
        size=size,
        modes=modes,
        seeds=tuple(_seeds(parser, args.seeds)),
        test_problems=args.test_problems or {"quick": 16, "default": 300, "large": 500}[size],
        eval_samples=args.eval_samples or (4 if size == "quick" else 16),
    )
    run(args.workdir, settings)


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return int(value)


def _seeds(parser, value):
    try:
        return parse_seeds(value)
    except ValueError as e:
        parser.error(str(e))


if __name__ == "__main__":
    main()
