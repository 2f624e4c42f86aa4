"""Checkpoints of the train state (orbax), with keep-last-N plus best-by-metric retention.

    ckpt = Checkpointer(workdir / "checkpoints", keep_last=3, best_metric="eval/pass@1")
    ckpt.save(step, {"train": state, "key": key}, meta={"config": ..., "data": it.state()},
              metrics={"eval/pass@1": 0.41})
    state, meta = ckpt.restore(abstract_state=abstract_like({"train": state, "key": key}))

Each checkpoint is one orbax step directory holding three items:

* ``state``: the array pytree (``ocp.args.StandardSave``), restored directly onto the
  shardings of an abstract state, so a run can resume on a different mesh;
* ``meta``: a JSON dict chosen by the caller (config, data-iterator position, ...);
* ``info``: sharpjax's own JSON: the metrics passed to ``save`` and a manifest of the
  state's leaves (path, shape, dtype, PRNG impl), used for retention across restarts, for
  the clear ``StateMismatchError`` below, and to re-wrap typed PRNG keys.

Retention is decided here rather than by orbax's ``max_to_keep``/``best_fn`` (which keep
the N *best*): after each finished save, every step is deleted except the ``keep_last``
highest steps and the single best step by ``best_metric``. Deletion happens only once a
save has completed, so a crash mid-save never leaves fewer than ``keep_last`` good
checkpoints.

Damage: a step directory that cannot be read (left empty or truncated by a kill or a full
disk, or half-deleted by a cleanup that was killed) is never the best step and is deleted
by retention like any old step, tolerating missing files; `restore_newest_intact` skips
damaged steps newest first, moves them aside (``<directory>.damaged/<step>``) with a warning
naming them, and restores the newest intact one.

Typed PRNG keys (``jax.random.key``) cannot be written by orbax; they are stored as their
``jax.random.key_data`` and wrapped back with the same impl on restore, transparently.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import jax
import numpy as np
import orbax.checkpoint as ocp

from sharpjax.errors import (
    CheckpointError,
    CheckpointExistsError,
    CheckpointNotFoundError,
    ConfigError,
    StateMismatchError,
)

__all__ = [
    "CheckpointError",
    "CheckpointExistsError",
    "CheckpointNotFoundError",
    "Checkpointer",
    "RESUMABLE_CHANGES",
    "StateMismatchError",
    "abstract_like",
    "changed_settings",
    "open_run_checkpoints",
]

log = logging.getLogger(__name__)

_STATE, _META, _INFO = "state", "meta", "info"
_INFO_VERSION = 1


def _is_key(x) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def abstract_like(tree: Any, *, default_sharding: jax.sharding.Sharding | None = None) -> Any:
    """The `jax.ShapeDtypeStruct` pytree (with shardings) that `Checkpointer.restore` restores onto.

    Args:
      tree: a pytree of jax arrays (their shardings are kept), numpy arrays or scalars, or
        `jax.ShapeDtypeStruct`s (e.g. from `jax.eval_shape`); typed PRNG keys are allowed.
      default_sharding: the sharding of leaves that carry none (numpy arrays, scalars,
        ShapeDtypeStructs without one); default: the first local device.

    Returns:
      The same tree structure with a `jax.ShapeDtypeStruct(shape, dtype, sharding=...)` per leaf.
    """
    if default_sharding is None:
        default_sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def one(x):
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        if isinstance(x, jax.ShapeDtypeStruct):
            if x.sharding is not None:
                return x
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=default_sharding)
        x = np.asarray(x)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=default_sharding)

    return jax.tree.map(one, tree)


def _manifest(tree: Any) -> list[dict]:
    """One entry per leaf, in flattening order: path, shape, dtype and the PRNG impl of keys."""
    out = []
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
        key_impl = str(jax.random.key_impl(x)) if _is_key(x) else None
        out.append(
            {"path": jax.tree_util.keystr(path), "shape": list(np.shape(x)), "dtype": str(dtype), "key_impl": key_impl}
        )
    return out


def _to_float(name: str, v) -> float:
    arr = np.asarray(v)
    if arr.size != 1 or not np.issubdtype(arr.dtype, np.number) and arr.dtype != bool:
        raise TypeError(f"metric {name!r} is not a scalar number: {v!r}.")
    return float(arr.reshape(()))


class Checkpointer:
    """Saves and restores (state, meta) checkpoints under one directory; see the module doc.

    Args:
      directory: where the step directories live (created if missing).
      keep_last: how many of the highest steps to keep (>= 1); None keeps every checkpoint.
      best_metric: name of a metric passed to `save`; the step with the best finite value
        of it is kept even after it falls out of the last `keep_last`. Steps saved without
        this metric (or with a non-finite value) are never the best.
      best_mode: "max" (higher is better, e.g. accuracy) or "min" (e.g. a loss).
      async_save: write in a background thread; `save` returns once the arrays are copied
        to host memory, so the caller may donate/overwrite the state right after.

    A `Checkpointer` is a context manager; leaving it (or `close()`) waits for pending
    writes and applies the retention policy.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        keep_last: int | None = 3,
        best_metric: str | None = None,
        best_mode: Literal["max", "min"] = "max",
        async_save: bool = False,
    ):
        if keep_last is not None and (not isinstance(keep_last, int) or keep_last < 1):
            raise ValueError(f"keep_last={keep_last!r} must be an int >= 1 (or None to keep every checkpoint).")
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode={best_mode!r}; expected 'max' or 'min'.")
        self.directory = os.path.abspath(os.fspath(directory))
        self.keep_last = keep_last
        self.best_metric = best_metric
        self.best_mode = best_mode
        self.async_save = async_save
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None,  # retention is ours: see _collect_garbage
            create=True,
            enable_async_checkpointing=async_save,
        )
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                _STATE: ocp.StandardCheckpointHandler(),
                _META: ocp.JsonCheckpointHandler(),
                _INFO: ocp.JsonCheckpointHandler(),
            },
        )
        self._info: dict[int, dict] = {}  # step -> info item, read lazily
        self._closed = False

    # ----------------------------------------------------------------- queries

    def all_steps(self) -> list[int]:
        """Every step with a checkpoint (including one still being written asynchronously), ascending."""
        return sorted(int(s) for s in self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The highest saved step, or None when the directory holds no checkpoint."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def metrics(self, step: int) -> dict[str, float]:
        """The metrics passed to `save` at `step` ({} when none were)."""
        self._check_step(step)
        return dict(self._read_info(step)["metrics"])

    def best_step(self) -> int | None:
        """The kept step with the best `best_metric` (ties: the latest), or None.

        None when `best_metric` is unset or no kept checkpoint carries a finite value of it.
        """
        if self.best_metric is None:
            return None
        best, best_value = None, None
        for step in self.all_steps():
            info = self._read_info_or_none(step)
            if info is None:  # damaged: never the best
                continue
            value = info["metrics"].get(self.best_metric)
            if value is None or not math.isfinite(value):
                continue
            better = best_value is None or (value >= best_value if self.best_mode == "max" else value <= best_value)
            if better:
                best, best_value = step, value
        return best

    # ----------------------------------------------------------------- save

    def save(
        self,
        step: int,
        state: Any,
        *,
        meta: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        wait: bool = True,
        force: bool = False,
    ) -> None:
        """Writes a checkpoint of `state` at `step`, then applies the retention policy.

        Args:
          step: the checkpoint's step number (the train step it was taken after).
          state: a pytree of arrays (jax, numpy, scalars); typed PRNG keys are allowed.
          meta: a JSON-serializable dict stored beside the state (config, data-iterator
            state, ...), returned by `restore` and `restore_meta`.
          metrics: scalar metrics of this step; `best_metric` among them decides the best
            checkpoint. Stored as floats (NaN/Inf allowed, never best).
          wait: block until the checkpoint is on disk (only matters with `async_save`;
            otherwise the write finishes in the background and the retention policy runs
            at the next `save`, `wait` or `close`).
          force: overwrite an existing checkpoint at `step` (otherwise an error).

        Raises:
          CheckpointExistsError: `step` already has a checkpoint and `force` is False.
          TypeError: `meta` is not JSON-serializable, or a metric is not a scalar.
        """
        self._check_open()
        step = int(step)
        meta = dict(meta or {})
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as e:
            raise TypeError(f"meta must be JSON-serializable (dicts, lists, str, numbers, bool, None): {e}") from None
        metrics = {str(k): _to_float(k, v) for k, v in (metrics or {}).items()}

        # Finish (and garbage-collect after) any save still in flight before starting this one.
        self.wait()
        if step in self.all_steps():
            if not force:
                raise CheckpointExistsError(
                    f"a checkpoint for step {step} already exists in {self.directory}; pass force=True to overwrite it."
                )
            self._manager.delete(step)
            self._info.pop(step, None)

        info = {"version": _INFO_VERSION, "metrics": metrics, "manifest": _manifest(state)}
        to_save = jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, state)
        # force=True: orbax would silently skip steps <= its latest step; we decide above.
        self._manager.save(
            step,
            args=ocp.args.Composite(
                **{
                    _STATE: ocp.args.StandardSave(to_save),
                    _META: ocp.args.JsonSave(meta),
                    _INFO: ocp.args.JsonSave(info),
                }
            ),
            force=True,
        )
        self._info[step] = info
        if wait or not self.async_save:
            self.wait()

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk, then applies the retention policy."""
        self._manager.wait_until_finished()
        self._collect_garbage()

    def _collect_garbage(self) -> None:
        if self.keep_last is None:
            return
        steps = self.all_steps()
        keep = set(steps[-self.keep_last :])
        best = self.best_step()
        if best is not None:
            keep.add(best)
        for step in steps:
            if step not in keep:
                self._delete(step)

    def _delete(self, step: int) -> None:
        """Deletes a step directory, also one that a killed cleanup left half-deleted."""
        try:
            self._manager.delete(step)
        except Exception as e:  # noqa: BLE001 - orbax fails on missing files in many ways
            log.warning("orbax could not delete checkpoint step %d in %s (%s); removing its directory", step,
                        self.directory, type(e).__name__)
            shutil.rmtree(self._step_dir(step), ignore_errors=True)
            self._manager.reload()
        self._info.pop(step, None)

    def _step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(int(step)))

    def set_aside(self, step: int) -> str:
        """Moves a (damaged) step directory to ``<directory>.damaged/<step>[.N]``; returns where it went."""
        self._check_open()
        dest_dir = self.directory.rstrip(os.sep) + ".damaged"
        os.makedirs(dest_dir, exist_ok=True)
        dest = os.path.join(dest_dir, str(int(step)))
        if os.path.exists(dest):
            dest = f"{dest}.{time.time_ns()}"
        os.replace(self._step_dir(step), dest)
        self._info.pop(step, None)
        self._manager.reload()
        return dest

    def restore_newest_intact(
        self, *, abstract_state: Any, check_meta: Callable[[dict], None] | None = None
    ) -> tuple[int, Any, dict] | None:
        """`(step, state, meta)` of the newest checkpoint that reads back, or None when there is none.

        Steps that fail to read (missing or corrupt files of any item) are skipped newest first,
        each with a warning naming it, and once an older step restores, moved aside (`set_aside`):
        the run redoes their steps, and a save there must not collide with the damaged directory.

        Args:
          abstract_state: as for `restore`.
          check_meta: called with each step's `meta` before its state is read; what it raises
            (e.g. a ConfigError: the checkpoint belongs to a run with other settings) propagates.

        Raises:
          CheckpointError: every step is damaged (the message lists them and why).
          StateMismatchError: an intact checkpoint whose tree or shapes differ from abstract_state.
        """
        self._check_open()
        self._manager.wait_until_finished()
        damaged: list[tuple[int, str]] = []
        for step in reversed(self.all_steps()):
            try:
                meta = self.restore_meta(step)
            except Exception as e:  # noqa: BLE001 - orbax raises KeyError, JSON, ValueError, OSError, ...
                damaged.append((step, _first_line(e)))
            else:
                if check_meta is not None:
                    check_meta(meta)
                try:
                    state, meta = self.restore(step, abstract_state=abstract_state)
                except StateMismatchError:
                    raise
                except Exception as e:  # noqa: BLE001 - e.g. ZSTD / tensorstore errors of truncated files
                    damaged.append((step, _first_line(e)))
                else:
                    for bad, why in damaged:
                        moved = self.set_aside(bad)
                        log.warning("checkpoint step %d in %s is damaged (%s): moved it to %s and resumed from "
                                    "step %d", bad, self.directory, why, moved, step)
                    return step, state, meta
            log.warning("checkpoint step %d in %s is damaged (%s); trying the previous one", step, self.directory,
                        damaged[-1][1])
        if damaged:
            raise CheckpointError(
                f"no intact checkpoint in {self.directory} ("
                + "; ".join(f"step {s}: {why}" for s, why in damaged)
                + "); delete that directory to start the run over."
            )
        return None

    # ----------------------------------------------------------------- restore

    def restore(self, step: int | None = None, *, abstract_state: Any) -> tuple[Any, dict]:
        """Restores `(state, meta)` of `step` (default: the latest) onto `abstract_state`'s shardings.

        Args:
          step: which checkpoint; None for the latest.
          abstract_state: the target tree: `jax.ShapeDtypeStruct`s with `.sharding` (see
            `abstract_like`; concrete arrays are accepted too and only their shape, dtype
            and sharding are used). Its structure and shapes must match the saved state;
            a dtype that differs is cast to. Typed PRNG keys come back as typed keys.

        Returns:
          (state, meta): the state in `abstract_state`'s tree structure, each array placed
          with that leaf's sharding, and the `meta` dict given to `save`.

        Raises:
          CheckpointNotFoundError: no checkpoint at all, or none at `step`.
          StateMismatchError: tree structure or a leaf's shape differs from the checkpoint.
        """
        self._check_open()
        step = self._resolve_step(step)
        abstract_state = abstract_like(abstract_state)
        leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_state)
        manifest = self._read_info(step)["manifest"]
        self._check_compatible(step, manifest, leaves)

        def data_target(x):
            if not _is_key(x):
                return x
            shape = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(x.shape, x.dtype)).shape
            return jax.ShapeDtypeStruct(shape, np.uint32, sharding=x.sharding)

        target = jax.tree.unflatten(treedef, [data_target(x) for _, x in leaves])
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(target), _META: ocp.args.JsonRestore()}),
        )
        if jax.tree.structure(restored[_STATE]) != treedef:  # orbax rebuilds the target's tree; guard the zip
            raise CheckpointError(
                f"orbax returned a tree of structure {jax.tree.structure(restored[_STATE])}, expected {treedef}."
            )
        out = []
        for (_, x), entry, value in zip(leaves, manifest, jax.tree.leaves(restored[_STATE])):
            out.append(jax.random.wrap_key_data(value, impl=entry["key_impl"]) if _is_key(x) else value)
        return jax.tree.unflatten(treedef, out), dict(restored[_META] or {})

    def restore_meta(self, step: int | None = None) -> dict:
        """The `meta` dict of `step` (default: the latest), without reading any array."""
        self._check_open()
        step = self._resolve_step(step)
        restored = self._manager.restore(step, args=ocp.args.Composite(**{_META: ocp.args.JsonRestore()}))
        return dict(restored[_META] or {})

    # ----------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Waits for pending saves, applies the retention policy and releases orbax's resources."""
        if self._closed:
            return
        self.wait()
        self._manager.close()
        self._closed = True

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Checkpointer({self.directory!r}, keep_last={self.keep_last}, best_metric={self.best_metric!r}, "
            f"best_mode={self.best_mode!r}, async_save={self.async_save})"
        )

    # ----------------------------------------------------------------- helpers

    def _check_open(self) -> None:
        if self._closed:
            raise CheckpointError(f"Checkpointer({self.directory!r}) is closed.")

    def _check_step(self, step: int) -> None:
        steps = self.all_steps()
        if not steps:
            raise CheckpointNotFoundError(f"no checkpoint in {self.directory}.")
        if step not in steps:
            raise CheckpointNotFoundError(
                f"no checkpoint for step {step} in {self.directory}; available steps: {steps}."
            )

    def _resolve_step(self, step: int | None) -> int:
        if step is None:
            step = self.latest_step()
            if step is None:
                raise CheckpointNotFoundError(f"no checkpoint in {self.directory}.")
        step = int(step)
        self._check_step(step)
        # An asynchronous save of this step may still be in flight.
        self._manager.wait_until_finished()
        return step

    def _read_info_or_none(self, step: int) -> dict | None:
        try:
            return self._read_info(step)
        except Exception as e:  # noqa: BLE001 - a damaged step (see the module doc)
            log.warning("checkpoint step %d in %s is unreadable (%s); ignored", step, self.directory, _first_line(e))
            return None

    def _read_info(self, step: int) -> dict:
        if step not in self._info:
            self._manager.wait_until_finished()
            restored = self._manager.restore(step, args=ocp.args.Composite(**{_INFO: ocp.args.JsonRestore()}))
            self._info[step] = restored[_INFO]
        return self._info[step]

    def _check_compatible(self, step: int, manifest: list[dict], leaves: list) -> None:
        """Raises StateMismatchError naming the first path whose presence, shape or key-ness differs."""
        saved = {e["path"]: e for e in manifest}
        wanted = {jax.tree_util.keystr(p): x for p, x in leaves}
        where = f"checkpoint step {step} in {self.directory}"
        for entry in manifest:
            if entry["path"] not in wanted:
                raise StateMismatchError(
                    f"state structure differs at {entry['path']}: present in {where} but not in abstract_state "
                    f"({len(manifest)} leaves saved, {len(leaves)} requested)."
                )
        for path, x in wanted.items():
            if path not in saved:
                raise StateMismatchError(
                    f"state structure differs at {path}: present in abstract_state but not in {where} "
                    f"({len(manifest)} leaves saved, {len(leaves)} requested)."
                )
        if [e["path"] for e in manifest] != list(wanted):
            raise StateMismatchError(f"state structure differs from {where}: same leaves in a different tree layout.")
        for path, x in wanted.items():
            entry = saved[path]
            if (entry["key_impl"] is not None) != _is_key(x):
                raise StateMismatchError(
                    f"dtype differs at {path}: {entry['dtype']} in {where}, {x.dtype} in abstract_state "
                    "(typed PRNG keys restore only into typed-key leaves)."
                )
            if tuple(entry["shape"]) != tuple(x.shape):
                raise StateMismatchError(
                    f"shape differs at {path}: {tuple(entry['shape'])} in {where}, {tuple(x.shape)} in abstract_state."
                )


def _first_line(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [""])[0][:200]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# ---- a training run's checkpoints ------------------------------------------------------------

# Settings a resume may change: extending a run is a resume with more steps. The mesh among them:
# the checkpoint restores onto the new mesh's shardings (orbax), so a run moves to another device
# count with the same state. `train.group_by_length` changes how the update is cut into programs,
# not the update (fp32 summation order only).
RESUMABLE_CHANGES = frozenset(
    {"train.steps", "optim.total_steps", "train.tokens_per_micro_batch", "train.max_skipped_updates",
     "train.group_by_length", "mesh.data", "mesh.fsdp", "mesh.tensor"}
)


def changed_settings(saved: dict, current: dict) -> list[tuple[str, Any, Any]]:
    """(dotted key, saved value, current value) of every setting that differs, JSON-normalized,
    except `RESUMABLE_CHANGES`."""
    def flat(tree, prefix=""):
        out = {}
        for k, v in tree.items():
            if isinstance(v, dict):
                out |= flat(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v
        return out

    saved, current = (flat(json.loads(json.dumps(d, default=str))) for d in (saved, current))
    return [(k, saved.get(k), current.get(k)) for k in sorted(saved.keys() | current.keys())
            if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k)]


def open_run_checkpoints(
    directory: str, *, keep_last: int, best_metric: str | None, abstract_state: Any, config_dict: dict
) -> tuple[Checkpointer, tuple[int, Any, dict] | None]:
    """A run's checkpointer, and `(step, state, meta)` of its newest intact checkpoint (None: a fresh run).

    Each checkpoint's `meta["config"]` is checked against `config_dict` (the run's `to_dict()`)
    on the small metadata file, before (possibly gigabytes of) state is read.

    Raises:
      ConfigError: the directory holds checkpoints of a run with other settings.
    """
    checkpointer = Checkpointer(directory, keep_last=keep_last, best_metric=best_metric)

    def same_settings(meta: dict) -> None:
        changed = changed_settings(meta.get("config", {}), config_dict)
        if changed:
            raise ConfigError(
                f"{checkpointer.directory} holds checkpoints of a run with other settings ("
                + "; ".join(f"{k}: {old!r} there, {new!r} now" for k, old, new in changed[:8])
                + "). Resuming would mix the two runs: use a new --workdir, or delete its checkpoints/ to start over."
            )

    # The newest intact checkpoint: a damaged newer one (a kill mid-write, a full disk) is moved
    # aside with a warning naming it, instead of blocking every rerun.
    restored = checkpointer.restore_newest_intact(abstract_state=abstract_state, check_meta=same_settings)
    return checkpointer, restored
