"""Executing a colab on a run folder, for the tests of the studies that write one."""
import os

import pytest


def execute(path: str, run_dir: str) -> list[dict]:
    """Run every cell of the notebook at `path` with RLR_RUN_DIR=run_dir (nbclient, a python3
    kernel, the notebook's folder as working directory); returns the code cells' outputs."""
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": os.path.dirname(path)}}).execute(
        env={**os.environ, "RLR_RUN_DIR": run_dir})
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
