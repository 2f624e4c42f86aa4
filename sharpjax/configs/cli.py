"""Command-line parsing shared by the launchers that take `--config experiments/<file>.py[:arg]`.

`python -m sharpjax.train` and `python -m sharpjax.plan` pass `parse_config_flags` to `absl.app.run`:
a config file, preset or field that does not exist is one line (exit status 2), not a traceback.
"""

import os
import re
import sys

from absl import flags

from sharpjax.errors import SharpjaxError

__all__ = ["config_arg", "fail", "parse_config_flags"]


def fail(message: str) -> None:
    """The one line of a command-line error, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def config_arg(argv) -> str | None:
    """The value of --config in `argv` (None: not given)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def parse_config_flags(argv):
    """absl's flag parsing, with a config file, preset or field that does not exist as one line."""
    config = config_arg(argv)
    if config is not None and not os.path.isfile(config.split(":", 1)[0]):
        fail(f"--config {config}: no such config file {config.split(':', 1)[0]!r} (see experiments/*.py).")
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # noqa: BLE001 - config_flags raises AttributeError, KeyError, flags.Error, ...
        # config_flags re-raises a config file's error as the same type with its traceback in the
        # message: the innermost one is the user's.
        chain, cause = [], e
        while cause is not None and len(chain) < 20:
            chain.append(cause)
            cause = cause.__cause__ or cause.__context__
        ours = [c for c in chain if isinstance(c, SharpjaxError)]
        if ours:
            fail(str(ours[-1]))
        if isinstance(e, (AttributeError, KeyError)):  # an override of a field that does not exist
            quoted = re.findall(r"'([A-Za-z0-9_]+)", str(e))
            name = quoted[0] if quoted else str(e)
            flag = next((a.split("=", 1)[0] for a in argv if a.startswith("--config.")
                         and name in a.split("=", 1)[0].split(".")), f"--config...{name}")
            fail(f"{flag}: no such config field {name!r} (the fields are the sections of "
                  "sharpjax.train.config.RunConfig).")
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        # A config file that raised: its traceback is in the message; the last line is the error.
        fail(lines[-1] if any(line.startswith("Traceback") for line in lines) else " ".join(lines[:2]))
