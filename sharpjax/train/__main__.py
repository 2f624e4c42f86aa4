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

from sharpjax.errors import SharpjaxError
from sharpjax.train.config import RunConfig

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
        from sharpjax.sft import check_model_dir, resolve_model_dirs

        # Everything is validated before anything heavy (an `sft:` base model trains for minutes).
        RunConfig.from_config_dict(config_dict)
        check_model_dir(config_dict.model_dir)
        if config_dict.get("ref_model_dir"):
            check_model_dir(config_dict.ref_model_dir, "config.ref_model_dir")
        config_dict = resolve_model_dirs(config_dict)
        run = RunConfig.from_config_dict(config_dict)
        from sharpjax.parallel import maybe_initialize_distributed
        from sharpjax.train.trainer import train

        maybe_initialize_distributed()
        from sharpjax.plan import preflight

        print(preflight(run), flush=True)  # before any weights load: a run that cannot fit stops here
        result = train(run, _WORKDIR.value, config_dict=config_dict.to_dict(), stop_after=_STOP_AFTER.value)
    except SharpjaxError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"done: step {result.last_step}, best step {result.best_step}, exports {result.export_dirs}, "
          f"logs in {_WORKDIR.value} (metrics.jsonl, TensorBoard)")


if __name__ == "__main__":
    app.run(main)
