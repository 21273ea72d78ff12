"""Task affinity (TAS): task strings, the accumulated TAS against its definition, the lookahead against a hand
computation, the frozen target, cosine, the CLI, O3's study TAS and the sample-size benchmark."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dynamics import study_tas
from dynamics.affinity import (
    METHODS,
    SAMPLES_BY_SCALE,
    AffinityError,
    Method,
    accumulated_gradients,
    accumulated_matrix,
    affinity_matrix,
    cosine_matrix,
    lookahead_matrix,
    parse_task,
    parse_tasks,
    task_affinity,
    tasks_from_specs,
)
from dynamics.cli import main as cli_main
from dynamics.config import TAS_METHODS, apply_overrides, preset
from dynamics.launch import launch
from dynamics.meanflow.path import conditional_velocity, interpolate, per_sample_sq_norm
from dynamics.meanflow.target import mean_flow_target
from dynamics.meanflow.tasks import TaskSpec, dt_bin
from dynamics.models.mlp import MLP
from dynamics.rng import stream_seed
from dynamics.study_tas import DEFAULT_VARIANT, STUDY_VARIANTS, study_affinity
from dynamics.train import train
from experiments.registry import get_study

O3_TASKS = "v,u[0.1,0.3],u[0.3,0.5],u[0.5,0.7],u[0.7,0.9]"


def _smoke(*overrides: str):
    return apply_overrides(preset("smoke"), ["train.threads=1", *overrides])


def _tiny(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP(width=16, depth=2)


def _batch(n: int = 64) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(1)) * 0.5 + 0.3


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is ~100x faster than two contending ones on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tas") / "run"
    train(_smoke("train.epochs=2"), run_dir)
    return run_dir


@pytest.fixture(scope="module")
def o3_store(tmp_path_factory):
    """O3's smoke runs (its two warm-ups, 40 steps each) in a store; the random init needs no run."""
    root = tmp_path_factory.mktemp("o3")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    launch([get_study("o3-task-affinity")], "smoke", executor="debug", root=root, progress=False, say=lambda s: None)
    torch.set_num_threads(threads)
    return root


def _flat_grad(loss, params):
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])


def test_accumulated_tas_is_the_cosine_of_the_full_gradients():
    """C[i, j] = cos(G_i, G_j), G_i = grad of task i's mean loss over all N rows at once, every task with the
    same noise and its (t, r) from its own sampler on one generator state; chunks of 8 give the same numbers."""
    cfg = _smoke("objective.beta=progressive")
    tasks = tasks_from_specs(cfg, ["v", "u[0.1,0.3]", "u[0.7,0.9]", "both"])
    model, x, seed = _tiny(), _batch(44), 321
    params = list(model.parameters())
    e = torch.randn(x.shape, generator=torch.Generator().manual_seed(stream_seed(seed, "tas", 1)))  # shared
    grads = []
    for task in tasks:
        fn = task.loss_fn
        n_v = round(len(x) * fn.ratio_r_eq_t)
        t, r = fn.sampler.sample(len(x), n_v, torch.Generator().manual_seed(stream_seed(seed, "tas", 0)), x.device)
        grads.append(_flat_grad(fn.loss(model, x, e, t, r, None, n_v=n_v).loss, params).double())
    g = torch.stack(grads)
    expected = (g @ g.T) / torch.outer(g.norm(dim=1), g.norm(dim=1))
    whole = accumulated_matrix(model, tasks, x, None, seed)
    chunked = accumulated_matrix(model, tasks, x, None, seed, chunk=8)  # 44 = 5 x 8 + 4; `both` splits v | u
    assert torch.allclose(whole, expected, rtol=0, atol=1e-6) and torch.allclose(chunked, expected, rtol=0, atol=1e-6)
    assert torch.allclose(accumulated_gradients(model, tasks, x, None, seed, chunk=8).double(), g, rtol=1e-4,
                          atol=1e-7)
    assert not torch.allclose(whole, torch.ones_like(whole), atol=1e-3)  # the tasks do differ
    assert all(p.grad is None for p in params)  # nothing left behind


def test_accumulated_tas_of_identical_tasks_is_one():
    """Two tasks with one sampler get the same draws whatever task sits between them: identical gradients."""
    cfg = _smoke()
    same = dt_bin(0.3, 0.5)
    tasks = tasks_from_specs(cfg, [TaskSpec("a", "u", same), TaskSpec("v", "v"), TaskSpec("b", "u", same)])
    g = accumulated_gradients(_tiny(), tasks, _batch(40), None, 9, chunk=16)
    assert torch.equal(g[0], g[2]) and not torch.equal(g[0], g[1])
    c = accumulated_matrix(_tiny(), tasks, _batch(40), None, 9, chunk=16)
    assert c[0, 2].item() == pytest.approx(1.0, abs=1e-12) and torch.equal(c[0, 2], c[0, 0])


def test_task_strings():
    assert parse_task("v") == TaskSpec("v", "v")
    assert parse_task(" u ") == TaskSpec("u", "u")
    assert parse_task("both") == TaskSpec("both", "both")
    assert parse_task("u[0.10, 0.3]") == TaskSpec("u[0.1,0.3]", "u", dt_bin(0.1, 0.3))
    assert [s.name for s in parse_tasks(O3_TASKS)] == [t.name for t in get_study("o3-task-affinity").tasks]
    for bad, says in [("w", "'w' is not allowed"), ("u[0.5,0.2]", "0 <= a <= b <= 1"),
                      ("v[0.1,0.3]", "only u takes a dt bin"), ("u[a,b]", "must be numbers"),
                      ("u[0.1,0.3", "not allowed"), ("", "no task given")]:
        with pytest.raises(AffinityError, match=says.replace("[", r"\[")):
            parse_tasks(bad)
    with pytest.raises(AffinityError, match="given twice"):
        tasks_from_specs(_smoke(), ["v", "u", "v"])


@pytest.mark.parametrize("p", [0.5, 1.0])
def test_lookahead_equals_hand_computed_sgd_step(p):
    """theta' = theta - lr grad L_i, then Z(i -> j) = 1 - L_j(theta') / L_j(theta), with the same draws; by
    default L_j(theta') keeps theta's adaptive normaliser (D + c)^p, recompute_weight=True recomputes it."""
    cfg = _smoke(f"objective.adaptive_p={p}", "objective.beta=progressive")
    tasks = tasks_from_specs(cfg, ["v", "u[0.1,0.3]", "both"])
    model, x, lr, seed, step = _tiny(), _batch(), 0.05, 123, 4
    theta = copy.deepcopy(model.state_dict())
    z = lookahead_matrix(model, tasks, x, None, seed, lr=lr, step=step)
    z_recomputed = lookahead_matrix(model, tasks, x, None, seed, lr=lr, step=step, recompute_weight=True)
    assert all(torch.equal(theta[k], v) for k, v in model.state_dict().items())  # weights restored

    def output(task, net):
        gen = torch.Generator().manual_seed(seed)
        t, r, e, _, n_v = task.loss_fn.draw(x, None, gen)
        return task.loss_fn.loss(net, x, e, t, r, None, n_v=n_v, step=step, gen=gen)

    for i, task_i in enumerate(tasks):
        grads = torch.autograd.grad(output(task_i, model).loss, list(model.parameters()))
        stepped = copy.deepcopy(model)
        with torch.no_grad():
            for param, g in zip(stepped.parameters(), grads):
                param -= lr * g
        for j, task_j in enumerate(tasks):
            before, after = output(task_j, model), output(task_j, stepped)
            norm = (before.D + task_j.loss_fn.c) ** p
            expected = 1 - (before.weight * after.D / norm).mean().item() / before.loss.item()
            assert z[i, j].item() == pytest.approx(expected, rel=1e-5, abs=1e-7), (i, j)
            expected = 1 - after.loss.item() / before.loss.item()
            assert z_recomputed[i, j].item() == pytest.approx(expected, rel=1e-5, abs=1e-7), (i, j)


def test_self_affinity_positive_and_identical_tasks_equal():
    cfg = _smoke()
    same = dt_bin(0.1, 0.3)
    tasks = tasks_from_specs(cfg, [TaskSpec("a", "u", same), TaskSpec("b", "u", same), TaskSpec("v", "v")])
    model, x = _tiny(), _batch()
    for optimizer in (None, torch.optim.Adam(model.parameters(), lr=1e-3)):
        z = lookahead_matrix(model, tasks, x, None, 7, lr=1e-3, optimizer=optimizer)
        assert z[0, 0] > 0 and z[2, 2] > 0  # a small step on a task lowers its own loss
        assert z[0, 1] == z[0, 0] and z[1, 0] == z[0, 0] and z[1, 1] == z[0, 0]  # identical tasks, identical Z


def test_adam_lookahead_uses_a_copy_of_the_optimiser_state():
    cfg = _smoke()
    tasks = tasks_from_specs(cfg, ["v", "u"])
    model, x = _tiny(), _batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.9, 0.95))
    for _ in range(3):  # give Adam some state
        opt.zero_grad()
        model(x, torch.zeros(len(x)), torch.ones(len(x))).pow(2).mean().backward()
        opt.step()
    state = copy.deepcopy(opt.state_dict())
    z = lookahead_matrix(model, tasks, x, None, 3, lr=1e-2, optimizer=opt, recompute_weight=True)
    after = opt.state_dict()
    for k, v in state["state"].items():
        assert all(torch.equal(v[n], after["state"][k][n]) for n in v)  # the run's optimiser is untouched
    # the same as stepping a copy of (model, optimiser) by hand
    twin = copy.deepcopy(model)
    twin_opt = torch.optim.Adam(twin.parameters(), lr=1e-2, betas=(0.9, 0.95))
    twin_opt.load_state_dict(copy.deepcopy(state))
    gen = torch.Generator().manual_seed(3)
    t, r, e, _, n_v = tasks[0].loss_fn.draw(x, None, gen)
    tasks[0].loss_fn.loss(twin, x, e, t, r, None, n_v=n_v, gen=gen).loss.backward()
    twin_opt.step()
    with torch.no_grad():
        gen = torch.Generator().manual_seed(3)
        t, r, e, _, n_v = tasks[0].loss_fn.draw(x, None, gen)
        before = tasks[0].loss_fn.loss(model, x, e, t, r, None, n_v=n_v).loss.item()
        after_step = tasks[0].loss_fn.loss(twin, x, e, t, r, None, n_v=n_v).loss.item()
    assert z[0, 0].item() == pytest.approx(1 - after_step / before, rel=1e-5)


@pytest.mark.parametrize("jvp", ["rows", "full"])
def test_frozen_target_equals_the_target_from_theta(jvp):
    cfg = _smoke(f"objective.jvp={jvp}")
    tasks = tasks_from_specs(cfg, ["u[0.1,0.3]", "u[0.5,0.7]"])
    model, x, lr, seed = _tiny(), _batch(), 0.1, 11
    on = lookahead_matrix(model, tasks, x, None, seed, lr=lr)
    off = lookahead_matrix(model, tasks, x, None, seed, lr=lr, recompute_target=False)
    assert not torch.allclose(on, off, rtol=1e-3, atol=0)  # the target moves with theta

    task, other = tasks
    gen = torch.Generator().manual_seed(seed)
    t, r, e, _, n_v = task.loss_fn.draw(x, None, gen)
    stepped = copy.deepcopy(model)
    grads = torch.autograd.grad(task.loss_fn.loss(model, x, e, t, r, None, n_v=n_v).loss, list(model.parameters()))
    with torch.no_grad():
        for p, g in zip(stepped.parameters(), grads):
            p -= lr * g
    for j, tj in enumerate(tasks):
        gen = torch.Generator().manual_seed(seed)
        t, r, e, _, n_v = tj.loss_fn.draw(x, None, gen)
        z_t, v = interpolate(x, e, t), conditional_velocity(x, e)
        _, u_tgt = mean_flow_target(model, z_t, r, t, v, None, n_v=n_v)  # the target at theta
        with torch.no_grad():
            before = tj.loss_fn.loss(model, x, e, t, r, None, n_v=n_v)
            D = per_sample_sq_norm(stepped(z_t, r, t) - u_tgt)
            after = (D / (before.D + tj.loss_fn.c) ** tj.loss_fn.p).mean().item()
        assert off[0, j].item() == pytest.approx(1 - after / before.loss.item(), rel=1e-5, abs=1e-7)


def test_cosine_of_a_task_with_itself_is_one():
    cfg = _smoke()
    tasks = tasks_from_specs(cfg, ["v", "u[0.1,0.3]", "u[0.7,0.9]"])
    c = cosine_matrix(_tiny(), tasks, _batch(), None, 5)
    assert torch.allclose(c.diagonal(), torch.ones(3, dtype=c.dtype), atol=1e-6)
    assert torch.allclose(c, c.T) and (c.abs() <= 1 + 1e-6).all()


def test_task_affinity_frame_deterministic_and_train_window(smoke_run):
    kw = dict(method="lookahead", batches=2, batch_size=64)
    a = task_affinity(smoke_run, "v,u[0.1,0.3]", **kw)
    b = task_affinity(smoke_run, "v,u[0.1,0.3]", **kw)
    pd.testing.assert_frame_equal(a, b)
    assert list(a.columns) == ["source", "target", "method", "mean", "std", "n"] and (a["n"] == 2).all()
    assert a.attrs["step"] == 20 and a.attrs["optimizer"] == "sgd" and a.attrs["recompute_target"]
    assert list(affinity_matrix(a).index) == ["v", "u[0.1,0.3]"]
    fresh = task_affinity(_smoke("train.epochs=4"), ["v", "u"], train_window=3, **kw)
    assert fresh.attrs["step"] == 0 and fresh["mean"].notna().all()
    with pytest.raises(AffinityError, match="past the run's 20 steps"):
        task_affinity(smoke_run, "v", train_window=5, batches=3)
    sets = task_affinity(smoke_run, "v,u[0.1,0.3]", batches=3, samples=40, batch_size=16)  # 3 disjoint sample sets
    assert sets.attrs["method"] == "accumulated" and (sets["n"] == 3).all() and (sets["std"] > 1e-9).sum() == 2
    with pytest.raises(AffinityError, match="method='dot'"):
        task_affinity(smoke_run, "v", method="dot")


def test_a_method_is_one_entry_of_the_registry(monkeypatch):
    """task_affinity runs any registered Method once per batch, with that batch's draw seed, and records the
    settings the method names; the built-in methods are the CLI's choices."""
    assert tuple(METHODS) == TAS_METHODS
    seeds = []

    def ones(model, tasks, x, y, draw_seed, step, settings):
        seeds.append(draw_seed)
        return torch.ones(len(tasks), len(tasks), dtype=torch.float64)

    monkeypatch.setitem(METHODS, "ones", Method("ones", ones, lambda s: {"lr": s.lr}))
    frame = task_affinity(_smoke(), "v,u", method="ones", batches=3, batch_size=16, lr=0.5)
    assert (frame["mean"] == 1).all() and (frame["n"] == 3).all() and len(set(seeds)) == 3
    assert frame.attrs["method"] == "ones" and frame.attrs["lr"] == 0.5 and "optimizer" not in frame.attrs


def test_cli_run_dir_preset_and_bad_task(smoke_run, tmp_path, capsys):
    out = tmp_path / "tas.csv"
    rc = cli_main(["tas", str(smoke_run), "--tasks", "v,u[0.1,0.3],u[0.7,0.9]", "--batches", "2",
                   "--batch-size", "64", "--method", "lookahead", "--out", str(out), "--quiet"])
    assert rc == 0
    frame = pd.read_csv(out)
    assert len(frame) == 9 and {"source", "target", "method", "mean", "std", "n", "lr"} <= set(frame.columns)
    assert "u[0.7,0.9]" in capsys.readouterr().out
    rc = cli_main(["tas", "--preset", "smoke", "train.seed=3", "--tasks", "v,u", "--method", "cosine",
                   "--batches", "1", "--quiet"])
    assert rc == 0
    # the default is the authors' TAS, over the scale's N (or --samples) in chunks of --batch-size
    rc = cli_main(["tas", "--preset", "smoke", "--tasks", "v,u", "--samples", "48", "--batch-size", "16",
                   "--out", str(out), "--quiet"])
    frame = pd.read_csv(out)
    assert rc == 0 and set(frame["method"]) == {"accumulated"} and set(frame["samples"]) == {48}
    assert set(frame["chunk"]) == {16} and set(frame["n"]) == {1}
    assert task_affinity(_smoke(), "v", batch_size=64).attrs["samples"] == SAMPLES_BY_SCALE["smoke"]
    assert cli_main(["tas", str(smoke_run), "--tasks", "v,u[0.9,0.1]"]) == 2
    assert "task 'u[0.9,0.1]': the bin needs 0 <= a <= b <= 1" in capsys.readouterr().err


def test_cli_study_needs_the_runs(tmp_path, capsys):
    args = ["tas", "--study", "o3-task-affinity", "--scale", "smoke", "--results", str(tmp_path), "--quiet"]
    assert cli_main(args) == 2
    assert "run `dynamics run o3-task-affinity --scale smoke` first" in capsys.readouterr().err


def test_cli_study_writes_tas_csv(o3_store, capsys, monkeypatch):
    tmp_path = o3_store
    args = ["tas", "--study", "o3-task-affinity", "--scale", "smoke", "--results", str(tmp_path), "--batches", "1",
            "--batch-size", "32", "--samples", "64", "--quiet"]
    assert cli_main(args) == 0
    frame = pd.read_csv(tmp_path / "smoke" / "o3-task-affinity" / "tas.csv")
    assert {"init", "seed", "source", "target", "method", "value"} <= set(frame.columns)
    # 3 inits x (accumulated TAS + 3 lookahead variants x {recomputed, held} target + cosine) x 25 pairs
    assert list(dict.fromkeys(frame["init"])) == ["random", "v-only", "u-small"] and len(frame) == 3 * 8 * 25
    assert set(frame["variant"]) == set(STUDY_VARIANTS)
    default = frame[frame["variant"] == DEFAULT_VARIANT]
    assert set(default["method"]) == {"accumulated"} and set(default["samples"]) == {64}
    assert set(default["target_mode"]) == {"-"} and (default["value"].abs() <= 1 + 1e-9).all()
    held = frame[frame["target_mode"] == "held"]
    assert set(held["variant"]) == {v for v, s in STUDY_VARIANTS.items() if s["method"] == "lookahead"}
    assert (frame.groupby("init")["step"].first() > 0).to_dict() == {"random": False, "u-small": True, "v-only": True}
    # the units in two processes (as `dynamics reproduce` runs them) give the same table
    study_affinity(get_study("o3-task-affinity"), "smoke", tmp_path, batches=1, batch_size=32, samples=64, jobs=2)
    parallel = pd.read_csv(tmp_path / "smoke" / "o3-task-affinity" / "tas.csv")
    pd.testing.assert_frame_equal(parallel, frame, check_exact=False, rtol=1e-5)  # one thread per worker
    # every (init, seed) unit was saved as it finished: a repeated call measures nothing and writes the same table,
    # and a unit whose file is lost (a killed run) is the only one measured again
    units = sorted((tmp_path / "smoke" / "o3-task-affinity" / study_tas.UNITS_DIR).glob("*.pkl"))
    assert len(units) == 2 * 3 * frame["seed"].nunique()  # two settings (the CLI's, the call's) x 3 inits x seeds
    measured = []
    real = study_tas.task_affinity
    monkeypatch.setattr(study_tas, "task_affinity", lambda *a, **k: measured.append(1) or real(*a, **k))
    again = study_affinity(get_study("o3-task-affinity"), "smoke", tmp_path, batches=1, batch_size=32, samples=64)
    assert measured == [] and not again.empty
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "smoke" / "o3-task-affinity" / "tas.csv"), parallel)
    lost = [u for u in units if u.name.startswith("v-only-s0-")]  # that unit under both settings
    for u in lost:
        u.unlink()
    study_affinity(get_study("o3-task-affinity"), "smoke", tmp_path, batches=1, batch_size=32, samples=64)
    assert len(measured) == 8  # that unit's accumulated TAS, 3 lookahead variants x 2 targets, cosine
    assert sum(u.exists() for u in lost) == 1  # saved again under the call's settings
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "smoke" / "o3-task-affinity" / "tas.csv"), parallel)
    # a unit's key names every variant's settings: another N is another unit
    n_units = len(list(units[0].parent.glob("*.pkl")))
    study_affinity(get_study("o3-task-affinity"), "smoke", tmp_path, batches=1, batch_size=32, samples=32,
                   variants=[DEFAULT_VARIANT])
    assert len(list(units[0].parent.glob("*.pkl"))) == n_units + 3
    # without --batches, the scale's STUDY_BATCHES (digits: 8), else the library's 16, for a per-batch variant;
    # one sample set of the scale's N for the accumulated TAS
    assert set(frame["n"]) == {1}
    monkeypatch.setitem(study_tas.STUDY_BATCHES, "smoke", 2)
    settings = study_tas.variant_settings("smoke", list(STUDY_VARIANTS))
    assert settings[DEFAULT_VARIANT]["batches"] == 1
    assert settings[DEFAULT_VARIANT]["samples"] == SAMPLES_BY_SCALE["smoke"]
    scaled = study_affinity(get_study("o3-task-affinity"), "smoke", tmp_path, batch_size=32,
                            variants=["b: grad step of equal length"])
    assert set(scaled["n"]) == {2} and study_tas.STUDY_BATCHES["digits"] == 8
    # key=value overrides as for `dynamics run`: a grid with overrides has other run directories
    assert cli_main(args + ["train.lr=0.002"]) == 2
    assert "run `dynamics run o3-task-affinity --scale smoke` first" in capsys.readouterr().err
    assert cli_main(args + ["train.bogus=1"]) == 2
    assert "train.bogus" in capsys.readouterr().err


class _LinearInParams(torch.nn.Module):
    """u = W [z, t, t - r, 1]: linear in its parameters W, so every loss below is quadratic in W."""

    def __init__(self):
        super().__init__()
        self.W = torch.nn.Parameter(torch.randn(2, 5, generator=torch.Generator().manual_seed(0)) * 0.3)

    @staticmethod
    def features(z, r, t):
        return torch.cat([z, t[:, None], (t - r)[:, None], torch.ones_like(t)[:, None]], dim=1)

    def forward(self, z, r, t, y=None):
        return self.features(z, r, t) @ self.W.T


@pytest.mark.parametrize("optimizer", ["sgd", "sgd-length"])
def test_lookahead_on_a_model_linear_in_its_parameters(optimizer):
    """The lookahead against an independent closed-form computation. With the target held at
    theta the targets are fixed, each L_j(W) = mean_n w_n ||W phi_n - y_n||^2 / (D_n + c)^p is a quadratic
    in W, its gradient is written out by hand, and a small gradient step must lower the task's own loss."""
    cfg = _smoke("objective.adaptive_p=1.0")
    tasks = tasks_from_specs(cfg, ["v", "u[0.1,0.3]", "u[0.7,0.9]"])
    model, x, seed, lr = _LinearInParams(), _batch(), 11, 1e-3
    length = 0.01
    z = lookahead_matrix(model, tasks, x, None, seed, lr=lr, recompute_target=False,
                         step_length=length if optimizer == "sgd-length" else None)

    W = model.W.detach().double()
    pieces = []
    for task in tasks:
        gen = torch.Generator().manual_seed(seed)
        t, r, e, _, n_v = task.loss_fn.draw(x, None, gen)
        out = task.loss_fn.loss(model, x, e, t, r, None, n_v=n_v, gen=gen)
        zt = interpolate(x, e, t)
        phi = _LinearInParams.features(zt, r, t).double()
        coef = (out.weight.double() / (out.D.double() + task.loss_fn.c) ** task.loss_fn.p)  # fixed weights
        pieces.append((phi, out.target.double(), coef))

    def loss(j, W_):
        phi, y, coef = pieces[j]
        return float((coef * ((phi @ W_.T - y) ** 2).sum(1)).mean())

    def grad(j, W_):
        phi, y, coef = pieces[j]
        resid = phi @ W_.T - y  # n x 2
        return 2 * (coef[:, None] * resid).T @ phi / len(phi)  # d/dW of mean(coef ||W phi - y||^2)

    for i in range(len(tasks)):
        g = grad(i, W)
        step = length * g / g.norm() if optimizer == "sgd-length" else lr * g
        W_i = W - step
        for j in range(len(tasks)):
            expected = 1 - loss(j, W_i) / loss(j, W)
            assert z[i, j].item() == pytest.approx(expected, rel=1e-4, abs=1e-7), (i, j)
        assert z[i, i] > 0  # a small descent step on a quadratic lowers its own loss


def _benchmark():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "tas_sample_size.py"
    spec = importlib.util.spec_from_file_location("tas_sample_size", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("tas_sample_size", module)
    spec.loader.exec_module(module)
    return module


def test_sample_size_summary_by_hand():
    """Spread = the largest std over sets of an off-diagonal entry; the ranking is the inits' order by O3's
    statistic averaged over seeds, per set; the chosen N is the smallest with both."""
    bench = _benchmark()
    names = ["v", "u[0.1,0.3]", "u[0.5,0.7]", "u[0.7,0.9]"]

    def matrices(level: float, noise: float, sets: int = 5) -> np.ndarray:
        m = np.full((sets, 4, 4), level)
        m[:, 0, 1] = m[:, 1, 0] = level + noise * np.arange(sets)  # not an O3 pair: spread only
        return m

    values = {}
    for n, noise in ((16, 0.05), (64, 0.01)):  # std of 0, 1, .., 4 times noise: 0.079 and 0.016
        for seed in (0, 1):
            values[n, "random", seed] = matrices(0.1, noise)
            values[n, "u-small", seed] = matrices(0.5, noise)
    values[16, "u-small", 1][2, 0, 3] = -4.0  # set 2's seed mean puts random first at N = 16
    table = bench.summarise(values, names)
    assert table["max_std"].tolist() == pytest.approx([np.std([0.5, 0.5, -4, 0.5, 0.5], ddof=1),
                                                       0.01 * np.std(range(5), ddof=1)])
    assert table["agree"].tolist() == [False, True] and table["seeds_agree"].tolist() == ["1/2", "2/2"]
    assert bench.chosen_n(table) == 64 and bench.chosen_n(table[table["N"] == 16]) is None


def test_sample_size_benchmark_on_o3_smoke_store(o3_store, capsys):
    bench = _benchmark()
    assert bench.main(["--scale", "smoke", "--results", str(o3_store), "--ns", "16,32", "--sets", "3",
                       "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "chosen N:" in out and " > " in out  # a ranking of the inits
    values, names = bench.measure("smoke", o3_store, [16], sets=3, batch_size=16, say=lambda s: None)
    assert sorted(values) == [(16, init, 0) for init in ("random", "u-small", "v-only")]
    assert all(v.shape == (3, 5, 5) for v in values.values())
