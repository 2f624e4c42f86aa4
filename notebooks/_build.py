"""What the notebook builder scripts share: assemble cells into a notebook, optionally execute, write."""

from __future__ import annotations

import argparse
import os

import nbformat
from nbformat.v4 import new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))


def build(cells) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def main(cells, notebook_path: str, description: str, *, default_timeout: int) -> None:
    """The builder's command line: `--execute` runs it (cwd notebooks/) and stores the outputs."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--execute", action="store_true", help="run it (cwd notebooks/) and store the outputs")
    parser.add_argument("--timeout", type=int, default=default_timeout, help="seconds per cell")
    args = parser.parse_args()
    nb = build(cells)
    if args.execute:
        from nbclient import NotebookClient

        NotebookClient(nb, timeout=args.timeout, kernel_name="python3", resources={"metadata": {"path": HERE}}).execute()
    nbformat.write(nb, notebook_path)
    print(f"wrote {notebook_path}")
