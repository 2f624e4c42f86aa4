"""Deterministic, resumable batches of prompts for the training loop.

The iterator is a view of one infinite stream: epoch 0's permutation of the problems, then
epoch 1's, and so on. A batch is the next `batch_size` items of the stream, so an epoch's
tail wraps into the next epoch instead of being dropped, and every problem is seen exactly
once per epoch. The whole state is three integers (epoch, position within the epoch, seed),
so a run that saves `state()` with its checkpoint and restores it continues with exactly
the batches it would have drawn.

`skip` leaves some problems out of every epoch (the trainer's over-long prompts) without
changing the list the state describes: the permutation is still over all of them, skipped
items are passed over, so the state and its fingerprint are those of the full list, and a
checkpoint saved before a skip existed resumes onto the same stream as a fresh run.

Permutations come from a Fisher-Yates shuffle driven by the raw 64-bit output of numpy's
PCG64 seeded with `SeedSequence([seed, epoch])`. The bit generator's stream is stable across
numpy versions (NEP 19), unlike `Generator.permutation`'s, and seeding with the pair (not
`seed + epoch`) keeps the epochs of seed 0 and seed 1 unrelated (with `seed + epoch`, seed
1's epoch 0 would be seed 0's epoch 1).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from typing import Any, Generic, TypeVar

import numpy as np

__all__ = ["PromptIterator", "epoch_permutation"]

T = TypeVar("T")
_STATE_VERSION = 1


def epoch_permutation(n: int, *, seed: int, epoch: int) -> np.ndarray:
    """The order of epoch `epoch`: a permutation of range(n), int64 [n].

    Deterministic in (n, seed, epoch) on every platform and numpy version.
    """
    if n < 0 or seed < 0 or epoch < 0:
        raise ValueError(f"n, seed and epoch must be >= 0, got {n}, {seed}, {epoch}.")
    perm = np.arange(n, dtype=np.int64)
    if n < 2:
        return perm
    bits = np.random.PCG64(np.random.SeedSequence([seed, epoch])).random_raw(n - 1)
    # j_i uniform in [0, i] for i = n-1 .. 1 (modulo bias < n / 2**64: negligible).
    js = bits % np.arange(n, 1, -1, dtype=np.uint64)
    for i, j in zip(range(n - 1, 0, -1), js.tolist()):
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def _fingerprint(items: Sequence[Any]) -> str:
    """A short hash of the items' ids (or reprs), to refuse resuming over a different list."""
    h = hashlib.sha256()
    for it in items:
        h.update(str(getattr(it, "id", it)).encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


def _check_int(name: str, v: Any, *, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}.")
    return int(v)


class PromptIterator(Generic[T]):
    """Seeded, epoch-aware, resumable batches over a list of problems.

    Args:
      problems: The items to batch (typically `list[Problem]`); not copied, not modified.
      batch_size: Items per batch (> 0). May exceed len(problems): a batch then spans
        several epochs and holds repeats.
      seed: Non-negative int; the same seed gives the same batches.
      shuffle: False: every epoch is the list's own order (still wrapping).
      skip: Indices into `problems` never drawn (each epoch holds the others once); at
        least one problem must remain.

    Example:
      it = PromptIterator(load_dataset("math_train"), batch_size=32, seed=42)
      batch = it.next()                 # list of 32 Problems
      ckpt["data"] = it.state()         # JSON-serializable
      it = PromptIterator.from_state(problems, ckpt["data"], batch_size=32)
    """

    def __init__(
        self, problems: Sequence[T], *, batch_size: int, seed: int = 0, shuffle: bool = True,
        skip: Collection[int] = (),
    ) -> None:
        if len(problems) == 0:
            raise ValueError(
                "PromptIterator needs at least one problem, got an empty list (check the "
                "dataset name, data_dir and limit)."
            )
        self._problems = problems
        self._skip = frozenset(int(i) for i in skip)
        if any(not 0 <= i < len(problems) for i in self._skip):
            raise ValueError(f"skip holds indices outside [0, {len(problems)}).")
        if len(self._skip) == len(problems):
            raise ValueError(f"every one of the {len(problems)} problems is skipped; nothing is left to train on.")
        self.batch_size = _check_int("batch_size", batch_size, minimum=1)
        self.seed = _check_int("seed", seed, minimum=0)
        self.shuffle = bool(shuffle)
        self._fingerprint = _fingerprint(problems)
        self._epoch = 0
        self._position = 0
        self._perm: np.ndarray | None = None
        self._perm_epoch = -1

    @property
    def num_problems(self) -> int:
        return len(self._problems)

    @property
    def epoch(self) -> int:
        """The epoch the next item comes from (0-based)."""
        return self._epoch

    @property
    def position(self) -> int:
        """Index within the current epoch's order of the next item (0 <= position < n)."""
        return self._position

    @property
    def num_skipped(self) -> int:
        """Problems never drawn (`skip`)."""
        return len(self._skip)

    @property
    def steps_per_epoch(self) -> float:
        """Drawn problems / batch_size: batches per epoch (fractional: tails wrap)."""
        return (self.num_problems - self.num_skipped) / self.batch_size

    def _order(self, epoch: int) -> np.ndarray:
        if self._perm_epoch != epoch:
            n = self.num_problems
            if self.shuffle:
                self._perm = epoch_permutation(n, seed=self.seed, epoch=epoch)
            else:
                self._perm = np.arange(n, dtype=np.int64)
            self._perm_epoch = epoch
        assert self._perm is not None
        return self._perm

    def next_indices(self) -> list[int]:
        """Indices into `problems` of the next batch ([batch_size]); advances the state."""
        n = self.num_problems
        out: list[int] = []
        while len(out) < self.batch_size:
            order = self._order(self._epoch)
            take = min(self.batch_size - len(out), n - self._position)
            out.extend(i for i in order[self._position : self._position + take].tolist() if i not in self._skip)
            self._position += take
            if self._position == n:
                self._epoch += 1
                self._position = 0
        return out

    def next(self) -> list[T]:
        """The next batch of `batch_size` problems; advances the state."""
        return [self._problems[i] for i in self.next_indices()]

    def __iter__(self) -> PromptIterator[T]:
        return self

    def __next__(self) -> list[T]:
        return self.next()

    def state(self) -> dict[str, Any]:
        """JSON-serializable state: where the stream is, and what it was built from.

        Keys: epoch, position (next item's index within the epoch's order), seed, shuffle,
        batch_size, num_problems, fingerprint (hash of the problem ids), version.
        """
        return {
            "version": _STATE_VERSION,
            "epoch": self._epoch,
            "position": self._position,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "batch_size": self.batch_size,
            "num_problems": self.num_problems,
            "fingerprint": self._fingerprint,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from `state` (from `state()` of an iterator over the same problems).

        Seed and shuffle are taken from `state`. The batch size may differ (the stream is
        the same; only the cut points move).

        Raises:
          ValueError: Missing keys, or the problems differ (count or ids) from those the
            state was saved with.
        """
        missing = [k for k in ("epoch", "position", "seed") if k not in state]
        if missing:
            raise ValueError(
                f"iterator state lacks {missing}; pass a dict from PromptIterator.state()."
            )
        n = state.get("num_problems")
        if n is not None and n != self.num_problems:
            raise ValueError(
                f"the state was saved over {n} problems but this iterator has "
                f"{self.num_problems}; resume with the same dataset (name, data_dir, limit)."
            )
        fp = state.get("fingerprint")
        if fp is not None and fp != self._fingerprint:
            raise ValueError(
                "the state was saved over different problems (ids differ, same count); resume "
                "with the same dataset in the same order."
            )
        epoch = _check_int("state['epoch']", state["epoch"], minimum=0)
        position = _check_int("state['position']", state["position"], minimum=0)
        if position >= self.num_problems:
            raise ValueError(
                f"state['position']={position} is out of range for {self.num_problems} problems."
            )
        self.seed = _check_int("state['seed']", state["seed"], minimum=0)
        self.shuffle = bool(state.get("shuffle", self.shuffle))
        self._epoch, self._position = epoch, position
        self._perm_epoch = -1

    @classmethod
    def from_state(
        cls, problems: Sequence[T], state: dict[str, Any], *, batch_size: int | None = None
    ) -> PromptIterator[T]:
        """A new iterator over `problems` continuing from `state` (batch size from the state
        unless given)."""
        bs = state.get("batch_size") if batch_size is None else batch_size
        if bs is None:
            raise ValueError("state has no batch_size; pass batch_size=.")
        it = cls(
            problems,
            batch_size=bs,
            seed=_check_int("state['seed']", state.get("seed"), minimum=0),
            shuffle=state.get("shuffle", True),
        )
        it.restore(state)
        return it
