"""Parallel, hang-proof verification: worker processes with a hard per-item deadline.

Each worker verifies one item at a time (`verify_one`, extraction included, with a soft
SIGALRM deadline of `timeout_s` that works there because it runs in the worker's main
thread); it reports the extracted answer before parsing it, so an item killed later still
reports its answer. The parent does no work per item beyond sending it. The parent gives
each item a hard deadline of `timeout_s + grace_s`; a worker that overruns it (a C-level
computation such as `9^{9^{9^{9^9}}}` ignores signals) is killed and replaced, and the item
scores 0 with reason TIMEOUT. A worker that dies (segfault, OOM) is replaced too and its
item scores 0 with reason PARSE_ERROR.

Workers are fresh interpreters started with subprocess (fork+exec): never a bare fork of
the multithreaded JAX parent, and unlike multiprocessing's spawn/forkserver they do not
re-import the caller's `__main__` (scripts need no `if __name__ == "__main__"` guard). A
worker starts in about 1.5 s (the sympy import); it reports ready before it gets work, so
start-up is never counted against an item's deadline. Pools are cached per worker count and
reused across calls (a training loop pays the start-up once) and closed at exit.
"""

from __future__ import annotations

import atexit
import collections
import logging
import multiprocessing.connection as mp_connection
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from sharpjax.rewards.math import (
    Fallback,
    Verifier,
    VerifyReason,
    VerifyResult,
    as_reference,
    check_modes,
    verify_one,
)

__all__ = ["VerifierPool", "default_num_workers", "verify", "verify_batch"]

logger = logging.getLogger(__name__)

# Worker -> parent messages: _READY once; then per item (_EXTRACTED, index, answer, canonical)
# as soon as its answer is extracted, and (_RESULT, index, result fields) at the end.
_READY = "ready"
_EXTRACTED = "extracted"
_RESULT = "result"


def _worker_main(fd: int) -> None:
    """Worker loop over a socket: receive (index, response, reference, verifier, fallback,
    timeout_s), send the extracted answer, then the result. Exits on EOF (the parent went
    away) or None."""
    from sharpjax.rewards import math as rmath

    # Ctrl-C in a terminal signals the whole process group: the parent handles it (a checkpoint
    # at the step's end), which needs its workers alive until then.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = mp_connection.Connection(fd)
    rmath._mv()  # Import math-verify before reporting ready, so start-up is not timed.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    conn.send(_READY)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if msg is None:
            return
        idx, response, reference, verifier, fallback, timeout_s = msg
        known = [None, None]

        def report(ext, canon, idx=idx, known=known):
            known[0], known[1] = ext, canon
            conn.send((_EXTRACTED, idx, ext, canon))

        try:
            res = rmath.verify_one(
                response,
                reference,
                verifier=verifier,
                fallback=fallback,
                timeout_s=timeout_s,
                on_extracted=report,
            )
        except Exception:  # Never let one item take the worker down.
            logger.debug("verify_one failed", exc_info=True)
            res = rmath.VerifyResult(0.0, rmath.VerifyReason.PARSE_ERROR, known[0], known[1])
        conn.send((_RESULT, idx, (res.score, res.reason.value, res.extracted, res.canonical)))


def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Worker:
    """One verifier process: a fresh interpreter (fork+exec, so never a fork of the
    multithreaded JAX parent, and the caller's __main__ is not re-imported), connected by a
    socket pair."""

    def __init__(self) -> None:
        parent_sock, child_sock = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_package_root(), env.get("PYTHONPATH")) if p
        )
        code = "import sys; from sharpjax.rewards.pool import _worker_main; _worker_main(int(sys.argv[1]))"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, str(child_sock.fileno())],
            pass_fds=(child_sock.fileno(),),
            stdin=subprocess.DEVNULL,
            env=env,
        )
        child_sock.close()
        self.conn = mp_connection.Connection(parent_sock.detach())
        self.ready = False
        self.task: int | None = None
        self.deadline = 0.0
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            self.conn.close()


# The largest per-item deadline accepted: far beyond any answer check, and far below the
# ~2.1e6 s (2**31 ms) past which waiting on the workers overflows.
MAX_TIMEOUT_S = 3600.0


def default_num_workers() -> int:
    """Number of verifier processes by default: the usable CPUs, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


class VerifierPool:
    """A set of verifier processes with hard per-item deadlines.

    Args:
      num_workers: Number of worker processes (>= 1); started lazily, on first need.
      grace_s: Extra seconds past `timeout_s` before a stuck worker is killed.
      soft_timeout: Also run the in-worker SIGALRM deadline (cheap: no respawn). Without it
        every overrun is a hard kill + respawn (~1.5 s); False exists to test that path.
    """

    # A worker that dies before it reports ready this many times in a row means the
    # interpreter cannot import sharpjax/math-verify: fail loudly instead of respawning.
    _MAX_START_FAILURES = 3

    def __init__(
        self, num_workers: int, *, grace_s: float = 1.0, soft_timeout: bool = True
    ) -> None:
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}.")
        if grace_s < 0:
            raise ValueError(f"grace_s must be >= 0, got {grace_s}.")
        self.num_workers = num_workers
        self.grace_s = grace_s
        self.soft_timeout = soft_timeout
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._start_failures = 0

    def _ensure(self, n: int) -> None:
        while len(self._workers) < min(n, self.num_workers):
            self._workers.append(_Worker())

    def _check_start_failure(self, w: _Worker) -> None:
        """Raises when workers keep exiting with an error before they are ready (a broken
        interpreter); one killed by a signal (a process-group SIGTERM, the OOM killer) is not that."""
        if w.ready:
            return
        try:
            code = w.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return
        if code is not None and code < 0:
            return
        self._start_failures += 1
        if self._start_failures >= self._MAX_START_FAILURES:
            raise RuntimeError(
                "verifier worker processes exit at start-up (see their stderr above); check that "
                f"`python -c 'import sharpjax.rewards.math, math_verify'` works with {sys.executable}."
            ) from None

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self._workers[self._workers.index(w)] = _Worker()

    def close(self) -> None:
        """Stop all workers (they are restarted on the next call)."""
        with self._lock:
            for w in self._workers:
                try:
                    w.conn.send(None)
                except OSError:
                    pass
            for w in self._workers:
                try:
                    w.proc.wait(timeout=1)
                    w.conn.close()
                except subprocess.TimeoutExpired:
                    w.kill()
            self._workers = []

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def verify_batch(
        self,
        responses: Sequence[str],
        references: Sequence[str],
        *,
        timeout_s: float = 5.0,
        verifier: Verifier = "boxed",
        fallback: Fallback = "none",
    ) -> list[VerifyResult]:
        """See `sharpjax.rewards.verify_batch`."""
        refs = _check_batch(responses, references, timeout_s, verifier, fallback)
        n = len(responses)
        results: list[VerifyResult | None] = [None] * n
        if not n:
            return []
        # The answer and its normalized form, as each worker reports them (before the slow
        # part): what an item killed at its hard deadline reports. The parent itself does
        # nothing with the response but send it, so its time is bounded whatever the input.
        extracted: list[str | None] = [None] * n
        canonical: list[str | None] = [None] * n
        pending: collections.deque[int] = collections.deque(range(n))

        def fail(i: int, reason: VerifyReason) -> None:
            results[i] = VerifyResult(0.0, reason, extracted[i], canonical[i])

        # Items whose worker died under them: retried once (the death was most likely a signal
        # or the OOM killer, not the item); a second death scores the item PARSE_ERROR.
        retried: set[int] = set()

        def send(w: _Worker, i: int, now: float) -> bool:
            """Gives item i to idle worker w; False (w replaced, i back in front) if w is dead."""
            try:
                w.conn.send(
                    (i, responses[i], refs[i], verifier, fallback, timeout_s if self.soft_timeout else None)
                )
            except OSError:  # died while idle (a signal, the OOM killer): BrokenPipeError
                logger.warning("verifier worker %d died while idle; replacing it", w.pid)
                pending.appendleft(i)
                self._replace(w)
                return False
            w.task = i
            w.deadline = now + timeout_s + self.grace_s
            return True

        with self._lock:
            self._ensure(n)
            remaining = n
            try:
                while remaining:
                    now = time.monotonic()
                    for w in list(self._workers):
                        if w.ready and w.task is None and pending:
                            send(w, pending.popleft(), now)
                    busy = [w.deadline for w in self._workers if w.task is not None]
                    wait_s = max(0.0, min(busy) - now) if busy else 30.0
                    conns = [w.conn for w in self._workers]
                    ready_conns = set(mp_connection.wait(conns, timeout=wait_s))
                    for w in list(self._workers):
                        if w.conn not in ready_conns:
                            continue
                        try:
                            msg = w.conn.recv()
                        except (EOFError, OSError):
                            self._check_start_failure(w)
                            logger.warning("verifier worker %d died; replacing it", w.pid)
                            if w.task is not None:
                                if w.task in retried:
                                    fail(w.task, VerifyReason.PARSE_ERROR)
                                    remaining -= 1
                                else:
                                    retried.add(w.task)
                                    pending.appendleft(w.task)
                            self._replace(w)
                            continue
                        if msg == _READY:
                            w.ready = True
                            self._start_failures = 0
                            continue
                        if msg[0] == _EXTRACTED:
                            _, i, extracted[i], canonical[i] = msg
                            continue
                        _, i, (score, reason, ext, canon) = msg
                        results[i] = VerifyResult(score, VerifyReason(reason), ext, canon)
                        w.task = None
                        remaining -= 1
                    now = time.monotonic()
                    for w in list(self._workers):
                        if w.task is not None and now > w.deadline:
                            logger.warning(
                                "verification exceeded %.1fs (hard deadline); killing worker %d",
                                timeout_s + self.grace_s,
                                w.pid,
                            )
                            fail(w.task, VerifyReason.TIMEOUT)
                            remaining -= 1
                            self._replace(w)
            except BaseException:
                # A worker still busy with this call's item would answer the next call with it:
                # replace those, so an interrupted call (Ctrl-C) leaves the pool usable.
                for w in list(self._workers):
                    if w.task is not None:
                        self._replace(w)
                raise
        return results  # type: ignore[return-value]


def _check_batch(responses, references, timeout_s, verifier, fallback) -> list[str]:
    """Checks a batch's arguments; returns the references as strings (see `as_reference`)."""
    if len(responses) != len(references):
        raise ValueError(
            f"responses and references differ in length: {len(responses)} vs "
            f"{len(references)}; pass one reference per response (repeat a problem's "
            "reference for each of its samples)."
        )
    if not 0 < timeout_s <= MAX_TIMEOUT_S:
        raise ValueError(f"timeout_s must be in (0, {MAX_TIMEOUT_S:g}] seconds, got {timeout_s}.")
    check_modes(verifier, fallback)
    for r in responses:
        if not isinstance(r, str):
            raise TypeError(f"a response is a {type(r).__name__}; pass response texts (str).")
    return [as_reference(ref) for ref in references]


_POOLS: dict[int, VerifierPool] = {}
_POOLS_LOCK = threading.Lock()


def _shared_pool(num_workers: int) -> VerifierPool:
    with _POOLS_LOCK:
        pool = _POOLS.get(num_workers)
        if pool is None:
            pool = _POOLS[num_workers] = VerifierPool(num_workers)
        return pool


@atexit.register
def _close_pools() -> None:
    for pool in _POOLS.values():
        pool.close()
    _POOLS.clear()


def verify_batch(
    responses: Sequence[str],
    references: Sequence[str | int | float],
    *,
    timeout_s: float = 5.0,
    num_workers: int | None = None,
    verifier: Verifier = "boxed",
    fallback: Fallback = "none",
) -> list[VerifyResult]:
    """Verify many responses against their references in parallel processes.

    Wall time is bounded whatever the responses hold: each item's extraction, parsing and
    comparison run in a worker under the soft deadline `timeout_s`, and a worker still busy
    at `timeout_s + 1 s` is killed and replaced. The calling process only sends the texts
    (nothing is capped: a 1 MB response costs milliseconds here).

    Args:
      responses: Model responses.
      references: One bare reference answer per response (as in the data files); ints and
        floats are converted with `str()`.
      timeout_s: Per-item deadline in seconds for extraction + parsing + comparison. An item
        that overruns it scores 0 with reason TIMEOUT; a worker stuck past `timeout_s + 1 s`
        is killed and replaced, so a pathological expression never hangs the caller.
      num_workers: Worker processes; None: `default_num_workers()`. 0 runs in this process
        with only the soft SIGALRM deadline (main thread only, cannot interrupt C code).
      verifier: "boxed" (default) or "math_verify", the paper's reward (see
        `sharpjax.rewards.math.Verifier`).
      fallback: Answer extraction fallback of verifier "boxed" (see
        `sharpjax.rewards.math.Fallback`).

    Returns:
      One `VerifyResult` per response, in order.

    Raises:
      ValueError: For mismatched lengths, a non-positive timeout, an unknown verifier or
        fallback.
      TypeError: For a reference that is not a string or a number, or a non-string response.
    """
    if num_workers is None:
        num_workers = default_num_workers()
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}.")
    if num_workers == 0:
        refs = _check_batch(responses, references, timeout_s, verifier, fallback)
        return [
            verify_one(r, ref, verifier=verifier, fallback=fallback, timeout_s=timeout_s)
            for r, ref in zip(responses, refs)
        ]
    return _shared_pool(num_workers).verify_batch(
        responses, references, timeout_s=timeout_s, verifier=verifier, fallback=fallback
    )


def verify(
    response: str,
    reference: str | int | float,
    *,
    timeout_s: float = 5.0,
    verifier: Verifier = "boxed",
    fallback: Fallback = "none",
) -> float:
    """The task reward r(x, y): 1.0 if the response's final answer matches the reference.

    Runs in a (shared, reused) worker process with a hard deadline, so it never hangs.

    Args:
      response: The model's full response; with verifier "boxed" its last `\\boxed{...}` is
        the answer, with "math_verify" math-verify extracts it from the whole text.
      reference: The bare reference answer as stored in the data files (not boxed); an int
        or float is converted with `str()`.
      timeout_s: Per-call deadline in seconds; an overrun scores 0.
      verifier: "boxed" or "math_verify" (the paper's reward); see `verify_batch`.
      fallback: Answer extraction fallback (see `sharpjax.rewards.math.Fallback`).

    Returns:
      1.0 or 0.0.
    """
    return verify_batch(
        [response], [reference], timeout_s=timeout_s, verifier=verifier, fallback=fallback
    )[0].score
