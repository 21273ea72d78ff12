"""The study registry: every grid at every scale, checked against docs/design.md's table of studies, and
the registration checks of every @register field."""

import sys
import textwrap

import pytest

from dynamics.config import METHODS, SCALES, preset
from dynamics.meanflow.tasks import TaskSpec
from experiments import registry
from experiments.o1_contaminated_v import STEPS_PER_EPOCH as CONTAMINATION_STEPS_PER_EPOCH
from experiments.registry import (
    LONG_RUN_STEPS_PER_EPOCH,
    PAPER_METHOD,
    SCALE_SETTINGS,
    ExtraFinding,
    Finding,
    Metric,
    ParentRef,
    Reference,
    RegistryError,
    ResolvedRun,
    RunSpec,
    Study,
    all_studies,
    base_config,
    continue_from,
    get_study,
    joint,
    paper_method,
    register,
    register_from_module,
    u_only,
    v_only,
)

STUDIES = ("o1-v-first", "o1-fixed-budget", "o1-contaminated-v", "o2-interval-bins", "o3-task-affinity", "main",
           "k-schedule", "v-quality", "convergence", "cfg-robustness")


def by_key(study: str, scale: str, seeds: int = 1) -> dict:
    return {r.key: r for r in get_study(study).runs(scale, seeds)}


def phases(run: RunSpec | ResolvedRun) -> list[tuple]:
    return [(p.epochs, p.terms) for p in run.config.phases]


def test_every_study_builds_at_every_scale():
    assert [s.name for s in all_studies()][: len(STUDIES)] == list(STUDIES)
    for study in all_studies():
        assert study.metric.description and study.finding.claim and study.finding.holds_if
        for scale in SCALES:
            runs = study.runs(scale)
            keys = [r.key for r in runs]
            assert len(keys) == len(set(keys))
            if scale in study.unsupported:
                assert runs == []
                continue
            assert runs, (study.name, scale)
            assert len(runs) % study.default_seeds(scale) == 0
            done = set()
            for r in runs:  # parents first, every config valid and named by its hash
                assert set(r.depends_on) <= done
                done.add(r.key)
                owner = f"{r.owner}/{r.owner_key}" if r.owner else f"{study.name}/{r.key}"  # shared: the owner's
                assert r.config.scale == scale and r.hash and r.config.name == owner
                # calibration runs the scale's preset as it is; the 240-epoch joint studies their own epoch length
                # where the scale names one (and the studies sharing their runs, through them), contaminated v its
                # own at digits; every other study uses the scale's epoch
                own = {"main": LONG_RUN_STEPS_PER_EPOCH, "k-schedule": LONG_RUN_STEPS_PER_EPOCH,
                       "o1-contaminated-v": CONTAMINATION_STEPS_PER_EPOCH}.get(r.owner or study.name, {})
                expected = (preset(scale).train.steps_per_epoch if study.name == "calibration"
                            else own.get(scale, SCALE_SETTINGS[scale].steps_per_epoch))
                assert r.config.train.steps_per_epoch == expected
                assert r.tags["seed"] == r.config.train.seed


def test_seeds_and_default_counts():
    runs = get_study("o1-v-first").runs("smoke", seeds=3)
    assert len(runs) == 18  # 3 seeds x (1 parent + 5 fine-tunes)
    assert sorted({r.config.train.seed for r in runs}) == [0, 1, 2]
    parents = {r.hash for r in runs if r.key.startswith("v-pretrain")}
    assert len(parents) == 3  # one shared pre-training run per seed, not one per grid point
    child = next(r for r in runs if r.key == "E_v=5/s2")
    assert child.depends_on == ["v-pretrain/s2"]
    # cpu: the trend studies run 2 seeds, the paired comparisons the scale's 3 (scales.TREND_SEEDS)
    # main at cpu: 6 methods and the dtd-pace ablation x 3 seeds
    assert len(get_study("o1-v-first").runs("cpu")) == 12 and len(get_study("main").runs("cpu")) == 21
    assert len(get_study("o1-v-first").runs("cpu", seeds=5)) == 30


def test_o1_v_first_grid():
    for scale in SCALES:
        runs = by_key("o1-v-first", scale)
        parent = runs["v-pretrain/s0"]
        assert phases(parent) == [(20.0, "v")]
        assert parent.config.train.keep_epochs == [5.0, 10.0, 15.0, 20.0]
        for e_v in (0, 5, 10, 15, 20):
            run = runs[f"E_v={e_v}/s0"]
            assert run.tags["E_v"] == e_v
            assert run.config.train.lr_schedule == "constant"  # shared prefix: no run-length-dependent decay
            if e_v == 0:
                assert phases(run) == [(60.0, "u")] and run.depends_on == [] and run.config.init.run_dir == ""
            else:
                assert phases(run) == [(float(e_v), "v"), (60.0, "u")]
                assert run.depends_on == ["v-pretrain/s0"]
                assert run.config.init.run_dir == f"{scale}/o1-v-first/{parent.hash}"  # relative to the root
                assert run.config.init.epoch == e_v and run.config.init.load_optimizer
        assert len(runs) == 6


def test_o1_fixed_budget_grid():
    runs = by_key("o1-fixed-budget", "cpu")
    parent = runs["v-pretrain/s0"]
    assert phases(parent) == [(40.0, "v")] and parent.config.train.keep_epochs == [10.0, 20.0, 30.0, 40.0]
    for e_v in (0, 10, 20, 30, 40):
        run = runs[f"E_v={e_v}/s0"]
        assert sum(p.epochs for p in run.config.phases) == 80
        assert phases(run)[-1] == (80.0 - e_v, "u")
        assert (run.config.init.epoch == e_v) if e_v else (run.config.init.run_dir == "")


def test_o1_contaminated_grid():
    """Literal noise at the paper's k on B/4; at smaller d the k that gives B/4's noise-to-signal ratio
    (k sqrt(4096 / d)); the normalised form at the paper's k as written."""
    for scale, factor in (("b4", 1.0), ("digits", 8.0), ("cpu", 4096**0.5 / 2**0.5)):
        runs = get_study("o1-contaminated-v").runs(scale, seeds=1)
        literal = [r for r in runs if r.tags["form"] == "literal"]
        assert [r.tags["k"] for r in literal] == [0.0, 0.01, 0.03, 0.1, 0.3]
        assert [r.config.objective.contamination_k for r in literal] == pytest.approx(
            [k * factor for k in (0.0, 0.01, 0.03, 0.1, 0.3)])
        assert [r.config.objective.contamination_k * r.tags["dim"] ** 0.5 for r in literal] == pytest.approx(
            [0.0, 0.64, 1.92, 6.4, 19.2])  # B/4's noise-to-signal ratios at every scale
        normalised = [r for r in runs if r.tags["form"] == "normalised"]  # trained at every scale
        assert [(r.config.objective.contamination_k, r.config.objective.contamination_form) for r in normalised] == (
            [(0.03, "normalised"), (0.3, "normalised")])
        assert all(phases(r) == [(80.0, "both")] and r.config.objective.beta == "none" for r in runs)


def test_o2_interval_bins_grid():
    runs = by_key("o2-interval-bins", "cpu")
    parent = runs["v-pretrain/s0"]
    assert phases(parent) == [(40.0, "v")] and parent.config.train.keep_epochs == [40.0]
    children = [r for r in runs.values() if r.tags.get("role") == "fine-tune"]
    assert len(children) == 8
    bins = {(0.1, 0.3), (0.3, 0.5), (0.5, 0.7), (0.7, 0.9)}
    for init in ("random", "v-only"):
        mine = [r for r in children if r.tags["init"] == init]
        got = set()
        for r in mine:
            sampler = r.config.phases[-1].sampler
            assert sampler.kind == "dt_bin" and r.config.phases[-1].terms == "u" and r.config.phases[-1].epochs == 40
            got.add((sampler.dt_min, sampler.dt_max))
            assert r.tags["bin"] == f"[{sampler.dt_min:g},{sampler.dt_max:g}]"
            assert r.config.eval.nfe_v == [32]
            if init == "random":
                assert len(r.config.phases) == 1 and r.depends_on == []
            else:
                assert phases(r)[0] == (40.0, "v") and r.config.init.epoch == 40 and r.depends_on
        assert got == bins
    assert get_study("o2-interval-bins").metric.sampler == "v" and get_study("o2-interval-bins").metric.nfe == (32,)


def test_o3_task_affinity_declares_inits_and_tasks():
    study = get_study("o3-task-affinity")
    runs = by_key("o3-task-affinity", "smoke")
    assert phases(runs["init=v-only/s0"]) == [(40.0, "v")]
    u_warm = runs["init=u[0.1,0.3]/s0"]
    assert phases(u_warm) == [(40.0, "u")]
    assert (u_warm.config.phases[0].sampler.dt_min, u_warm.config.phases[0].sampler.dt_max) == (0.1, 0.3)
    assert study.task_inits == {"random": None, "v-only": "init=v-only", "u-small": "init=u[0.1,0.3]"}
    assert [t.name for t in study.tasks] == ["v", "u[0.1,0.3]", "u[0.3,0.5]", "u[0.5,0.7]", "u[0.7,0.9]"]
    assert study.tasks[0].terms == "v" and all(t.terms == "u" and t.sampler.kind == "dt_bin" for t in study.tasks[1:])


def test_main_grid_methods():
    runs = get_study("main").runs("b4")
    assert [r.tags["method"] for r in runs] == list(METHODS)
    for r in runs:
        obj, method = r.config.objective, r.tags["method"]
        assert phases(r) == [(240.0, "both")]
        assert (obj.alpha == "minsnr") == ("minsnr" in method)
        assert (obj.v_sampling == "dtd") == ("dtd" in method)
        assert (obj.beta == "progressive") == method.endswith("lu")


def test_k_schedule_and_paper_methods():
    """Each study compares the paper's method for its result, the same at every scale."""
    assert PAPER_METHOD == {"k-schedule": "dtd-lu", "v-quality": "minsnr-lu", "convergence": "dtd-lu",
                            "cfg-robustness": "dtd-lu"}
    for scale in ("b4", "l2", "cpu"):
        runs = get_study("k-schedule").runs(scale, seeds=1)
        assert [r.config.objective.beta_k for r in runs] == [0.5, 1.0, 2.0]
        for r in runs:  # the paper's k = 1 value (10.20 at B/4) is its DTD + L_u row
            assert r.tags["method"] == "dtd-lu" and r.config.objective.beta == "progressive"
            assert r.config.objective.alpha == "none" and r.config.objective.v_sampling == "dtd"
        full = [r for r in get_study("v-quality").runs(scale, seeds=1) if r.tags["arm"] == "full"]
        assert [(r.config.objective.alpha, r.config.objective.v_sampling) for r in full] == [("minsnr", "base")]


def test_v_quality_and_convergence():
    vq = get_study("v-quality").runs("xl2")
    assert [r.tags["arm"] for r in vq] == ["vanilla", "full"]
    # at the end: v-quality's 32/64/128-NFE v (vanilla, a convergence arm too, evaluates them at its last step only)
    assert all(sorted(r.config.eval.nfe_v + r.config.eval.final_nfe_v) == [32, 64, 128] for r in vq)
    conv = get_study("convergence").runs("cpu", seeds=1)
    for r in conv:  # 2.5x, 2.3x, 2.1x = 96, 104.3, 114.3 epochs: each in its own 8-epoch segment
        assert r.config.eval.every_epochs == 8 and phases(r) == [(240.0, "both")]
        # the curve is 1-NFE at every evaluation; main's 2-NFE and the v samplers join at the last step
        assert r.config.train.keep_epochs == [] and r.config.eval.nfe == [1] and r.config.eval.nfe_v == []
        assert r.config.eval.final_nfe == [2] and 32 in r.config.eval.final_nfe_v
    assert {r.tags["method"] for r in conv} == {"vanilla", "dtd-lu"}


def test_overlapping_grids_share_main_runs():
    """v-quality, convergence and k-schedule's k = 1 are main's runs (same config and hash), trained once."""
    for scale in ("smoke", "cpu", "b4"):
        main = {r.key: r for r in get_study("main").runs(scale, seeds=2)}
        vq, conv = paper_method("v-quality"), paper_method("convergence")
        for name, key, method in (("v-quality", "arm=vanilla", "vanilla"), ("v-quality", "arm=full", vq),
                                  ("convergence", "arm=full", conv), ("k-schedule", "k=1", conv)):
            for seed in (0, 1):
                run = by_key(name, scale, seeds=2)[f"{key}/s{seed}"]
                owner = main[f"method={method}/s{seed}"]
                assert (run.owner, run.owner_key, run.hash) == ("main", owner.key, owner.hash)
                assert run.config.to_dict() == owner.config.to_dict() and run.tags["seed"] == seed
        vanilla = main["method=vanilla/s0"].config
        assert (vanilla.eval.nfe, vanilla.eval.nfe_v, vanilla.eval.every_epochs) == ([1], [], 8)  # the curve
        assert (vanilla.eval.final_nfe, vanilla.eval.final_nfe_v) == ([2], [32, 64, 128])  # main's, v-quality's
        assert main[f"method={vq}/s0"].config.eval.nfe_v == [32, 64, 128]
        assert main[f"method={conv}/s0"].config.eval.every_epochs == 8
        assert all(main[f"method={m}/s0"].config.train.keep_epochs == [] for m in ("vanilla", vq, conv))
        assert main["method=minsnr/s0"].config.eval.every_epochs == 0  # the others evaluate at the end only
    k2 = by_key("k-schedule", "cpu")["k=2/s0"]
    assert not k2.owner and k2.config.objective.beta_k == 2.0


def test_shared_run_must_exist_and_have_no_parents():
    from experiments.registry import shared

    def bad(key):
        return Study("bad-share", "q", Metric("m"), Finding("c", "h", "trend", "x"),
                     grid=lambda scale: [shared("o2-interval-bins", key, "a", {})])

    with pytest.raises(RegistryError, match="not a run of its own"):
        bad("no-such-run").runs("smoke")
    with pytest.raises(RegistryError, match="depends on other runs"):
        bad("init=v-only,bin=[0.1,0.3]").runs("smoke")

    def child_of_shared(scale):
        cfg = base_config(scale, shared_prefix=True)
        cfg.phases = [v_only(40), joint(1)]
        return [shared("o2-interval-bins", "v-pretrain", "p", {}), RunSpec("c", cfg, parent=ParentRef("p", 40))]

    def continue_shared(scale):
        p = shared("o2-interval-bins", "v-pretrain", "p", {})
        return [p, continue_from(p, "c", 40, [joint(1)])]

    with pytest.raises(RegistryError, match="a shared run"):
        Study("bad-chain", "q", Metric("m"), Finding("c", "h", "trend", "x"), grid=child_of_shared).runs("smoke")
    with pytest.raises(RegistryError, match="a shared run"):
        Study("bad-chain", "q", Metric("m"), Finding("c", "h", "trend", "x"), grid=continue_shared).runs("smoke")


def test_cfg_robustness_only_class_conditional():
    study = get_study("cfg-robustness")
    assert study.runs("smoke") == [] and study.runs("cpu") == []
    assert "class-conditional" in study.unsupported["cpu"]
    runs = study.runs("l2")
    assert len(runs) == 8
    settings = {(r.config.objective.guidance.w, r.config.objective.guidance.kappa) for r in runs}
    assert settings == {(1.0, 0.5), (0.5, 0.75), (1.0, 0.6), (0.2, 0.92)}
    assert {r.tags["w_eff"] for r in runs} == {2.0, 2.5}


def test_hashes_are_deterministic_and_root_independent():
    a = [r.hash for r in get_study("o1-v-first").runs("cpu")]
    b = [r.hash for r in get_study("o1-v-first").runs("cpu")]
    assert a == b and len(set(a)) == len(a)
    for r in get_study("o2-interval-bins").runs("cpu"):
        assert not r.config.init.run_dir.startswith("/")


def _toy_grid(lr: float):
    def grid(scale: str) -> list[RunSpec]:
        cfg = base_config(scale, shared_prefix=True)
        cfg.phases = [v_only(2)]
        cfg.train.lr = lr
        parent = RunSpec("parent", cfg)
        return [continue_from(parent, "child", 2, [joint(2)]), parent]  # out of order on purpose
    return grid


def test_continue_from_derives_the_prefix_and_the_kept_epochs():
    cfg = base_config("smoke", shared_prefix=True)
    cfg.phases = [v_only(3), joint(4)]
    parent = RunSpec("p", cfg)
    a = continue_from(parent, "a", 5, [u_only(2)], {"x": 1})
    b = continue_from(parent, "b", 3, [joint(1)])
    continue_from(parent, "c", 5, [joint(1)])  # the same epoch again: kept once
    assert phases(a) == [(3.0, "v"), (2.0, "both"), (2.0, "u")] and phases(b) == [(3.0, "v"), (1.0, "both")]
    assert a.parent == ParentRef("p", 5.0) and a.tags == {"x": 1} and a.config.train.keep_epochs == []
    assert parent.config.train.keep_epochs == [5.0, 3.0] and phases(parent) == [(3.0, "v"), (4.0, "both")]
    study = Study("toy-cont", "q", Metric("m"), Finding("c", "h", "trend", "x"), lambda scale: [parent, a])
    runs = {r.key: r for r in study.runs("smoke", seeds=2)}
    child = runs["a/s1"]
    assert child.parent == ParentRef("p/s1", 5.0) and child.depends_on == ["p/s1"]
    assert child.config.init.run_dir == f"smoke/toy-cont/{runs['p/s1'].hash}" and child.config.init.epoch == 5.0
    assert runs["a/s0"].config.init.run_dir == f"smoke/toy-cont/{runs['p/s0'].hash}"


def test_child_hash_follows_parent_config():
    def study(lr: float) -> Study:
        return Study("toy-dep", "q", Metric("m"), Finding("c", "h", "trend", "x"), _toy_grid(lr))

    one, two = study(1e-3).runs("smoke"), study(2e-3).runs("smoke")
    assert [r.key for r in one] == ["parent/s0", "child/s0"]  # parents first
    assert one[1].config.init.run_dir == f"smoke/toy-dep/{one[0].hash}"
    assert one[1].hash != two[1].hash  # the child's config names its parent's hash


def test_bad_grids_and_names_fail_clearly():
    def missing(scale):
        return [RunSpec("a", base_config(scale), parent=ParentRef("nope", 1))]

    def string_parent(scale):
        cfg = base_config(scale)
        cfg.init.run_dir = "@b"
        return [RunSpec("a", cfg), RunSpec("b", base_config(scale))]

    def cyclic(scale):
        return [RunSpec("a", base_config(scale), depends_on=["b"]), RunSpec("b", base_config(scale), depends_on=["a"])]

    finding = Finding("c", "h", "trend", "x")
    with pytest.raises(RegistryError, match="depends on 'nope'"):
        Study("bad", "q", Metric("m"), finding, missing).runs("smoke")
    with pytest.raises(RegistryError, match="cycle"):
        Study("bad", "q", Metric("m"), finding, cyclic).runs("smoke")
    with pytest.raises(RegistryError, match="continue_from"):
        Study("bad", "q", Metric("m"), finding, string_parent).runs("smoke")
    parent = RunSpec("p", base_config("smoke"))
    parent.config.phases = [v_only(5)]
    with pytest.raises(RegistryError, match="choose 0 < epoch <= 5"):
        continue_from(parent, "c", 6, [joint(1)])
    with pytest.raises(RegistryError, match="unknown study 'nope'"):
        get_study("nope")
    with pytest.raises(RegistryError, match="scale='tiny'"):
        get_study("main").runs("tiny")
    with pytest.raises(RegistryError, match="already registered"):
        register(Study("main", "q", Metric("m"), finding, cyclic, module="someone.else"))


def test_register_from_user_module(tmp_path, monkeypatch):
    (tmp_path / "my_lab_studies.py").write_text(textwrap.dedent('''
        from experiments.registry import Finding, Metric, RunSpec, base_config, joint, register

        @register(name="my-study", question="does my curriculum help?", metric=Metric("1-NFE"),
                  finding=Finding("it helps", "new < vanilla", "better", "arm", "new", "vanilla"))
        def my_study(scale):
            runs = []
            for arm, beta in (("vanilla", "none"), ("new", "progressive")):
                cfg = base_config(scale)
                cfg.phases = [joint(3)]
                cfg.objective.beta = beta
                runs.append(RunSpec(f"arm={arm}", cfg, tags={"arm": arm}))
            return runs
    '''))
    (tmp_path / "empty_mod.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = register_from_module("my_lab_studies")
    assert [s.name for s in found] == ["my-study"]
    assert get_study("my-study").count("cpu") == 6 and all_studies()[-1].name == "my-study"
    with pytest.raises(RegistryError, match="registered no study"):
        register_from_module("empty_mod")
    with pytest.raises(RegistryError, match="cannot import"):
        register_from_module("no_such_module_xyz")
    sys.modules.pop("my_lab_studies", None)


def test_overrides_apply_to_every_run_and_name_bad_keys():
    plain = get_study("main").runs("b4")
    moved = get_study("main").runs("b4", overrides=["data.path=/datasets/in256"])
    assert all(r.config.data.path == "/datasets/in256" for r in moved)
    assert {r.hash for r in plain}.isdisjoint({r.hash for r in moved})  # another data set, other run dirs
    with pytest.raises(RegistryError, match="unknown key 'data.pth'"):
        get_study("main").runs("b4", overrides=["data.pth=/x"])


# ----------------------------------------------------------------------------------------------------
# registration checks: every @register field, refused in one line naming the study, field, value, allowed


def _arms(scale: str) -> list[RunSpec]:
    return [RunSpec(f"arm={arm}", base_config(scale), tags={"arm": arm}) for arm in ("a", "b")]


GOOD = {"name": "reg-check", "question": "q", "metric": Metric("m"),
        "finding": Finding("c", "h", "better", "arm", treatment="b", control="a")}


def test_seeds_as_an_int_means_every_scale(tmp_path, monkeypatch):
    """The natural spelling `seeds=2` in a user's module: two seeds at every scale."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    (tmp_path / "my_seeded_studies.py").write_text(textwrap.dedent('''
        from experiments.registry import Finding, Metric, RunSpec, base_config, register

        @register(name="seeded", question="q", metric=Metric("m"), seeds=2,
                  finding=Finding("c", "h", "better", "arm", "b", "a"))
        def seeded(scale):
            return [RunSpec(f"arm={a}", base_config(scale), tags={"arm": a}) for a in ("a", "b")]
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        [study] = register_from_module("my_seeded_studies")
    finally:
        sys.modules.pop("my_seeded_studies", None)
    assert study.seeds == {scale: 2 for scale in SCALES}
    for scale in ("smoke", "cpu", "digits", "b4"):
        assert sorted(r.seed for r in study.runs(scale)) == [0, 0, 1, 1]
    per_scale = Study(**{**GOOD, "seeds": {"cpu": 4}}, grid=_arms)
    assert per_scale.default_seeds("cpu") == 4 and per_scale.default_seeds("b4") == SCALE_SETTINGS["b4"].seeds


def test_natural_spellings_are_accepted():
    study = Study(**{**GOOD, "metric": Metric("m", nfe=1), "notes": "one note",
                     "finding": Finding("c", "h", "better", "arm", treatment=["b"], control="a"),
                     "reference": Reference({"arm": "a"}, 0.2)}, grid=_arms)
    assert study.metric.nfe == (1,) and study.notes == ("one note",) and study.finding.treatment == ("b",)
    assert study.reference == (Reference({"arm": "a"}, 0.2),)


BAD = [  # (fields over GOOD, what the message names, what it says is allowed)
    ({"seeds": 0}, "seeds=0", "int >= 1"),
    ({"seeds": 2.5}, "seeds=2.5", "int >= 1"),
    ({"seeds": True}, "seeds=True", "int >= 1"),
    ({"seeds": {"tiny": 2}}, "seeds={'tiny': 2}", "scales from smoke, cpu"),
    ({"seeds": {"cpu": 0}}, "seeds={'cpu': 0}", "int >= 1"),
    ({"name": "my study"}, "name='my study'", "a directory name"),
    ({"question": ""}, "question=''", "non-empty string"),
    ({"unsupported": {"gpu": "no"}}, "unsupported={'gpu': 'no'}", "scales from smoke"),
    ({"notes": (1,)}, "notes=(1,)", "tuple of strings"),
    ({"metric": "1-NFE"}, "metric='1-NFE'", "Metric(...)"),
    ({"metric": Metric("m", kind="fid")}, "metric.kind='fid'", "distance, tas, epochs_to_target"),
    ({"metric": Metric("m", sampler="w")}, "metric.sampler='w'", "u or v"),
    ({"metric": Metric("m", nfe=0)}, "metric.nfe=(0,)", "int >= 1"),
    ({"finding": Finding("c", "h", "bigger", "arm")}, "finding.comparison='bigger'", "trend, better, best, threshold"),
    ({"finding": Finding("c", "h", "better", "arm", treatment="b")}, "finding.control=None", "control's value"),
    ({"finding": Finding("c", "h", "best", "arm")}, "finding.treatment=None", "treatment's value"),
    ({"finding": Finding("c", "h", "threshold", "arm", treatment=2.0)}, "finding.treatment=2.0", "(0, 1]"),
    ({"finding": Finding("c", "h", "trend", "arm", direction="up")}, "finding.direction='up'", "increasing"),
    ({"finding": Finding("c", "h", "trend", "")}, "finding.tag=''", "non-empty string"),
    ({"reference": (Reference({}, 0.2),)}, "reference.runs={}", "runs' tags"),
    ({"reference": (Reference({"arm": "a"}, 1.5),)}, "reference[arm=a].bar=1.5", "(0, 1]"),
    ({"reference": (Reference({"arm": "a"}, 0.2, sampler="x"),)}, "reference[arm=a].sampler='x'", "u or v"),
    ({"reference": (Reference({"arm": "a"}, 0.2, nfe=0),)}, "reference[arm=a].nfe=0", "int >= 1"),
    ({"reference": ({"arm": "a"},)}, "reference=({'arm': 'a'},)", "Reference(...)"),
    ({"extra_findings": (ExtraFinding("e", "c", "h", "bigger"),)}, "extra_findings[e].kind='bigger'", "stability"),
    ({"extra_findings": (ExtraFinding("e", "c", "h", "non-inferior", params={"treatment": {"arm": "a"}}),)},
     "extra_findings[e].params=", "takes params treatment, control, margin"),
    ({"extra_findings": (ExtraFinding("e", "c", "h", "cross-scale-gap", "arm",
                                      {"arms": ("a", "b"), "scales": ("b4", "tiny")}),)},
     "extra_findings[e].params['scales']=('b4', 'tiny')", "two or more scales"),
    ({"extra_findings": (ExtraFinding("e", "c", "h", "cross-scale-match", "arm",
                                      {"treatment": ("l2", "b"), "control": "a", "margin": 0.05}),)},
     "extra_findings[e].params['control']='a'", "(scale, arm)"),
    ({"extra_findings": (ExtraFinding("e", "c", "h", "stability", "arm", not_applicable={"tiny": "x"}),)},
     "extra_findings[e].not_applicable={'tiny': 'x'}", "scales from smoke"),
    ({"extra_findings": (ExtraFinding("e", "c", "h", "stability", "arm"),) * 2}, "extra_findings=['e', 'e']",
     "its own name"),
    ({"tasks": (TaskSpec("v", "v"),)}, "task_inits={}", "both tasks and task_inits"),
    ({"task_inits": {"random": 3}}, "task_inits={'random': 3}", "run key or None"),
]


@pytest.mark.parametrize(("fields", "named", "allowed"), BAD, ids=[b[1][:40] for b in BAD])
def test_bad_registration_is_refused_in_one_line(fields, named, allowed, monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    given = {**GOOD, **fields}
    with pytest.raises(RegistryError) as caught:
        register(**given)(_arms)
    message = str(caught.value)
    assert "\n" not in message and f"study {given['name']!r}: " in message
    assert named in message and allowed in message, message
    assert given["name"] not in registry._REGISTRY


def test_register_names_unknown_and_missing_fields_and_a_bare_decorator():
    with pytest.raises(RegistryError, match="study 'reg-check': register has no field 'seed'; fields: name, "):
        register(**GOOD, seed=2)
    with pytest.raises(RegistryError, match="study 'reg-check': register needs finding"):
        register(**{k: v for k, v in GOOD.items() if k != "finding"})
    with pytest.raises(RegistryError, match="bare @register"):
        register(_arms)


def test_a_reference_must_select_runs_of_the_grid():
    study = Study(**{**GOOD, "reference": (Reference({"arm": "c"}, 0.2),)}, grid=_arms)
    with pytest.raises(RegistryError, match=r"reference \{'arm': 'c'\} selects no run at scale smoke; the runs' "
                                            "tags: arm, seed"):
        study.runs("smoke")
    numeric = Study(**{**GOOD, "reference": (Reference({"seed": 0.0}, 0.2),)}, grid=_arms)
    assert len(numeric.runs("smoke")) == 2  # numbers compare as numbers: seed 0 is 0.0
