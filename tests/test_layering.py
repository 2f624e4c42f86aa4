"""Layering: no module of sharpjax imports one from a higher layer (ARCHITECTURE.md, "Layers").

A plain AST scan of sharpjax/**/*.py, function-local imports included (an import inside a
function is still a dependency, only a later one). `LAYERS` is the one table of the order; a
module belongs to the longest entry that is a prefix of its dotted name, and every `__main__`
module (a `python -m` entry point) belongs to the top layer. An import of a module in the same or
a lower layer passes; one into a higher layer fails, naming file, line and both layers.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sharpjax"

# Low -> high. Each layer may import the ones above it in this table, never the ones below.
LAYERS = (
    ("sharpjax", "the package root: the JAX version check, imports nothing of its own"),
    ("sharpjax.errors", "the error types"),
    ("sharpjax.schema", "frozen config dataclasses <-> ml-collections dicts (RunConfig's and SFTConfig's machinery)"),
    ("sharpjax.sample_metrics", "pass@k / maj@k and summaries (numpy only; tasks, sft, eval, train use them)"),
    ("sharpjax.models", "config, transformer, partitioning rules, HF import/export, tokenizer"),
    ("sharpjax.parallel", "mesh, shardings, multi-process placement"),
    ("sharpjax.rollout", "the sampler, scoring, prompt encoding"),
    ("sharpjax.rewards", "the reward closure and the math verifier"),
    ("sharpjax.losses", "advantages, policy-gradient loss, KL estimators"),
    ("sharpjax.data", "benchmark loaders, prompts, the prompt iterator"),
    ("sharpjax.tasks", "the Task seam and its registry"),
    ("sharpjax.eval", "the evaluation harness (the task's render and verify)"),
    ("sharpjax.sft", "the arithmetic base model (evaluated with the harness)"),
    ("sharpjax.train", "the RL pieces: RunConfig, optim, step, checkpoint, metrics, lock, the loop"),
    ("sharpjax.plan", "memory and time of a run (compiles train.step's programs; resolves 'auto' before train())"),
    ("sharpjax.configs", "base_config and the runs (RunConfig's and SFTConfig's defaults)"),
    ("sharpjax.figures", "the main job's PNGs (reads train.metrics' records)"),
    ("sharpjax.reproduce", "the main job"),
    ("sharpjax.diagnose", "the diagnosis (reuses the main job's pieces)"),
    ("__main__", "every `python -m` entry point (sharpjax/**/__main__.py)"),
)
RANK = {name: i for i, (name, _) in enumerate(LAYERS)}


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str:
    if module.split(".")[-1] == "__main__":
        return "__main__"
    prefixes = [name for name in RANK if module == name or module.startswith(name + ".")]
    assert prefixes, f"{module} is in no layer of LAYERS: add it to the table (and to ARCHITECTURE.md)"
    return max(prefixes, key=len)


def imported_modules(path: pathlib.Path, module: str):
    """(line, dotted name) of each sharpjax module `path` imports, at any depth of the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            # `from pkg import mod` depends on pkg.mod; `from mod import name` on mod.
            names = [f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source for a in node.names]
        else:
            continue
        for name in names:
            if name == "sharpjax" or name.startswith("sharpjax."):
                yield node.lineno, name


def upward_imports():
    found = []
    for module, path in MODULES.items():
        here = layer(module)
        for line, name in imported_modules(path, module):
            there = layer(name)
            if RANK[there] > RANK[here]:
                found.append(f"{path.relative_to(ROOT)}:{line}: {module} ({here}) imports {name} ({there})")
    return found


def test_every_module_has_a_layer():
    for module in MODULES:
        layer(module)


def test_no_upward_import():
    found = upward_imports()
    assert not found, "imports from a lower layer into a higher one:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("def f():\n    from sharpjax.train.trainer import Trainer\n", ["sharpjax.train.trainer"]),
        ("from sharpjax import parallel\n", ["sharpjax.parallel"]),
        ("from . import harness\n", ["sharpjax.eval.harness"]),
        ("import numpy\nfrom sharpjax.eval.metrics import summarize as s\n", ["sharpjax.eval.metrics"]),
    ],
)
def test_scan_sees_every_import_form(tmp_path, source, expected):
    """The scan itself: function-local, `from package import module`, relative and aliased imports."""
    path = tmp_path / "x.py"
    path.write_text(source)
    assert [name for _, name in imported_modules(path, "sharpjax.eval.x")] == expected


def test_an_upward_import_is_found():
    """The ranks say what ARCHITECTURE.md says: tasks sit below eval, all of train (the loop
    included) below the plan, with no module split off its package."""
    assert RANK[layer("sharpjax.tasks.arithmetic")] < RANK[layer("sharpjax.eval.harness")]
    assert layer("sharpjax.train.trainer") == layer("sharpjax.train.step") == "sharpjax.train"
    assert RANK[layer("sharpjax.train.trainer")] < RANK[layer("sharpjax.plan")]
    assert all(name.count(".") <= 1 for name in RANK), "every layer is a whole package or module"
    assert layer("sharpjax.plan.__main__") == "__main__"
