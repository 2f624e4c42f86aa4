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


def test_closed_forms_notebook(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("matplotlib")
    pytest.importorskip("ipykernel")
    notebook = tmp_path / "closed_forms.ipynb"
    shutil.copy(os.path.join(NOTEBOOKS, "closed_forms.ipynb"), notebook)
    # The kernel is a child process: it inherits this environment.
    monkeypatch.setenv("SHARPJAX_NOTEBOOK_QUICK", "1")
    monkeypatch.delenv("SHARPJAX_FIGURE_DIR", raising=False)
    monkeypatch.setenv("PYTHONPATH", ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")

    nb = nbformat.read(notebook, as_version=4)
    nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

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
