"""The errors a user of sharpjax can cause, in one hierarchy.

Every error that a bad setting or a bad file causes derives from `SharpjaxError`, so a
launcher catches one class and prints one line. Messages name the field or file and say
what to do.

    SharpjaxError
    |-- ConfigError          a run / model / SFT config that cannot work (also a ValueError)
    |-- WorkdirLockedError   another live process is training in the same workdir
    |-- TrainingDiverged     too many updates in a row were skipped as non-finite
    `-- CheckpointError      a checkpoint or model directory that cannot be read or written
        |-- CheckpointNotFoundError   (also a FileNotFoundError)
        |-- CheckpointExistsError     (also a FileExistsError)
        |-- StateMismatchError        restored tree or shapes differ (also a ValueError)
        `-- ModelFileError            a Hugging Face directory with a missing or bad file

And how a launcher stops on a signal: `EXIT_INTERRUPTED`, `exit_interrupted_on_signals`.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading

__all__ = [
    "CheckpointError",
    "CheckpointExistsError",
    "CheckpointNotFoundError",
    "ConfigError",
    "ModelFileError",
    "SharpjaxError",
    "StateMismatchError",
    "Terminated",
    "TrainingDiverged",
    "WorkdirLockedError",
    "exit_interrupted_on_signals",
]

# Exit status of a launcher (`python -m sharpjax`, `python -m sharpjax.train`) stopped by SIGTERM
# or Ctrl-C after checkpointing: not a success (a scheduler requeues it), not an error (2); the
# same command resumes the run.
EXIT_INTERRUPTED = 3


class Terminated(KeyboardInterrupt):
    """SIGTERM outside the training loop: unwinds like Ctrl-C (locks released, temporary files removed)."""


@contextlib.contextmanager
def exit_interrupted_on_signals(then: str):
    """A launcher's body: SIGTERM raises `Terminated` in the main thread, and a SIGTERM or Ctrl-C
    that unwinds it prints "interrupted by <signal>: <then>" and exits EXIT_INTERRUPTED (3), as a
    signal inside the training loop does after its checkpoint.

    Outside the loop (weights loading, compiling, the main job's evaluations, SFT) there is no
    checkpoint to write: finished results are on disk (written atomically) and a rerun redoes
    the rest. Without this, SIGTERM's default action killed the process (exit 143: a failure to
    a scheduler, not a requeue). Inside the loop the trainer's handler takes SIGTERM over (a
    checkpoint at the next step) and gives it back when the loop ends.
    """
    def handle(signum, frame):
        raise Terminated("SIGTERM")

    main = threading.current_thread() is threading.main_thread()  # signal handlers: main thread only
    previous = signal.signal(signal.SIGTERM, handle) if main else None
    try:
        yield
    except KeyboardInterrupt as e:
        print(f"interrupted by {'SIGTERM' if isinstance(e, Terminated) else 'Ctrl-C'}: {then}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


class SharpjaxError(Exception):
    """Base class of every error sharpjax raises about user input (configs, files)."""


class ConfigError(SharpjaxError, ValueError):
    """A config that cannot work; the message names the field and what to do."""


class CheckpointError(SharpjaxError):
    """A checkpoint or model directory that cannot be read or written."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint in the directory, or none at the requested step."""


class CheckpointExistsError(CheckpointError, FileExistsError):
    """`save` at a step that already has a checkpoint, without `force=True`."""


class StateMismatchError(CheckpointError, ValueError):
    """The abstract state's tree structure or leaf shapes differ from the checkpoint's."""


class ModelFileError(CheckpointError, ValueError):
    """A Hugging Face model directory that is missing files or tensors, or holds a corrupt one."""


class WorkdirLockedError(SharpjaxError):
    """Another live process holds the workdir's lock (two runs would interleave logs and checkpoints)."""


class TrainingDiverged(SharpjaxError):
    """`train.max_skipped_updates` updates in a row were non-finite; the last good checkpoint is exported."""
