"""A bounded number of compiles, and a log of each one (issue 28, item 5).

The loop's programs take shapes that change from step to step: the sampler's prompt bucket and
response allocation (`rollout.text.fit_sampling`), and the width the scoring and the update see
after the padding is trimmed (`rollout.sampler.trim_padding`). Both are bucketed: the sampler
per (prompt bucket, allocation), the trimmed width on one grid of `width_step` tokens shared by
every prompt bucket. `compile_budget` states the bound for a config; `CompileLog` counts XLA's
compiles (jax.monitoring's backend-compile event: every program, the small eager ones too) and
logs each with the loop program and shape that caused it, and its time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import threading

log = logging.getLogger(__name__)

_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"

# The loop's programs that compile once per trimmed width (scoring, reference, update).
WIDTH_PROGRAMS = ("reference", "rewards", "train_step")
# With `train.group_by_length` the update is one program per micro-batch width (on the same grid),
# and two programs that compile once a run (`train.step.GroupedUpdate`).
GROUPED_WIDTH_PROGRAMS = ("reference", "rewards", "train_micro")
GROUPED_ONCE = ("train_start", "train_apply")


def width_step(run) -> int:
    """The grid of the trimmed widths: fit_sampling's allocation unit, 16 * ceil(T / 128) tokens,
    with per-prompt budgets (about T / 8); else an eighth of the fixed budget (at least 16)."""
    r = run.rollout
    if r.max_new_tokens is None:
        return 16 * math.ceil(r.max_total_length / 128)
    return max(16, math.ceil(r.max_new_tokens / 8))


@dataclasses.dataclass(frozen=True)
class CompileBudget:
    """The most shapes a run of the config compiles (whatever its length), by program.

    Attributes:
      sampler: (prompt bucket, response allocation) pairs: buckets x allocations.
      widths: trimmed widths, each compiled once by each of `width_programs`.
      grouped: `train.group_by_length` (the update's programs: GROUPED_WIDTH_PROGRAMS, GROUPED_ONCE).
    """

    sampler: int
    widths: int
    grouped: bool = False

    @property
    def width_programs(self) -> tuple[str, ...]:
        return GROUPED_WIDTH_PROGRAMS if self.grouped else WIDTH_PROGRAMS

    @property
    def programs(self) -> int:
        return self.sampler + len(self.width_programs) * self.widths + (len(GROUPED_ONCE) if self.grouped else 0)

    def __str__(self) -> str:
        once = f", {len(GROUPED_ONCE)} once ({', '.join(GROUPED_ONCE)})" if self.grouped else ""
        return (f"at most {self.programs} loop programs: sampler {self.sampler} (prompt bucket x response "
                f"allocation), {len(self.width_programs)} x {self.widths} trimmed widths{once}")


def widest_width(run) -> int:
    """The widest batch a run can meet: its largest prompt bucket plus the response allocation."""
    r = run.rollout
    return max(r.prompt_buckets) + (r.max_total_length if r.max_new_tokens is None else r.max_new_tokens)


def compile_budget(run) -> CompileBudget:
    """The bound `CompileLog` checks against, from the config alone."""
    r = run.rollout
    buckets = sorted(set(r.prompt_buckets))
    step = width_step(run)
    allocations = math.ceil(r.max_total_length / step) if r.max_new_tokens is None else 1  # multiples of the unit
    widest = widest_width(run)
    # Trimmed widths on the grid, plus each bucket's untrimmed width (a batch whose longest
    # response reaches the budget keeps it, on the grid or not).
    widths = math.ceil(widest / step) + len(buckets)
    return CompileBudget(sampler=len(buckets) * allocations, widths=widths, grouped=run.train.group_by_length)


@dataclasses.dataclass(frozen=True)
class Compile:
    program: str  # the loop program that caused it ("other": outside one)
    shape: str
    fun_name: str  # XLA's name of the compiled function
    seconds: float


class CompileLog:
    """Counts every XLA compile while active and logs those of the loop's programs.

    Use `with log.program("train_step", shape):` around each program's dispatch: the compile
    happens synchronously inside it, and is recorded with that program and shape. Close (or use
    as a context manager) to stop listening.
    """

    def __init__(self, logger: logging.Logger = log):
        import jax

        self._log = logger
        self._local = threading.local()
        self.compiles: list[Compile] = []
        self._listener = self._on_event
        jax.monitoring.register_event_duration_secs_listener(self._listener)
        self._closed = False

    def _on_event(self, event: str, duration: float, **kwargs) -> None:
        if event != _BACKEND_COMPILE:
            return
        program, shape, fn = getattr(self._local, "current", ("other", "", None))
        fun_name = str(kwargs.get("fun_name", ""))
        if fn is not None and fun_name != f"jit({fn})":  # a small eager op dispatched beside the program
            program, shape = "other", ""
        c = Compile(program=program, shape=shape, fun_name=fun_name, seconds=duration)
        self.compiles.append(c)
        if program != "other":
            self._log.info("compile %d: %s %s (%s) in %.1f s", len(self.compiles), program, shape, c.fun_name,
                           duration)

    @contextlib.contextmanager
    def program(self, name: str, shape, fn: str | None = None):
        """Compiles inside are `name`'s, with `shape` (a tuple: "256x2304"); with `fn`, only
        those of the jitted function of that name (the others: small eager ops, "other")."""
        previous = getattr(self._local, "current", None)
        self._local.current = (name, "x".join(map(str, shape)) if isinstance(shape, tuple) else str(shape), fn)
        try:
            yield
        finally:
            if previous is None:
                del self._local.current
            else:
                self._local.current = previous

    @property
    def count(self) -> int:
        return len(self.compiles)

    def shapes(self, program: str | None = None) -> list[tuple[str, str]]:
        """(program, shape) of each loop-program compile, in order."""
        return [(c.program, c.shape) for c in self.compiles
                if c.program != "other" and (program is None or c.program == program)]

    def close(self) -> None:
        if not self._closed:
            import jax

            jax.monitoring.unregister_event_duration_listener(self._listener)
            self._closed = True

    def __enter__(self) -> CompileLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
