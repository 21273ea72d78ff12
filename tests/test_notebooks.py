"""The analysis notebooks run against a results store: a smoke-scale one built once per test session, and the
cpu store `results/cpu` of `make reproduce` when it exists."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import nbformat
import pytest
from nbconvert.preprocessors import ExecutePreprocessor

from dynamics.analysis.report import write_report
from dynamics.launch import launch
from experiments.registry import all_studies, get_study

ROOT = Path(__file__).parent.parent
NOTEBOOKS = sorted((ROOT / "analysis_notebooks").glob("*.ipynb"))
CPU_STORE = ROOT / "results"


@pytest.fixture(scope="session")
def smoke_store(tmp_path_factory) -> Path:
    """Every study at smoke scale (1 seed, 1 step per epoch) and O3's TAS: the store all notebooks read."""
    from dynamics.study_tas import study_affinity

    root = tmp_path_factory.mktemp("smoke_store")
    builtin = [s for s in all_studies() if s.module.startswith("experiments.")]  # not studies other tests registered
    launch(builtin, "smoke", executor="debug", root=root, progress=False)
    study_affinity(get_study("o3-task-affinity"), "smoke", root, batches=2)  # few batches: the notebook only draws it
    return root


def _execute(path: Path, root: Path, scale: str, monkeypatch) -> list[dict]:
    monkeypatch.setenv("DYNAMICS_RESULTS", str(root))
    monkeypatch.setenv("DYNAMICS_SCALE", scale)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(path, as_version=4)
    ExecutePreprocessor(timeout=300, kernel_name="python3").preprocess(nb, {"metadata": {"path": str(path.parent)}})
    outputs = [o for cell in nb.cells for o in cell.get("outputs", [])]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    return outputs


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_code_parses(path):
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type == "code":
            ast.parse(cell.source)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes_on_smoke_store(path, smoke_store, monkeypatch):
    outputs = _execute(path, smoke_store, "smoke", monkeypatch)
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {}) for o in outputs), \
        f"{path.name} drew no figure"
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "regime:" in text and "detectable effect" in text  # the regime check and the power are printed


@pytest.mark.skipif(not (CPU_STORE / "cpu").exists(), reason="no results/cpu: `make reproduce` has not run here")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes_on_cpu_store(path, monkeypatch):
    _execute(path, CPU_STORE, "cpu", monkeypatch)


def test_report_draws_every_study_and_the_convergence_curves(smoke_store):
    studies = [s for s in all_studies() if s.module.startswith("experiments.") and "smoke" not in s.unsupported]
    report = write_report(smoke_store, "smoke", studies).read_text()
    figures = smoke_store / "smoke" / "figures"
    for study in studies:
        if study.metric.kind != "tas":  # the TAS matrices are drawn by the O3 notebook
            assert (figures / f"{study.name}.png").exists(), study.name
            assert f"![{study.name}]" in report
    assert "Learning regime:" in report and "Power:" in report
    assert os.path.getsize(figures / "convergence.png") > 0
