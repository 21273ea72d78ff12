"""The analysis notebooks run against a results store (a smoke-scale one here)."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest
from nbconvert.preprocessors import ExecutePreprocessor

from dynamics.launch import launch
from experiments.registry import get_study

NOTEBOOKS = sorted((Path(__file__).parent.parent / "analysis_notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_code_parses(path):
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type == "code":
            ast.parse(cell.source)


def test_main_ablation_notebook_executes(tmp_path, monkeypatch):
    launch([get_study("main"), get_study("k-schedule")], "smoke", executor="debug", root=tmp_path, progress=False)
    monkeypatch.setenv("DYNAMICS_RESULTS", str(tmp_path))
    monkeypatch.setenv("DYNAMICS_SCALE", "smoke")
    path = next(p for p in NOTEBOOKS if p.name == "main_ablation.ipynb")
    nb = nbformat.read(path, as_version=4)
    ExecutePreprocessor(timeout=300, kernel_name="python3").preprocess(nb, {"metadata": {"path": str(path.parent)}})
    outputs = [o for cell in nb.cells for o in cell.get("outputs", [])]
    assert any(o.get("output_type") == "display_data" for o in outputs)  # the figure
    assert not any(o.get("output_type") == "error" for o in outputs)
