"""The dependency rule (docs/design.md, "Layout and dependency direction"): nothing in dynamics/ below the
launcher imports experiments/.

The launcher layer (the launcher, the CLI and the study-level TAS) may read the registry; the library
keeps the vocabulary. Checked twice: statically (every import statement, lazy ones inside functions
included) and at run time (importing every library module leaves `experiments` out of sys.modules).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UPPER = ("dynamics.cli", "dynamics.launch", "dynamics.study_tas")  # the launcher/CLI layer


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_upper(name: str) -> bool:
    return any(name == u or name.startswith(u + ".") for u in UPPER)


def library_modules() -> list[str]:
    names = [_module_name(p) for p in sorted((ROOT / "dynamics").rglob("*.py"))]
    return [n for n in names if not _is_upper(n)]


def _imports(module: str) -> set[str]:
    """Every module a file names in an import statement, relative imports resolved."""
    path = ROOT / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = ROOT / module.replace(".", "/") / "__init__.py"
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{a.name}" for a in node.names)
    return found


def test_library_names_no_experiments_or_launcher_import():
    modules = library_modules()
    assert "dynamics.affinity" in modules and "dynamics.meanflow.tasks" in modules
    bad = {m: sorted(i for i in _imports(m) if i.split(".")[0] == "experiments" or _is_upper(i)) for m in modules}
    bad = {m: names for m, names in bad.items() if names}
    assert not bad, f"library modules import experiments/ or the launcher layer: {bad}"


def test_importing_the_library_leaves_experiments_unloaded():
    code = ("import importlib, sys\n"
            f"for m in {library_modules()!r}:\n"
            "    importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'experiments' or m.startswith('dynamics.cli')"
            " or m.startswith('dynamics.launch') or m.startswith('dynamics.study_tas')))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_the_registry_reexports_the_library_vocabulary():
    from dynamics.meanflow import tasks
    from experiments import registry

    assert registry.TaskSpec is tasks.TaskSpec and registry.dt_bin is tasks.dt_bin
    assert registry.bin_label is tasks.bin_label


MAX_MODULE_LINES = 350
MAX_TRAINER_LINES = 160


def test_no_module_is_over_350_lines():
    """A module a reader takes in at once: every file in dynamics/ and experiments/ within 350 lines."""
    files = sorted((ROOT / "dynamics").rglob("*.py")) + sorted((ROOT / "experiments").rglob("*.py"))
    assert any(p.name == "train.py" for p in files)
    long = {str(p.relative_to(ROOT)): n for p in files if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_the_trainer_stays_a_short_loop_over_parts():
    """The Trainer holds the loop; checkpoints, logs, the DDP wrapper and the resume agreement live in its parts."""
    tree = ast.parse((ROOT / "dynamics" / "train.py").read_text())
    (trainer,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer"]
    lines = trainer.end_lineno - trainer.lineno + 1
    assert lines <= MAX_TRAINER_LINES, f"Trainer is {lines} lines (at most {MAX_TRAINER_LINES})"
