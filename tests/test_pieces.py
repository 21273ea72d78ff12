"""Curriculum pieces from a user's module: the README's example end to end, typed parameters, the record of
the module in the config, and the paper's pieces registered the same way without changing any config dict."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
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
    assert pieces.names("v_time")[:1] == ["base"] and "dtd" in pieces.names("v_time")
    assert pieces.get_piece("alpha", "minsnr").module == pieces.PAPER_MODULE
    assert pieces.get_piece("v_time", "dtd").module == pieces.PAPER_MODULE
    cfg = preset("cpu-minsnr-lu")
    d = cfg.to_dict()
    assert "modules" not in d and "alpha_params" not in d["objective"] and "beta_params" not in d["objective"]
    assert not {"v_sampling_params", "target_transform", "target_transform_params"} & set(d["objective"])
    loss = build_objective(cfg, PhaseConfig(epochs=1.0))
    assert type(loss.alpha).__name__ == "MinSNRWeight" and type(loss.beta).__name__ == "ProgressiveUWeight"
    dtd = preset("cpu-dtd-lu")
    assert dtd.to_dict()["objective"]["v_sampling"] == "dtd" and "v_sampling_params" not in dtd.to_dict()["objective"]
    with pytest.raises(pieces.PieceError, match="kind='gamma'"):
        pieces.register_piece("gamma", "x")


# A v-time sampler and a target transform of this module's own (importable as `test_pieces` by every process
# that builds the run's objective, as a user's module would be).
@dataclass
class NoisyHalf:
    lo: float = 0.5  # the v rows' t quantiles are drawn from [lo, 1]: the noisier part of the v-row law

    def validate(self) -> None:
        if not 0 <= self.lo < 1:
            raise ValueError(f"objective.v_sampling_params.lo={self.lo} must be in [0, 1)")


class _NoisyHalfSampler(pieces.VTimePiece):
    def __init__(self, lo: float):
        self.lo, self.calls = lo, 0

    def quantiles(self, n, gen, device):
        return self.lo + (1 - self.lo) * torch.rand(n, generator=gen, device=device)

    def update(self, step, loss_v):
        self.calls += 1

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]

    def stats(self):
        return {"noisy_half_calls": self.calls}


@pieces.register_piece("v_time", "noisy_half", params=NoisyHalf)
def _noisy_half(ctx, params: NoisyHalf):
    return _NoisyHalfSampler(params.lo)


@pieces.register_piece("v_time", "duck_typed")
def _duck_typed(ctx, params: None):
    return object()  # has no VTimePiece hooks


def test_v_time_piece_base_draws_the_base_v_rows():
    """A piece that overrides nothing samples t and r exactly as a run without a piece."""
    from dynamics.meanflow.samplers import build_sampler

    sampler = build_sampler(preset("digits").objective.sampler)
    without = sampler.sample(64, 48, torch.Generator().manual_seed(3), torch.device("cpu"))
    with_base = sampler.sample(64, 48, torch.Generator().manual_seed(3), torch.device("cpu"),
                               pieces.VTimePiece().quantiles)
    for a, b in zip(without, with_base):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_v_time_piece_must_subclass_the_base():
    from dynamics.curriculum import build_v_time

    cfg = apply_overrides(preset("smoke"), ["objective.v_sampling=duck_typed"])
    with pytest.raises(pieces.PieceError, match="objective.v_sampling='duck_typed' returned a 'object'; a v_time piece "
                                                 "must subclass dynamics.pieces.VTimePiece"):
        build_v_time(cfg)


@dataclass
class Shrink:
    factor: float = 0.5


@pieces.register_piece("target", "shrink_u", params=Shrink)
def _shrink_u(ctx, params: Shrink):
    """u_tgt on the u rows scaled by `factor`; the v rows keep v."""
    return lambda u_tgt, inputs: torch.where(inputs.is_v[:, None], u_tgt, params.factor * u_tgt)


def test_v_time_and_target_pieces_train_resume_and_transform(tmp_path, kill_after):
    from dynamics.train import Trainer

    overrides = ["objective.v_sampling=noisy_half", "objective.v_sampling_params.lo=0.8",
                 "objective.target_transform=shrink_u", "objective.target_transform_params.factor=0.25",
                 "train.epochs=1.2", "train.log_every=4", "train.ckpt_every=8"]  # 12 steps
    cfg = apply_overrides(preset("smoke"), overrides)
    assert cfg.modules == [__name__]
    with pytest.raises(ConfigError, match=r"objective.v_sampling_params.lo=1.5 must be in \[0, 1\)"):
        apply_overrides(preset("smoke"), ["objective.v_sampling=noisy_half", "objective.v_sampling_params.lo=1.5"])
    with pytest.raises(ConfigError, match="objective.v_sampling='nope' is not a registered v_time piece; allowed: "
                                          "base, dtd"):
        apply_overrides(preset("smoke"), ["objective.v_sampling=nope"])

    # the v rows' t are the phase sampler's v-row quantiles in [0.8, 1]; the u rows' target is shrunk
    trainer = Trainer(cfg, tmp_path / "run")
    loss_fn = trainer.objective(0)
    base = build_objective(apply_overrides(preset("smoke"), []), PhaseConfig(epochs=1.0))
    x, _ = trainer.dataset.batch(0, 256, 0)
    d = loss_fn.draw(x, None, torch.Generator().manual_seed(3))
    q_low = float(loss_fn.sampler.v_quantile(torch.tensor([0.8])))
    assert d.n_v > 0 and bool((d.t[:d.n_v] >= q_low - 1e-6).all())
    shrunk = loss_fn.loss_at(trainer.model, x, d).target
    plain = base.loss_at(trainer.model, x, d).target
    assert torch.allclose(shrunk[:d.n_v], plain[:d.n_v]) and torch.allclose(shrunk[d.n_v:], 0.25 * plain[d.n_v:])

    # its state is checkpointed and resumed; its stats are logged
    kill_after(trainer, 8)
    resumed = Trainer(cfg, tmp_path / "run")
    resumed.restore()
    assert resumed.v_time.calls == 8
    resumed.run()
    assert resumed.v_time.calls == 12
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["noisy_half_calls"] for r in rows] == [4, 8, 12]
