"""CI's own contract (issue 16, items 9-10): .ci/run is the README's test command plus the
guard stage, skips are printed, missing test data fails under CI=true, lint is configured."""

import configparser
import os
import re
import subprocess
import tomllib

import pytest

from tests.conftest import find_data_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(name):
    with open(os.path.join(ROOT, name)) as f:
        return f.read()


def test_ci_runs_the_readme_test_command_then_the_guard_stage():
    readme_commands = re.search(r"```bash\n(.*?)```", _read("README.md"), re.S).group(1).strip().splitlines()
    test_command = readme_commands[1]
    run = _read(".ci/run").splitlines()
    assert test_command in run  # the very line, not a paraphrase
    assert "ruff check" in test_command and test_command.endswith("python -m pytest -q -rs")
    assert "python -m pytest -q -rs -n 2 -m guard" in run
    # Both ends of the supported range: the same command again under Python 3.12, and the
    # compile-only GPU tests on each stack.
    assert run.count(test_command) == 2 and any("python3.12" in line for line in run)
    assert "    python -m pytest -q -rs -m aot" in run


@pytest.mark.parametrize("path, name", [
    ("tests/train/test_distributed.py", "test_two_processes_match_one"),
    ("tests/sft/test_sft.py", "test_default_preset_is_a_mediocre_base_model"),
])
def test_guard_stage_selects_the_guarded_slow_tests(path, name):
    # The marker is registered (setup.cfg) and sits on the test's own decorators.
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    assert re.search(r"^guard:", cfg["tool:pytest"]["markers"], re.M)
    decorators = re.search(rf"((?:@[^\n]*\n)+)def {name}\(", _read(path)).group(1)
    assert "@pytest.mark.guard" in decorators and "@pytest.mark.slow" in decorators


def test_missing_data_skips_locally_and_fails_under_ci(monkeypatch, tmp_path):
    monkeypatch.setenv("SHARPJAX_DATA_DIR", str(tmp_path))  # no math500.jsonl there
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        find_data_dir()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true: benchmark data not found"):
        find_data_dir()


def test_lint_is_configured_and_in_the_test_extra():
    ruff = tomllib.loads(_read("pyproject.toml"))["tool"]["ruff"]
    assert ruff["line-length"] == 120 and set(ruff["lint"]["select"]) == {"E", "F", "I", "W"}
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    assert re.search(r"^ruff==", cfg["options.extras_require"]["test"], re.M)
    # No binary wheel vendored in the repository (the linter comes from the test extra).
    tracked = subprocess.run(["git", "ls-files", "*.whl"], cwd=ROOT, capture_output=True, text=True).stdout
    assert tracked.strip() == ""


def _imported_names(tree):
    """(module, name or None) of every absolute sharpjax / tests import in a parsed file, function bodies too."""
    import ast

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] in ("sharpjax", "tests"):
            yield from ((node.module, alias.name) for alias in node.names)
        elif isinstance(node, ast.Import):
            yield from ((alias.name, None) for alias in node.names if alias.name.split(".")[0] in ("sharpjax", "tests"))


def test_every_import_in_the_tests_resolves():
    """issue 26, item 8: a slow test imported modules renamed long ago and no CI stage ran it.
    Imports inside test functions are not checked by collection; every one must still resolve."""
    import ast
    import importlib
    import importlib.util

    missing = []
    for folder, _, files in os.walk(os.path.join(ROOT, "tests")):
        for file in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, file)
            with open(path) as f:
                tree = ast.parse(f.read(), path)
            for module, name in _imported_names(tree):
                where = f"{os.path.relpath(path, ROOT)}: {module}{'' if name is None else '.' + name}"
                if importlib.util.find_spec(module) is None:
                    missing.append(where)
                elif name is not None and name != "*":
                    mod = importlib.import_module(module)
                    submodule = hasattr(mod, "__path__") and importlib.util.find_spec(f"{module}.{name}") is not None
                    if not hasattr(mod, name) and not submodule:
                        missing.append(where)
    assert not missing, "imports that do not resolve: " + "; ".join(missing)
