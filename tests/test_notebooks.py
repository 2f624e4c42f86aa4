"""The figure notebooks execute (quick mode) and write their figures.

Each runs with nbclient on the `python3` kernel in a temporary copy, with
SHARPJAX_NOTEBOOK_QUICK=1 (fewer iterations), so the committed notebook and figures are
left untouched.
"""

import os
import re
import shutil

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, "notebooks")


def execute_copy(name: str, tmp_path, monkeypatch):
    """Runs a copy of notebooks/<name> in tmp_path (figures land in tmp_path/figures); returns it."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("matplotlib")
    pytest.importorskip("ipykernel")
    notebook = tmp_path / name
    shutil.copy(os.path.join(NOTEBOOKS, name), notebook)
    # The kernel is a child process: it inherits this environment.
    monkeypatch.delenv("SHARPJAX_FIGURE_DIR", raising=False)
    monkeypatch.setenv("PYTHONPATH", ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    nb = nbformat.read(notebook, as_version=4)
    nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    return nb


@pytest.mark.parametrize("name", ["closed_forms", "training_curves"])
def test_stored_notebook_is_its_builder(name, monkeypatch):
    """notebooks/<name>.ipynb holds the cells notebooks/build_<name>.py writes (sources and kinds; outputs
    come from executing it): a change to the builder that the stored notebook lacks, or the reverse, fails."""
    import importlib

    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("matplotlib")
    monkeypatch.syspath_prepend(NOTEBOOKS)  # the builders import notebooks/_build.py
    builder = importlib.import_module(f"build_{name}")
    built = builder.build().cells
    stored = nbformat.read(os.path.join(NOTEBOOKS, f"{name}.ipynb"), as_version=4).cells
    assert [(c.cell_type, c.source) for c in stored] == [(c.cell_type, c.source) for c in built]


def test_closed_forms_notebook(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARPJAX_NOTEBOOK_QUICK", "1")
    nb = execute_copy("closed_forms.ipynb", tmp_path, monkeypatch)

    for name in ("power", "convergence", "length"):
        png = tmp_path / "figures" / f"closed_forms_{name}.png"
        assert png.is_file() and png.stat().st_size > 10_000, png
    stdout = "".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
    )
    assert "quick=True" in stdout
    # The gradient-ascent paths under the objective and under sharpjax's expected loss agree.
    rel = [float(x) for x in re.findall(r"max relative difference of the two paths (\S+)", stdout)]
    assert len(rel) == 4 and max(rel) < 1e-9, stdout


def _sft_cache_dir(request, tmp_path):
    """An isolated SFT cache (pytest's, else tmp_path): the runs use the shipped quick model and write nothing there."""
    cache = getattr(request.config, "cache", None)
    return str(cache.mkdir("sharpjax_sft")) if cache is not None else str(tmp_path / "sft_cache")


@pytest.mark.slow  # three training runs executed in the notebook (~80 s idle)
@pytest.mark.guard  # CI's second stage, once (Python 3.11): the fast suite stays near 20 minutes
def test_training_curves_notebook(tmp_path, monkeypatch, request):
    pytest.importorskip("nbclient")
    import json

    from sharpjax.reproduce import ReproduceConfig, run

    monkeypatch.setenv("SHARPJAX_CACHE_DIR", _sft_cache_dir(request, tmp_path))
    runs_dir = tmp_path / "runs_main"
    run(str(runs_dir), ReproduceConfig(size="quick", modes=("task", "power-a2"), seeds=(0,), test_problems=8,
                                         eval_samples=4), progress=False)
    assert (runs_dir / "results.json").is_file() and (runs_dir / "runs" / "task_seed0" / "metrics.jsonl").is_file()
    # A fixed-length run (figure 6): a copy of the task run with rollout.ignore_eos set.
    fixed = runs_dir / "runs" / "task-fixed_seed0"
    shutil.copytree(runs_dir / "runs" / "task_seed0", fixed, ignore=shutil.ignore_patterns("checkpoints", "export"))
    config = json.loads((fixed / "config.json").read_text())
    config["rollout"]["ignore_eos"] = True
    (fixed / "config.json").write_text(json.dumps(config))
    # A run with keys and files missing: reported, not fatal.
    partial = runs_dir / "runs" / "likelihood_seed0"
    partial.mkdir()
    lines = (runs_dir / "runs" / "power-a2_seed0" / "metrics.jsonl").read_text().splitlines()
    stripped = [{k: v for k, v in json.loads(line).items() if k not in ("advantage_std", "kl_to_base")}
                for line in lines]
    (partial / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stripped))

    monkeypatch.setenv("SHARPJAX_RUNS_DIR", str(runs_dir))
    nb = execute_copy("training_curves.ipynb", tmp_path, monkeypatch)

    for name in ("val_pass1", "pass_at_k", "length", "kl_loglik", "instability", "fixed_length"):
        png = tmp_path / "figures" / f"training_curves_{name}.png"
        assert png.is_file() and png.stat().st_size > 10_000, png
    stdout = "".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
    )
    assert f"runs dir: {runs_dir}" in stdout
    assert "1 fixed-length run(s): task-fixed_seed0" in stdout
    assert "likelihood_seed0/config.json" in stdout
    assert "'advantage_std' or 'response_length' in the train records of likelihood" in stdout
    assert "'kl_to_base' in the train records of likelihood" in stdout
    assert "| power-a2 |" in stdout  # the results table
