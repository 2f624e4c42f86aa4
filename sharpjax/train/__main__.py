"""Launcher: `python -m sharpjax.train --config experiments/<file>.py[:arg] [--config.x.y=v ...] --workdir DIR`.

The config is validated (`RunConfig.from_config_dict`) before any model is loaded or anything
compiles; a bad field stops here with a message naming it. A workdir with checkpoints is
resumed exactly. With JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID set (or
SHARPJAX_DISTRIBUTED=1 under SLURM / Open MPI / TPU), every process runs this same command.
"""

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from sharpjax.train.config import ConfigError, RunConfig

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file (experiments/*.py[:arg]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics.jsonl, TensorBoard logs, exports.")
_STOP_AFTER = flags.DEFINE_integer("stop_after", None, "checkpoint and exit after this step (resume later).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config_dict = _CONFIG.value
    try:
        from sharpjax.train.resolve import resolve_model_dirs

        config_dict = resolve_model_dirs(config_dict)
        run = RunConfig.from_config_dict(config_dict)
    except ConfigError as e:
        print(f"error: bad config: {e}", file=sys.stderr)
        sys.exit(2)
    from sharpjax.train.loop import maybe_initialize_distributed, train

    maybe_initialize_distributed()
    try:
        from sharpjax.plan import preflight

        print(preflight(run), flush=True)  # before any weights load: a run that cannot fit stops here
        result = train(run, _WORKDIR.value, config_dict=config_dict.to_dict(), stop_after=_STOP_AFTER.value)
    except ConfigError as e:
        print(f"error: bad config: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"done: step {result.last_step}, best step {result.best_step}, exports {result.export_dirs}, "
          f"logs in {_WORKDIR.value} (metrics.jsonl, TensorBoard)")


if __name__ == "__main__":
    app.run(main)
