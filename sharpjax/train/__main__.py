"""Launcher: `python -m sharpjax.train --config experiments/<file>.py[:arg] [--config.x.y=v ...] --workdir DIR`.

The config is validated (`RunConfig.from_config_dict`) before any model is loaded or anything
compiles; a bad field, preset or config file stops here with one line naming it (exit status 2).
A workdir with checkpoints is resumed exactly. SIGTERM or Ctrl-C checkpoints at the next step
and exits with status 3 (`sharpjax.errors.EXIT_INTERRUPTED`): run the same command to resume.
Library logs (orbax, absl, TensorBoard) are shown from WARNING up unless --verbosity is given.
With JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID set (or SHARPJAX_DISTRIBUTED=1
under SLURM / Open MPI / TPU), every process runs this same command.
"""

import logging
import os
import sys

# The fit check (and train.remat="auto") allows a program up to config.plan.max_memory_fraction
# (0.9) of the device's memory; JAX's allocator would otherwise cap the process at 75% of it.
# Read when the GPU client starts, so setting it before any device is touched is enough.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from sharpjax.configs.cli import config_arg, fail, parse_config_flags
from sharpjax.errors import EXIT_INTERRUPTED, SharpjaxError, exit_interrupted_on_signals
from sharpjax.train.config import RunConfig

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file (experiments/*.py[:arg]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics.jsonl, TensorBoard logs, exports.")
_STOP_AFTER = flags.DEFINE_integer("stop_after", None, "checkpoint and exit after this step (resume later).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    # A signal before the training loop (loading, compiling) or a second Ctrl-C in it: exit 3 as well.
    with exit_interrupted_on_signals("stopped before the next checkpoint; run the same command to resume."):
        _main(argv)


def _main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:  # absl raises it to INFO: ~70 orbax lines per checkpoint
        absl_logging.set_verbosity(absl_logging.WARNING)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("sharpjax").setLevel(logging.INFO)
    try:
        config_dict = _CONFIG.value
    except (OSError, SyntaxError, ImportError) as e:
        fail(f"--config {config_arg(sys.argv)}: cannot load it ({str(e).strip().splitlines()[-1].strip()}).")
    try:
        from sharpjax.sft import check_model_dir, resolve_model_dirs
        from sharpjax.train.lock import check_workdir

        # Everything is validated before anything heavy (an `sft:` base model trains for minutes).
        RunConfig.from_config_dict(config_dict)
        check_workdir(_WORKDIR.value)
        if _STOP_AFTER.value is not None and _STOP_AFTER.value < 1:
            fail(f"--stop_after {_STOP_AFTER.value}: must be a step >= 1 (leave it out to train to "
                 "config.train.steps).")
        check_model_dir(config_dict.model_dir, weights=config_dict.get("model_init") != "random")
        if config_dict.get("ref_model_dir"):
            check_model_dir(config_dict.ref_model_dir, "config.ref_model_dir")
        config_dict = resolve_model_dirs(config_dict)
        run = RunConfig.from_config_dict(config_dict)
        from sharpjax.parallel import maybe_initialize_distributed
        from sharpjax.train.trainer import train

        maybe_initialize_distributed()
        from sharpjax.plan import preflight_run

        # Before any weights load: a run that cannot fit stops here, and remat="auto" becomes the
        # policy the plan chose (the line says which), so the train step is built with it.
        run, summary = preflight_run(run)
        print(summary, flush=True)
        result = train(run, _WORKDIR.value, config_dict=config_dict.to_dict(), stop_after=_STOP_AFTER.value)
    except SharpjaxError as e:
        fail(str(e))
    if result.interrupted:
        # --stop_after is asked for: a success. A signal is not: a scheduler should requeue the job.
        stopped_by_signal = _STOP_AFTER.value is None or result.last_step != _STOP_AFTER.value
        print(f"interrupted: checkpointed at step {result.last_step} of {run.train.steps} in {_WORKDIR.value}; "
              "run the same command to resume.", file=sys.stderr if stopped_by_signal else sys.stdout)
        if stopped_by_signal:
            sys.exit(EXIT_INTERRUPTED)
        return
    print(f"done: step {result.last_step}, best step {result.best_step}, exports {result.export_dirs}, "
          f"logs in {_WORKDIR.value} (metrics.jsonl, TensorBoard)")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_config_flags)
