"""MetricsLogger: JSONL records, TensorBoard events, resume truncation, NaN/Inf encoding."""

import glob
import json
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest

from sharpjax.train.metrics import MetricsLogger, format_metrics, read_metrics


def _lines(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _read_events(workdir):
    """Parses the event files with tensorboardX's own protos (TFRecord framing read by hand)."""
    import struct

    from tensorboardX.proto import event_pb2

    files = sorted(glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*")))
    out = []
    for path in files:
        with open(path, "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            record = data[pos + 12 : pos + 12 + length]
            pos += 12 + length + 4
            event = event_pb2.Event.FromString(record)
            if event.HasField("session_log"):
                out.append(
                    ("session_log", event.step, event_pb2.SessionLog.SessionStatus.Name(event.session_log.status), 0)
                )
            for value in event.summary.value:
                kind = "histo" if value.HasField("histo") else "scalar"
                out.append((value.tag, event.step, kind, value.simple_value if kind == "scalar" else value.histo.num))
    return files, out


def test_jsonl_records_and_tensorboard(tmp_path):
    with MetricsLogger(tmp_path) as log:
        log.log(1, {"loss": 0.5, "reward/mean": np.float32(0.25), "n": 3, "x": jnp.asarray(2.0)})
        log.log(2, {"loss": jnp.asarray([0.125])}, histograms={"adv": np.array([-1.0, 0.0, 1.0, np.nan])})
    records = _lines(tmp_path)
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["loss"] == 0.5 and records[0]["reward/mean"] == 0.25 and records[0]["n"] == 3.0
    assert records[0]["x"] == 2.0 and records[1]["loss"] == 0.125
    assert all(isinstance(r["time"], float) and abs(r["time"] - records[0]["time"]) < 60 for r in records)
    assert read_metrics(tmp_path) == records
    files, events = _read_events(tmp_path)
    assert len(files) == 1
    assert ("loss", 1, "scalar", 0.5) in events and ("loss", 2, "scalar", 0.125) in events
    assert ("reward/mean", 1, "scalar", 0.25) in events
    assert ("adv", 2, "histo", 3.0) in events  # the NaN is left out of the histogram


def test_nonfinite_values_round_trip_as_strict_json(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        log.log(1, {"a": float("nan"), "b": float("inf"), "c": -np.inf, "d": 1.0})
    with open(tmp_path / "metrics.jsonl") as f:
        line = f.readline()
    # Strict JSON: no bare NaN/Infinity tokens.
    record = json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert (record["a"], record["b"], record["c"], record["d"]) == ("nan", "inf", "-inf", 1.0)
    [back] = read_metrics(tmp_path / "metrics.jsonl")
    assert math.isnan(back["a"]) and back["b"] == math.inf and back["c"] == -math.inf and back["d"] == 1.0
    assert not os.path.exists(tmp_path / "tensorboard")


def test_resume_truncates_later_steps(tmp_path):
    with MetricsLogger(tmp_path) as log:
        for step in range(1, 7):
            log.log(step, {"loss": float(step), "odd": float("nan") if step % 2 else 0.0})
    # The run crashed after step 6; it resumes from the checkpoint at step 4.
    with MetricsLogger(tmp_path, resume_step=4) as log:
        assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]
        for step in range(5, 8):
            log.log(step, {"loss": 10.0 * step})
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6, 7]
    assert [r["loss"] for r in records] == [1.0, 2.0, 3.0, 4.0, 50.0, 60.0, 70.0]
    assert math.isnan(records[2]["odd"])  # kept records keep their encoding
    with open(tmp_path / "metrics.jsonl") as f:
        for line in f:
            json.loads(line, parse_constant=lambda c: pytest.fail(c))
    # TensorBoard: the second writer carries a purge marker at resume_step + 1.
    files, events = _read_events(tmp_path)
    assert len(files) == 2
    assert ("session_log", 5, "START", 0) in events  # TensorBoard drops older events with step >= 5
    assert ("loss", 6, "scalar", 6.0) in events and ("loss", 6, "scalar", 60.0) in events


def test_no_resume_step_appends(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        log.log(1, {"a": 1.0})
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        log.log(2, {"a": 2.0})
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]


def test_resume_without_existing_file(tmp_path):
    with MetricsLogger(tmp_path / "new", tensorboard=False, resume_step=10) as log:
        log.log(11, {"a": 1.0})
    assert [r["step"] for r in read_metrics(tmp_path / "new")] == [11]


def test_read_metrics_skips_a_truncated_last_line_only(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "a": 1.0}\n{"step": 2, "a": 2.0}\n{"step": 3, "a"')
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
    path.write_text('{"step": 1, "a": 1.0}\n{"step": 2, "a\n{"step": 3, "a": 3.0}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON record"):
        read_metrics(path)
    with pytest.raises(FileNotFoundError):
        read_metrics(tmp_path / "missing")


def test_log_rejects_bad_values(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        with pytest.raises(TypeError, match="metric 'v' is not a scalar"):
            log.log(1, {"v": np.ones(3)})
        with pytest.raises(TypeError, match="metric 's' is not a scalar"):
            log.log(1, {"s": "high"})
        with pytest.raises(ValueError, match="'step' is reserved"):
            log.log(1, {"step": 1.0})
    assert read_metrics(tmp_path) == []
    with pytest.raises(ValueError, match="closed"):
        log.log(2, {"a": 1.0})


def test_each_log_is_flushed_immediately(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard=False)
    log.log(1, {"a": 1.0})
    assert [r["step"] for r in read_metrics(tmp_path)] == [1]  # visible before close
    log.close()
    log.close()  # idempotent


def test_format_metrics():
    metrics = {"loss": jnp.asarray(0.0123456), "reward/mean": 0.5, "grad_norm": np.float32(1234567.0), "n": 3}
    assert format_metrics(7, metrics) == "step 7 | loss 0.01235 | reward/mean 0.5 | grad_norm 1.235e+06 | n 3"
    assert (
        format_metrics(7, metrics, keys=("reward/mean", "missing", "loss")) == "step 7 | reward/mean 0.5 | loss 0.01235"
    )
    assert format_metrics(8, {"x": float("nan")}) == "step 8 | x nan"
