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

from sharpjax.errors import WorkdirLockedError

__all__ = ["LOCK_FILE", "WorkdirLock"]

LOCK_FILE = ".lock"


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
