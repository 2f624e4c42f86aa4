"""One training process per workdir: an advisory `fcntl.flock` on `<workdir>/.lock`.

Two runs in one workdir would interleave metrics.jsonl and overwrite each other's checkpoints
and exports. The lock is held by the open file descriptor, so the kernel releases it when the
process exits in any way (SIGKILL, OOM, a crash): a lock is never stale, and nothing needs
cleaning up. The file itself stays (removing it would race with a process opening it); it
holds the pid and host of the last holder, for the error message.

flock is per host: it does not protect a workdir on a network filesystem shared by two hosts
(under `jax.distributed`, only process 0 takes it; the other processes run the same job).
"""

from __future__ import annotations

import fcntl
import os
import socket

from sharpjax.errors import ConfigError, WorkdirLockedError

__all__ = ["LOCK_FILE", "WorkdirLock", "check_workdir"]

LOCK_FILE = ".lock"


def check_workdir(workdir: str | os.PathLike, what: str = "--workdir") -> None:
    """Refuses, in one line, a workdir that is a file, lies under a file, or cannot be created
    (before anything heavy: otherwise a traceback from os.makedirs after the config is loaded)."""
    path = os.path.abspath(os.fspath(workdir))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{what} {workdir}: is a file, not a directory; give a directory path.")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(f"{what} {workdir}: {existing} is a file, so no directory can be made under it; "
                          "give another path.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {workdir}: {existing} is not writable by this user; give another path.")


class WorkdirLock:
    """Takes `<workdir>/.lock` without waiting, or raises `WorkdirLockedError`; `release()` or `with`."""

    def __init__(self, workdir: str | os.PathLike):
        self.workdir = os.fspath(workdir)
        self.path = os.path.join(self.workdir, LOCK_FILE)
        os.makedirs(self.workdir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise WorkdirLockedError(
                f"{self.workdir} is in use by another training process ({holder}); wait for it to finish, "
                "or use another --workdir."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        """Drops the lock (idempotent); exiting the process does the same."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WorkdirLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
