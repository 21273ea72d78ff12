"""Curriculum pieces from a user's module: the README's example end to end, typed parameters, the record of
the module in the config, and the paper's pieces registered the same way without changing any config dict."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dynamics import pieces
from dynamics.cli import main as cli_main
from dynamics.config import ConfigError, PhaseConfig, RunConfig, apply_overrides, preset
from dynamics.curriculum import build_objective

REPO = Path(__file__).resolve().parents[1]


def readme_example() -> tuple[str, list[str]]:
    """The module and the commands of README's pieces example, as written there."""
    text = (REPO / "README.md").read_text().split("<!-- pieces-example -->", 1)[1]
    module = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    commands = re.search(r"```bash\n(.*?)```", text, re.S).group(1)

    def strip(block: str) -> str:  # the README indents the blocks by two spaces (a list item)
        return "\n".join(line[2:] if line.startswith("  ") else line for line in block.splitlines())

    lines = [line.split("#")[0].strip() for line in strip(commands).splitlines()]
    return strip(module) + "\n", [line for line in lines if line.startswith("dynamics ")]


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """my_curriculum.py written where the commands run, importable as with PYTHONPATH=."""
    where = tmp_path_factory.mktemp("example")
    module, commands = readme_example()
    (where / "my_curriculum.py").write_text(module)
    sys.path.insert(0, str(where))
    yield where, commands
    sys.path.remove(str(where))


def test_readme_example_trains_and_measures_tas(example, monkeypatch, capsys):
    where, commands = example
    assert len(commands) == 2 and len(readme_example()[0].splitlines()) <= 25
    monkeypatch.chdir(where)
    for command in commands:
        assert cli_main(shlex.split(command)[1:]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "u[0.1,0.3]" in out and "rows: the task stepped on" in out
    saved = json.loads((where / "runs" / "late" / "config.json").read_text())
    assert saved["modules"] == ["my_curriculum"]
    assert saved["objective"]["alpha"] == "late_v" and saved["objective"]["alpha_params"] == {"power": 3}
    cfg = RunConfig.from_dict(saved)
    loss = build_objective(cfg, PhaseConfig(epochs=1.0))
    t = torch.linspace(0, 1, 11)
    assert torch.allclose(loss.alpha(t), 4 * t**3)  # (1 + power) t^power with power = 3
    total = cfg.total_steps()
    dt = torch.rand(5)
    quarter = total // 4  # a quarter of the run: half-way through the fade-in
    assert torch.allclose(loss.beta(dt, quarter), torch.full((5,), 2 * quarter / total))
    assert torch.allclose(loss.beta(dt, total), torch.ones(5))


def test_another_process_imports_the_recorded_module(example):
    """A fresh interpreter (a worker, a later session) rebuilds the run's objective from its config alone."""
    where, _ = example
    run = where / "runs" / "late"
    if not (run / "config.json").exists():
        pytest.skip("needs the README example's run")
    code = ("import json; from dynamics.config import RunConfig, PhaseConfig; "
            "from dynamics.curriculum import build_objective; import torch; "
            f"cfg = RunConfig.from_dict(json.load(open({str(run / 'config.json')!r}))); "
            "print(float(build_objective(cfg, PhaseConfig()).alpha(torch.tensor([0.5]))))")
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{where}", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-1500:]
    assert float(out.stdout.strip()) == pytest.approx(4 * 0.5**3)


def test_piece_parameters_are_typed_and_checked(example):
    base = preset("smoke")
    with pytest.raises(ConfigError, match="objective.alpha_params.power=-1.0 must be >= 0"):
        apply_overrides(base, ["objective.alpha=late_v", "objective.alpha_params.power=-1"])
    with pytest.raises(ConfigError, match="objective.alpha_params.power: expected a number"):
        apply_overrides(base, ["objective.alpha=late_v", "objective.alpha_params.power=steep"])
    with pytest.raises(ConfigError, match="unknown key 'objective.alpha_params.bogus'; allowed: power"):
        apply_overrides(base, ["objective.alpha=late_v", "objective.alpha_params.bogus=1"])
    with pytest.raises(ConfigError, match="takes no parameters"):
        apply_overrides(base, ["objective.beta=fade_in", "objective.beta_params.k=1"])
    with pytest.raises(ConfigError, match=r"objective.alpha='nope' is not a registered alpha piece; allowed: none, "
                                          r"late_v, minsnr"):
        apply_overrides(base, ["objective.alpha=nope"])
    cfg = apply_overrides(base, ["objective.alpha=late_v"])
    assert cfg.modules == ["my_curriculum"] and cfg.objective.alpha_params == {}  # the dataclass's default power
    bad = RunConfig.from_dict({**cfg.to_dict(), "modules": ["no_such_module_here"]})
    with pytest.raises(ConfigError, match="cannot import 'no_such_module_here'"):
        bad.validate()


def test_paper_pieces_register_the_same_way_and_keep_the_config_dict():
    assert {"minsnr"} <= set(pieces.names("alpha")) and {"progressive"} <= set(pieces.names("beta"))
    assert pieces.get_piece("alpha", "minsnr").module == pieces.PAPER_MODULE
    cfg = preset("cpu-minsnr-lu")
    d = cfg.to_dict()
    assert "modules" not in d and "alpha_params" not in d["objective"] and "beta_params" not in d["objective"]
    loss = build_objective(cfg, PhaseConfig(epochs=1.0))
    assert type(loss.alpha).__name__ == "MinSNRWeight" and type(loss.beta).__name__ == "ProgressiveUWeight"
    with pytest.raises(pieces.PieceError, match="kind='gamma'"):
        pieces.register_piece("gamma", "x")
