"""The trainer's construction reads as the data flow (ARCHITECTURE.md, "A run's construction").

Issue 25's measure, taken by the profiler rather than by eye: follow the run config from
`train(config, ...)` through `Trainer` construction, call by call. A call counts when it is a
sharpjax function receiving the `RunConfig`, one of its sections or the `Trainer` among its
arguments; an entry is a counted call into another module than the previous counted call's; a
return is an entry into a module already entered. Bounds: at most 25 entries, 15 returns, and no
module entered more than three times (today: 14, 5 and 2).
"""

import collections
import dataclasses
import os
import sys

import pytest

import sharpjax
from sharpjax.train import trainer as trainer_module
from sharpjax.train.config import RunConfig
from tests.tiny import make_tiny_model, tiny_config

PACKAGE = os.path.dirname(sharpjax.__file__)


def construction_path(config: RunConfig, workdir: str, monkeypatch) -> list[str]:
    """`module:function` of each counted call while `train(config, workdir)` builds its Trainer."""
    counted = (RunConfig, trainer_module.Trainer) + tuple(
        type(getattr(config, f.name)) for f in dataclasses.fields(config)
        if dataclasses.is_dataclass(getattr(config, f.name))
    )
    calls = []

    def profile(frame, event, arg):
        code = frame.f_code
        if event != "call" or not code.co_filename.startswith(PACKAGE):
            return
        names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
        if any(isinstance(frame.f_locals.get(n), counted) for n in names):
            calls.append(f"{os.path.relpath(code.co_filename, PACKAGE)}:{code.co_name}")

    monkeypatch.setattr(trainer_module.Trainer, "run", lambda self, **kw: None)  # construction only
    sys.setprofile(profile)
    try:
        trainer_module.train(config, workdir, progress=False)
    finally:
        sys.setprofile(None)
    return calls


def entries(calls: list[str]) -> list[str]:
    """The modules entered, in order (consecutive calls in one module are one entry)."""
    modules = [c.split(":")[0] for c in calls]
    return [m for i, m in enumerate(modules) if i == 0 or m != modules[i - 1]]


def test_entries_and_returns_counted():
    path = ["a.py:f", "a.py:g", "b.py:h", "a.py:k", "c.py:x", "b.py:y"]
    assert entries(path) == ["a.py", "b.py", "a.py", "c.py", "b.py"]


@pytest.mark.parametrize("validation", [(), ("arithmetic",)], ids=["no-validation", "validation"])
def test_run_config_path_through_construction_is_short(tmp_path, monkeypatch, validation):
    model_dir = make_tiny_model(str(tmp_path / "model"))
    config = RunConfig.from_config_dict(tiny_config(model_dir, train__steps=1, data__validation=validation))
    calls = construction_path(config, str(tmp_path / "run"), monkeypatch)
    visited = entries(calls)
    returns = len(visited) - len(set(visited))
    most = collections.Counter(visited).most_common(1)[0]
    report = " -> ".join(calls)
    assert visited[0] == "train/trainer.py", report
    # The stages in the data's order: tokenizer, task, usable prompts and models, then the step.
    firsts = [m for i, m in enumerate(visited) if m not in visited[:i]]
    assert firsts.index("train/load.py") < firsts.index("tasks/__init__.py") < firsts.index("train/step.py"), report
    assert len(visited) <= 25 and returns <= 15 and most[1] <= 3, (len(visited), returns, most, report)
