"""The config package: dicts and overrides into dataclasses with one-line errors, and the dict that is hashed."""

from __future__ import annotations

import dataclasses

import pytest

from dynamics.config import (
    ConfigError,
    PhaseConfig,
    RunConfig,
    apply_overrides,
    preset,
    preset_names,
    to_dataclass,
)
from dynamics.curriculum import DTDSchedule


@pytest.mark.parametrize("d, message", [
    ({"objective": {"sampler": {"muu": 0}}}, "unknown key 'objective.sampler.muu'; allowed: dt_max, dt_min, kind, mu"),
    ({"train": {"batch_size": 2.5}}, "train.batch_size: expected an integer, got 2.5"),
    ({"train": {"batch_size": True}}, "train.batch_size: expected an integer, got True"),
    ({"train": {"lr": "fast"}}, "train.lr: expected a number, got 'fast'"),
    ({"data": {"hflip": "yes"}}, "data.hflip: expected true or false, got 'yes'"),
    ({"data": {"name": 3}}, "data.name=3 is not allowed; choose one of moons, "),
    ({"eval": {"nfe": 1}}, "eval.nfe: expected a list, got 1"),
    ({"eval": {"nfe": [1, "two"]}}, "eval.nfe.1: expected an integer, got 'two'"),
    ({"phases": [{"sampler": {"kind": "beta"}}]}, "phases.0.sampler.kind='beta' is not allowed"),
    ({"model": "mlp"}, "model. must be a mapping, got 'mlp'"),
    ({"objective": {"alpha_params": 1}}, "objective.alpha_params: expected a mapping, got 1"),
])
def test_a_bad_dict_names_the_key_the_value_and_what_is_allowed(d, message):
    with pytest.raises(ConfigError) as exc:
        RunConfig.from_dict(d)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_numbers_widen_and_nothing_else_converts():
    cfg = RunConfig.from_dict({"train": {"batch_size": 64.0, "lr": 1}, "phases": [{"epochs": 2, "sampler": None}]})
    assert cfg.train.batch_size == 64 and type(cfg.train.batch_size) is int
    assert cfg.train.lr == 1.0 and type(cfg.train.lr) is float
    assert cfg.phases == [PhaseConfig(epochs=2.0, sampler=None)]
    assert to_dataclass(PhaseConfig, {"terms": "v"}, "phases.0.") == PhaseConfig(terms="v")


def test_the_guidance_section_is_read_under_its_older_name():
    cfg = RunConfig.from_dict({"objective": {"cfg": {"kappa": 0.5}}})
    assert cfg.objective.guidance.kappa == 0.5


@pytest.mark.parametrize("override, message", [
    ("train.lr", "override 'train.lr' must look like key=value"),
    ("trian.lr=1", "unknown key 'trian'; allowed here: data, eval, init, model"),
    ("train.lr.x=1", "unknown key 'train.lr.x': 'train.lr' is a value, not a section"),
    ("train.lr.x.y=1", "unknown key 'train.lr.x'; allowed here: (not a section)"),
    ("phases.3.epochs=1", "'phases.3': index '3' out of range (list has 2 items)"),
    ("phases.0.sampler.kind=uniform", "'phases.0.sampler' is unset (null); set the whole section"),
    ("objective.beta_params.k=1", "objective.beta=progressive takes no parameters"),
])
def test_a_bad_override_names_the_key(override, message):
    base = apply_overrides(preset("smoke"), ['phases=[{"epochs": 1}, {"epochs": 1}]'])
    with pytest.raises(ConfigError) as exc:
        apply_overrides(dataclasses.replace(base, objective=dataclasses.replace(base.objective, beta="progressive")),
                        [override])
    assert message in str(exc.value)


def test_overrides_reach_list_items_and_parse_json():
    cfg = apply_overrides(preset("smoke"), ['phases=[{"epochs": 1}, {"epochs": 1, "terms": "v"}]',
                                            "phases.1.epochs=2.5", "eval.nfe=[1,4]", "data.name=rings"])
    assert [p.epochs for p in cfg.phases] == [1.0, 2.5] and cfg.phases[1].terms == "v"
    assert cfg.eval.nfe == [1, 4] and cfg.data.name == "rings"
    assert cfg.total_steps() == round(3.5 * cfg.train.steps_per_epoch)


def test_the_hashed_dict_leaves_out_unset_optional_fields():
    d = preset("cpu").to_dict()
    assert "modules" not in d and "target_transform" not in d["objective"]
    assert not [k for k in d["objective"] if k.endswith("_params")]
    assert list(d) == [f.name for f in dataclasses.fields(RunConfig) if f.name != "modules"]
    full = dataclasses.asdict(preset("cpu"))
    full["objective"]["alpha_params"] = {"power": 2.0}
    assert RunConfig.from_dict(full).to_dict()["objective"]["alpha_params"] == {"power": 2.0}


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_round_trips_through_its_dict(name):
    cfg = preset(name)
    again = RunConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.to_dict() == cfg.to_dict()


def test_a_stored_config_of_dtd_patience_pacing_still_loads():
    """config.json files written before DTD's counter rule (mode=patience, a window of patience x T steps) load as
    the counter rule with tau = patience x T; the current keys round-trip unchanged."""
    old = preset("cpu-dtd").to_dict()
    old["objective"]["dtd"] = {"clusters": 20, "mode": "patience", "pace_until": 0.5, "patience": 5e-4}
    cfg = RunConfig.from_dict(old).validate()
    assert (cfg.objective.dtd.mode, cfg.objective.dtd.tau_share) == ("counter", 5e-4)
    paced = RunConfig.from_dict({"objective": {"dtd": {"mode": "pace", "patience": 5e-4}}})
    assert (paced.objective.dtd.mode, paced.objective.dtd.tau_share) == ("pace", 5e-4)
    assert RunConfig.from_dict(preset("b4-dtd").to_dict()) == preset("b4-dtd")
    with pytest.raises(ConfigError, match="objective.dtd.tau=50 is ignored while objective.dtd.tau_share"):
        apply_overrides(preset("cpu-dtd"), ["objective.dtd.tau=50"])
    own_tau = apply_overrides(preset("cpu-dtd"), ["objective.dtd.tau=50", "objective.dtd.tau_share=0"])
    assert DTDSchedule(own_tau.objective.dtd, 2_400).tau == 50


def test_paper_presets_train_in_float32_and_digits_clips_gradients():
    for scale in ("b4", "m2", "l2", "xl2"):
        cfg = preset(scale)
        assert (cfg.train.precision, cfg.objective.adaptive_c) == ("fp32", 1e-3)
    assert preset("digits").train.grad_clip == 1.0 and preset("cpu").train.grad_clip == 0.0
