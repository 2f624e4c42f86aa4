"""Issue 27: the verifier pool survives its workers' deaths and absurd deadlines.

Bug 2: a worker that died while idle (Ctrl-C or SIGTERM to the process group, the OOM killer)
made every later call raise BrokenPipeError. Bug 6: a `timeout_s` of ~2.2e6 s or inf raised
OverflowError on that call and every later one.
"""

from __future__ import annotations

import math
import os
import signal

import pytest

from sharpjax.rewards import VerifierPool

RESPONSES = ["\\boxed{1}", "\\boxed{3}", "\\boxed{\\frac{1}{2}}", "\\boxed{7}"]
REFERENCES = ["1", "2", "0.5", "7"]
SCORES = [1.0, 0.0, 1.0, 1.0]
MAX_TIMEOUT_S = 3600.0  # sharpjax.rewards.pool.MAX_TIMEOUT_S


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(2) as p:
        assert _scores(p) == SCORES  # Both workers started.
        yield p


def _scores(p, **kwargs):
    return [r.score for r in p.verify_batch(RESPONSES, REFERENCES, **kwargs)]


def _signal_workers(p, signum, *, count):
    workers = p._workers[:count]
    for w in workers:
        os.kill(w.pid, signum)
    return workers


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_workers_killed_while_idle_are_replaced(pool, signum):
    dead = _signal_workers(pool, signum, count=2)  # as the OOM killer / a process-group SIGTERM
    for w in dead:
        assert w.proc.wait(timeout=10) == -signum
    assert _scores(pool) == SCORES
    assert not {w.pid for w in dead} & {w.pid for w in pool._workers}
    assert _scores(pool) == SCORES  # and the replacements keep working


def test_ctrl_c_to_the_process_group_leaves_the_workers_alive(pool):
    alive = _signal_workers(pool, signal.SIGINT, count=2)
    assert _scores(pool) == SCORES
    assert [w.proc.poll() for w in alive] == [None, None]
    assert [w.pid for w in pool._workers] == [w.pid for w in alive]


@pytest.mark.parametrize("timeout_s", [math.inf, 2.2e6, MAX_TIMEOUT_S * 2, math.nan, 0.0])
def test_out_of_range_deadlines_are_refused_and_the_pool_still_works(pool, timeout_s):
    with pytest.raises(ValueError, match=r"timeout_s must be in \(0, 3600\] seconds"):
        pool.verify_batch(RESPONSES, REFERENCES, timeout_s=timeout_s)
    assert _scores(pool, timeout_s=MAX_TIMEOUT_S) == SCORES
