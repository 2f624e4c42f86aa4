"""Training metrics: one JSONL file per run (what the notebooks read) plus TensorBoard events.

    with MetricsLogger(workdir, resume_step=restored_step) as log:
        log.log(step, {"loss": loss, "reward/mean": r}, histograms={"advantages": adv})
    rows = read_metrics(workdir)   # [{"step": 1, "time": ..., "loss": ...}, ...]

`workdir/metrics.jsonl` holds one JSON object per `log` call: ``{"step": int, "time": float
(unix seconds), <name>: float, ...}``. Strict JSON has no NaN or Infinity, so non-finite
values are written as the strings ``"nan"``, ``"inf"`` and ``"-inf"``: every line parses
with any JSON reader (`json.loads`, pandas, jq), and `read_metrics` turns them back into
floats. Histograms go to TensorBoard only (event files under `workdir/tensorboard`).

Resuming: `resume_step` drops the JSONL records with step > resume_step (those logged after
the checkpoint the run resumes from) and tells TensorBoard to purge its events from
resume_step + 1 on, so a resumed run never shows a step twice.

Only process 0 writes (under `jax.distributed`, every process may call `log`).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

__all__ = ["METRICS_FILE", "TENSORBOARD_DIR", "MetricsLogger", "format_metrics", "read_metrics"]

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
_RESERVED = ("step", "time")
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _scalar(name: str, value: Any) -> float:
    try:
        arr = np.asarray(value)
        if arr.size != 1:
            raise ValueError
        return float(arr.reshape(()))
    except (TypeError, ValueError):
        raise TypeError(f"metric {name!r} is not a scalar number: {value!r}") from None


def _encode(x: float) -> float | str:
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _decode(record: dict) -> dict:
    return {k: _NONFINITE[v] if isinstance(v, str) and v in _NONFINITE else v for k, v in record.items()}


def _metrics_path(path_or_workdir: str | os.PathLike) -> str:
    path = os.fspath(path_or_workdir)
    return os.path.join(path, METRICS_FILE) if os.path.isdir(path) else path


def read_metrics(path_or_workdir: str | os.PathLike) -> list[dict]:
    """The records of a metrics JSONL file (or of `<workdir>/metrics.jsonl`), in file order.

    Non-finite values (stored as "nan"/"inf"/"-inf") come back as floats. A truncated last
    line, left by a run killed mid-write, is skipped.

    Raises:
      FileNotFoundError: no such file.
      ValueError: a line other than the last is not valid JSON (names the line).
    """
    path = _metrics_path(path_or_workdir)
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    records = []
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(_decode(json.loads(line)))
        except json.JSONDecodeError as e:
            if i == last:
                break
            raise ValueError(f"{path}:{i + 1}: not a JSON record ({e}).") from None
    return records


def format_metrics(step: int, metrics: Mapping[str, Any], keys: Sequence[str] | None = None) -> str:
    """A compact one-line progress string, e.g. ``step 120 | loss 0.0123 | reward/mean 0.41``.

    Args:
      step: the train step.
      metrics: name -> scalar (python, numpy or jax).
      keys: which metrics to show, in this order (missing ones are skipped); default: all,
        in the mapping's order.
    """
    names = list(metrics) if keys is None else [k for k in keys if k in metrics]
    parts = [f"step {int(step)}"]
    for name in names:
        try:
            value = _scalar(name, metrics[name])
        except TypeError:
            parts.append(f"{name} {metrics[name]}")
            continue
        parts.append(f"{name} {value:.4g}")
    return " | ".join(parts)


class MetricsLogger:
    """Writes scalar metrics to `workdir/metrics.jsonl` and (optionally) TensorBoard.

    Args:
      workdir: the run's directory (created if missing).
      tensorboard: also write TensorBoard event files under `workdir/tensorboard`.
      resume_step: the step the run resumes from: records with a larger step are removed
        from the JSONL file and purged from TensorBoard. None appends to whatever is there.

    Every `log` call appends and flushes one line, so a notebook can read a live run and a
    crash loses nothing already logged. A context manager; `close()` flushes and closes.
    """

    def __init__(self, workdir: str | os.PathLike, *, tensorboard: bool = True, resume_step: int | None = None):
        self.workdir = os.fspath(workdir)
        self.path = os.path.join(self.workdir, METRICS_FILE)
        self._active = jax.process_index() == 0
        self._file = None
        self._writer = None
        self._closed = False
        if not self._active:
            return
        os.makedirs(self.workdir, exist_ok=True)
        if resume_step is not None and os.path.exists(self.path):
            self._truncate_after(int(resume_step))
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter

            purge = None if resume_step is None else int(resume_step) + 1
            # Event file names hold only the second and host: a unique suffix keeps a restart
            # within the same second from overwriting the previous run's file.
            self._writer = SummaryWriter(
                os.path.join(self.workdir, TENSORBOARD_DIR),
                purge_step=purge,
                flush_secs=30,
                filename_suffix=f".{time.time_ns()}.{os.getpid()}",
            )

    def _truncate_after(self, resume_step: int) -> None:
        kept = [r for r in read_metrics(self.path) if r.get("step", -1) <= resume_step]
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for record in kept:
                f.write(json.dumps({k: _encode(v) if isinstance(v, float) else v for k, v in record.items()}) + "\n")
        os.replace(tmp, self.path)

    def log(
        self,
        step: int,
        scalars: Mapping[str, Any],
        *,
        histograms: Mapping[str, Any] | None = None,
    ) -> None:
        """Records `scalars` (and `histograms`, TensorBoard only) at `step`.

        Args:
          step: the train step.
          scalars: name -> scalar (python, numpy or a size-1 jax array; fetched to host).
          histograms: name -> array of values; non-finite values are left out of the histogram.

        Raises:
          TypeError: a scalar is not a number.
          ValueError: a metric is named "step" or "time" (reserved), or the logger is closed.
        """
        if self._closed:
            raise ValueError(f"MetricsLogger({self.workdir!r}) is closed.")
        for name in _RESERVED:
            if name in scalars:
                raise ValueError(f"metric name {name!r} is reserved in {METRICS_FILE}; rename it.")
        values = {str(k): _scalar(k, v) for k, v in scalars.items()}
        if not self._active:
            return
        step = int(step)
        record = {"step": step, "time": time.time()} | {k: _encode(v) for k, v in values.items()}
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(name, value, step)
            for name, hist in (histograms or {}).items():
                arr = np.asarray(hist, dtype=np.float64).reshape(-1)
                arr = arr[np.isfinite(arr)]
                if arr.size:
                    self._writer.add_histogram(name, arr, step)

    def flush(self) -> None:
        """Forces buffered TensorBoard events to disk (the JSONL file is flushed on every log)."""
        if self._file is not None:
            self._file.flush()
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flushes and closes the files; idempotent."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._closed = True

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
