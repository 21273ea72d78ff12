"""The curriculum plug-ins against their formulas: MinSNR, progressive beta, DTD, phases, contamination."""

from __future__ import annotations

import pytest
import torch

from dynamics.config import DTDConfig, PhaseConfig, SamplerConfig, apply_overrides, preset
from dynamics.curriculum import (
    DTDSchedule,
    MinSNRWeight,
    ProgressiveUWeight,
    build_objective,
    contaminate,
    contamination_noise,
)
from dynamics.meanflow import MeanFlowLoss, adaptive_loss, build_sampler
from dynamics.meanflow import target as target_module
from dynamics.models.mlp import MLP
from dynamics.results import read_jsonl
from dynamics.train import Trainer

CPU = torch.device("cpu")


def _smoke(*overrides: str):
    return apply_overrides(preset("smoke"), ["train.threads=1", *overrides])


# -- MinSNR --------------------------------------------------------------------------------------------

def test_minsnr_matches_formula_and_has_unit_mean():
    sampler = build_sampler(SamplerConfig())
    alpha = MinSNRWeight(sampler, gamma=5.0)
    t = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    raw = torch.minimum((1 - t) ** 2, 5.0 * t**2)
    ratio = alpha(t) / raw
    assert torch.allclose(ratio, ratio[0].expand_as(ratio))  # one normalising constant
    # min(SNR, gamma) t^2 with SNR = ((1 - t) / t)^2, the x0-space weight carried to the velocity error
    snr = ((1 - t) / t) ** 2
    assert torch.allclose(raw, torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) * t**2)
    draws = sampler.sample_v(400_000, torch.Generator().manual_seed(0), CPU).double()
    w = alpha(draws)
    assert abs(w.mean().item() - 1.0) < 4 * w.std().item() / len(w) ** 0.5


@pytest.mark.parametrize("form", ["velocity", "noise", "vpred"])
def test_minsnr_forms_match_their_definitions(form):
    """Each form against its definition at a few t (SNR = ((1 - t) / t)^2), and E_t[alpha] = 1 under the sampler."""
    sampler = build_sampler(SamplerConfig())
    alpha = MinSNRWeight(sampler, gamma=5.0, form=form)
    t = torch.tensor([0.05, 0.2, 1 / (1 + 5**0.5), 0.5, 0.9, 0.999], dtype=torch.float64)
    snr = ((1 - t) / t) ** 2
    clipped = torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64))
    expected = {"velocity": clipped * t**2, "noise": clipped / snr, "vpred": clipped / (snr + 1)}[form]
    assert torch.allclose(alpha.unnormalised(t), expected, rtol=1e-12)
    assert torch.allclose(alpha(t), expected / alpha.norm, rtol=1e-12)
    draws = sampler.sample_v(400_000, torch.Generator().manual_seed(1), CPU).double()
    w = alpha(draws)
    assert abs(w.mean().item() - 1.0) < 4 * w.std().item() / len(w) ** 0.5


def test_minsnr_forms_at_the_ends_and_the_default():
    """At t = 1 (where 1-NFE sampling starts) only the noise form keeps weight; velocity stays the default."""
    sampler = build_sampler(SamplerConfig())
    ends = torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert MinSNRWeight(sampler, 5.0, "velocity").unnormalised(ends).tolist() == [0.0, 0.0]
    assert MinSNRWeight(sampler, 5.0, "noise").unnormalised(ends).tolist() == [0.0, 1.0]
    assert MinSNRWeight(sampler, 5.0, "vpred").unnormalised(ends).tolist() == [0.0, 0.0]
    assert preset("b4-minsnr").objective.minsnr_form == "velocity"
    with pytest.raises(ValueError, match="minsnr form"):
        MinSNRWeight(sampler, 5.0, "x0")


# -- progressive u weighting ---------------------------------------------------------------------------

def test_beta_endpoints_and_unit_initial_mean():
    sampler = build_sampler(SamplerConfig())
    beta = ProgressiveUWeight(sampler, total_steps=1000, k=1.0)
    dt = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert beta.progress(0) == 1.0 and beta.progress(1000) == 0.0
    assert torch.allclose(beta(dt, 1000), torch.ones_like(dt))  # s = 0: every interval weighs 1
    assert torch.allclose(beta(dt, 0), beta.lam * (1 - dt))  # s = 1: lambda (1 - dt)
    t, r = sampler.sample_u(400_000, torch.Generator().manual_seed(0), CPU)
    w = beta((t - r).double(), 0)
    assert w.mean().item() == pytest.approx(1.0, abs=4 * w.std().item() / len(w) ** 0.5)
    assert beta.lam == pytest.approx(1 / (1 - (t - r).double().mean().item()), rel=5e-3)


def test_beta_k_moves_the_schedule_as_the_paper_says():
    sampler = build_sampler(SamplerConfig())
    slow, linear, fast = (ProgressiveUWeight(sampler, 100, k) for k in (2.0, 1.0, 0.5))
    for step in (10, 50, 90):
        # s = 1 - (i/T)^k: k > 1 keeps s high longer (slower opening to large dt), k < 1 faster
        assert slow.progress(step) > linear.progress(step) > fast.progress(step)
    assert linear.progress(50) == pytest.approx(0.5)


# -- DTD -----------------------------------------------------------------------------------------------

def test_dtd_pace_opens_clusters_and_draws_follow():
    sampler = build_sampler(SamplerConfig())
    dtd = DTDSchedule(DTDConfig(clusters=4, mode="pace", pace_until=0.5), total_steps=800)
    g = torch.Generator().manual_seed(0)
    edges = sampler.v_quantile(torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
    seen = []
    for step in (0, 100, 200, 300, 400, 799):
        dtd.update(step, 1.0)
        t = sampler.sample_v(20_000, g, CPU, dtd.quantiles).double()
        shares = torch.histc(torch.bucketize(t, edges[1:-1]).double(), bins=4, min=0, max=3) / len(t)
        seen.append((dtd.stage, shares))
    stages = [s for s, _ in seen]
    assert stages == [0, 1, 2, 3, 3, 3]
    for stage, shares in seen:
        open_ = min(stage, 3) + 1  # clusters 3, 2, ... (t near 1 first) are open, each equally likely
        expected = torch.zeros(4, dtype=torch.float64)
        expected[4 - open_:] = 1 / open_
        assert torch.allclose(shares, expected, atol=0.015), (stage, shares)


# 30 scripted v errors and, by hand, DTD's stage after each (tau = 3, 5 clusters): a new best resets the counter,
# a tie is not a new best, the first error of a stage is always its best, a nan step (no v rows) is skipped, and
# at stage 4 (the last) nothing moves.
SCRIPT = [5.0, 4.0, 4.5, 4.2, 3.9, 4.0, 4.0, 3.9,  # best 3.9 at step 5; steps 6-8 are no new best -> stage 1
          6.0, 6.5, float("nan"), 5.5, 5.6, 5.7, 5.8,  # 6.0 is stage 1's first best; 5.5 a new one; 3 more -> 2
          3.0, 2.9, 2.8, 2.7, 2.75, 2.8, 2.6, 2.7, 2.7, 2.7,  # a new best at step 22 resets; 23-25 -> stage 3
          9.0, 9.0, 9.0, 9.0,  # three ties -> stage 4, the last
          1.0]
STAGES = [0] * 7 + [1] * 7 + [2] * 10 + [3] * 4 + [4] * 2


def test_dtd_counter_rule_on_a_scripted_loss_curve():
    """DTD's Algorithm 1: the stage at every step of a scripted v-error curve, computed by hand above."""
    assert (DTDConfig().clusters, DTDConfig().mode, DTDConfig().tau) == (20, "counter", 200)  # the DTD paper's
    dtd = DTDSchedule(DTDConfig(clusters=5, tau=3), total_steps=1000)
    stages = []
    for step, loss in enumerate(SCRIPT, start=1):
        dtd.update(step, loss)
        stages.append(dtd.stage)
    assert stages == STAGES and dtd.finished


def test_dtd_counter_resumes_mid_pacing():
    """state_dict / load_state_dict mid-pacing (mid-counter, after a nan step, right after a stage opened):
    the resumed schedule walks the same stages as the uninterrupted one."""
    for cut in (6, 10, 11, 15, 24):
        first = DTDSchedule(DTDConfig(clusters=5, tau=3), total_steps=1000)
        for step, loss in enumerate(SCRIPT[:cut], start=1):
            first.update(step, loss)
        resumed = DTDSchedule(DTDConfig(clusters=5, tau=3), total_steps=1000)
        resumed.load_state_dict(first.state_dict())
        stages = []
        for step, loss in enumerate(SCRIPT[cut:], start=cut + 1):
            resumed.update(step, loss)
            stages.append(resumed.stage)
        assert stages == STAGES[cut:], cut


def test_dtd_tau_is_iterations_at_paper_scale_and_a_share_of_the_run_at_small_scales():
    assert DTDSchedule(preset("b4-dtd").objective.dtd, 1_200_960).tau == 200
    small = preset("cpu-dtd").objective.dtd
    # 20 x tau spans the share of the run that 20 x 200 spans of B/4's 1,200,960 iterations (0.33%)
    assert small.tau_share == pytest.approx(200 / 1_200_960, rel=0.01)
    assert DTDSchedule(small, 1_200_960).tau == 200 and DTDSchedule(small, 60_000).tau == 10
    assert DTDSchedule(small, 2_400).tau == 1  # never below one iteration (every cpu and digits run)
    assert preset("digits-dtd").objective.dtd.tau_share == small.tau_share
    pace = preset("cpu-dtd-pace").objective
    assert (pace.v_sampling, pace.dtd.mode, pace.dtd.pace_until) == ("dtd", "pace", 0.5)


def test_dtd_stage_survives_resume(tmp_path, kill_after):
    cfg = _smoke("objective.v_sampling=dtd", "objective.dtd.clusters=5", "objective.dtd.pace_until=0.5",
                 "objective.dtd.mode=pace",
                 "train.epochs=4", "train.ckpt_every=10")
    first = Trainer(cfg, tmp_path / "run")
    kill_after(first, 10)
    stage_at_kill = first.v_time.stage
    assert stage_at_kill == 2  # 10 of 40 steps, clusters open every 4 steps
    resumed = Trainer(cfg, tmp_path / "run")
    resumed.restore()
    assert resumed.v_time.stage == stage_at_kill and resumed.step == 10
    resumed.run()
    assert resumed.v_time.stage == 4


def test_dtd_counter_survives_a_kill(tmp_path, kill_after):
    """The counter rule through the trainer: killed at step 10 and resumed, the run logs the same stages and
    ends in the same state as the uninterrupted run."""
    cfg = _smoke("objective.v_sampling=dtd", "objective.dtd.clusters=5", "objective.dtd.tau_share=0",
                 "objective.dtd.tau=2", "train.epochs=4", "train.ckpt_every=10")
    whole = Trainer(cfg, tmp_path / "whole")
    whole.run()
    first = Trainer(cfg, tmp_path / "run")
    kill_after(first, 10)
    resumed = Trainer(cfg, tmp_path / "run")
    resumed.restore()
    assert resumed.v_time.state_dict() == first.v_time.state_dict() and resumed.step == 10
    resumed.run()
    assert resumed.v_time.state_dict() == whole.v_time.state_dict()
    stages = [[r["dtd_stage"] for r in read_jsonl(tmp_path / d / "metrics.jsonl")] for d in ("whole", "run")]
    assert stages[0] == stages[1] and stages[0][-1] > 0


# -- phases --------------------------------------------------------------------------------------------

def _count_jvps(monkeypatch) -> list:
    calls = []
    real = target_module.total_derivative

    def counting(*args, **kwargs):
        calls.append(len(args[1]))
        return real(*args, **kwargs)

    monkeypatch.setattr(target_module, "total_derivative", counting)
    return calls


def test_v_only_phase_never_evaluates_the_u_term(monkeypatch):
    calls = _count_jvps(monkeypatch)
    cfg = _smoke()
    loss_fn = build_objective(cfg, PhaseConfig(epochs=1, terms="v"))
    out = loss_fn(MLP(width=16, depth=2), torch.randn(64, 2), None, torch.Generator().manual_seed(0))
    assert calls == [] and bool((out.t == out.r).all()) and torch.isnan(out.loss_u)


def test_u_only_phase_in_a_bin_draws_only_inside_it(monkeypatch):
    calls = _count_jvps(monkeypatch)
    cfg = _smoke()
    phase = PhaseConfig(epochs=1, terms="u", sampler=SamplerConfig(kind="dt_bin", dt_min=0.7, dt_max=0.9))
    loss_fn = build_objective(cfg, phase)
    model = MLP(width=16, depth=2)
    for seed in range(5):
        out = loss_fn(model, torch.randn(64, 2), None, torch.Generator().manual_seed(seed))
        dt = out.t - out.r
        assert dt.min() >= 0.7 - 1e-6 and dt.max() <= 0.9 + 1e-6 and torch.isnan(out.loss_v)
    assert calls == [64] * 5  # the tangent for every row, no v rows


def test_two_phase_run_continues_from_the_first_phase(tmp_path):
    phases = ('phases=[{"epochs": 1, "terms": "v", "sampler": null}, '
              '{"epochs": 2, "terms": "u", "sampler": {"kind": "dt_bin", "dt_min": 0.1, "dt_max": 0.3, '
              '"mu": -0.4, "sigma": 1.0, "ratio_r_eq_t": 0.0}}]')
    cfg = _smoke(phases, "train.lr_schedule=constant")
    trainer = Trainer(cfg, tmp_path / "two")
    trainer.run()
    rows = read_jsonl(tmp_path / "two" / "metrics.jsonl")
    assert [r["phase"] for r in rows] == [0, 0, 1, 1, 1, 1]  # 10 v-only steps, then 20 u-only
    assert all(r["loss_u"] != r["loss_u"] for r in rows if r["phase"] == 0)  # nan: no u rows
    assert all(r["loss_v"] != r["loss_v"] for r in rows if r["phase"] == 1)
    # the same two phases as a v-only parent run + a child that starts from its checkpoint: identical
    parent_cfg = _smoke('phases=[{"epochs": 1, "terms": "v", "sampler": null}]', "train.lr_schedule=constant")
    Trainer(parent_cfg, tmp_path / "parent").run()
    child_cfg = _smoke(phases, "train.lr_schedule=constant", f"init.run_dir={tmp_path / 'parent'}")
    child = Trainer(child_cfg, tmp_path / "child")
    child.run()
    assert all(torch.equal(a, b) for a, b in zip(child.model.parameters(), trainer.model.parameters()))


# -- contamination -------------------------------------------------------------------------------------

def test_contamination_normalised_noise_norm_is_k_times_v():
    v = torch.randn(32, 1, 4, 4, dtype=torch.float64)
    noisy = contaminate(v, torch.Generator().manual_seed(0), k=0.03, form="normalised")
    noise_norm = (noisy - v).flatten(1).norm(dim=1)
    assert torch.allclose(noise_norm, 0.03 * v.flatten(1).norm(dim=1), rtol=1e-10)


def test_contamination_literal_is_k_norm_v_times_standard_normal():
    """Issue 8.4: the paper's wording, noise = k ||v|| xi with xi ~ N(0, I) per element, so
    ||noise|| / ||v|| ~ k sqrt(d) (the normalised form would give exactly k)."""
    d, k = 4096, 0.03
    v = torch.randn(64, d, dtype=torch.float64) * torch.rand(64, 1, dtype=torch.float64)
    noise = contamination_noise(v, torch.Generator().manual_seed(0), k)
    xi = noise / (k * v.norm(dim=1, keepdim=True))
    assert abs(float(xi.mean())) < 0.01 and abs(float(xi.std()) - 1.0) < 0.01
    ratio = noise.norm(dim=1) / v.norm(dim=1)
    assert float(ratio.mean()) == pytest.approx(k * d**0.5, rel=0.02)  # ~1.92 at B/4, not 0.03


def test_contamination_ratio_is_logged_and_uses_the_conditional_velocity(tmp_path):
    cfg = _smoke("objective.contamination_k=0.5", "train.epochs=1")
    Trainer(cfg, tmp_path / "run").run()
    rows = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "noise_ratio" in r]
    assert rows and all(r["noise_ratio"] == pytest.approx(0.5 * 2**0.5, rel=0.35) for r in rows)
    # the v rows' target is v + k ||v|| xi with v = e - x, the conditional velocity (CFG guidance aside)
    loss_fn = build_objective(_smoke("objective.contamination_k=0.5", "objective.contamination_form=normalised"),
                              PhaseConfig(epochs=1))
    x = torch.randn(256, 2)
    gen = torch.Generator().manual_seed(0)
    t, r, e, y, n_v = loss_fn.draw(x, None, gen)
    out = loss_fn.loss(MLP(width=16, depth=2), x, e, t, r, y, n_v=n_v, gen=gen)
    v = e - x
    noise = out.target[:n_v] - v[:n_v]
    assert torch.allclose(noise.norm(dim=1), 0.5 * v[:n_v].norm(dim=1), rtol=1e-5)
    assert float(out.noise_ratio) == pytest.approx(0.5, rel=1e-5)


def test_contamination_only_touches_v_rows_and_k0_is_vanilla():
    model = MLP(width=16, depth=2)
    x = torch.randn(64, 2)
    vanilla = build_objective(_smoke(), PhaseConfig(epochs=1))
    zero = build_objective(_smoke("objective.contamination_k=0"), PhaseConfig(epochs=1))
    a = vanilla(model, x, None, torch.Generator().manual_seed(0))
    b = zero(model, x, None, torch.Generator().manual_seed(0))
    assert torch.equal(a.loss, b.loss) and torch.equal(a.D, b.D)
    dirty = build_objective(_smoke("objective.contamination_k=0.3"), PhaseConfig(epochs=1))
    c = dirty(model, x, None, torch.Generator().manual_seed(0))
    is_v = a.t == a.r
    assert torch.equal(a.D[~is_v], c.D[~is_v]) and not torch.equal(a.D[is_v], c.D[is_v])


# -- everything off is vanilla ------------------------------------------------------------------------

def test_all_components_off_is_the_vanilla_meanflow_loss():
    cfg = _smoke()
    model = MLP(width=16, depth=2)
    x = torch.randn(64, 2)
    ours = build_objective(cfg, PhaseConfig(epochs=1))(model, x, None, torch.Generator().manual_seed(0))
    # vanilla by hand: same draws, u_tgt = v - (t - r) dudt, adaptive weight, plain mean
    plain = MeanFlowLoss(build_sampler(cfg.objective.sampler), 0.75, cfg.objective.adaptive_p,
                         cfg.objective.adaptive_c)
    t, r, e, _, _ = plain.draw(x, None, torch.Generator().manual_seed(0))
    z = (1 - t[:, None]) * x + t[:, None] * e
    v = e - x
    u, dudt = torch.func.jvp(lambda z_, r_, t_: model(z_, r_, t_), (z, r, t),
                             (v, torch.zeros_like(r), torch.ones_like(t)))
    D = (u - (v - (t - r)[:, None] * dudt).detach()).pow(2).sum(1)
    expected = adaptive_loss(D, cfg.objective.adaptive_p, cfg.objective.adaptive_c).mean()
    assert torch.allclose(ours.loss, expected, rtol=1e-6, atol=1e-7)
    weighted = build_objective(_smoke("objective.alpha=minsnr", "objective.beta=progressive"),
                               PhaseConfig(epochs=1))(model, x, None, torch.Generator().manual_seed(0))
    assert not torch.allclose(weighted.loss, ours.loss)


@pytest.mark.parametrize("method", ["vanilla", "minsnr", "dtd", "lu", "minsnr-lu", "dtd-lu", "dtd-pace"])
def test_method_presets_resolve(method):
    for scale in ("smoke", "cpu", "digits", "b4", "l2", "xl2"):
        cfg = preset(f"{scale}-{method}")
        assert (cfg.objective.alpha == "minsnr") == ("minsnr" in method)
        assert (cfg.objective.v_sampling == "dtd") == ("dtd" in method)
        assert (cfg.objective.beta == "progressive") == method.endswith("lu")
