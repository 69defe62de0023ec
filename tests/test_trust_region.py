"""The trust-region family: each surrogate against its paper's formula, then each option in the loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch as th
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from stable_baselines3.common.envs import IdentityEnvBox
from stable_baselines3.common.utils import LinearSchedule

from sb3_ppo_variants import SPOPPO, LogitPPO, VariantPPO
from sb3_ppo_variants.objectives import (
    clipped_surrogate,
    feature_drift,
    kl_trust_region_surrogate,
    probability_ratio,
    ratio_change,
    restoring_slope,
    spo_surrogate,
    target_ratio,
    value_loss_weight,
)

th.set_num_threads(1)

SMALL = dict(n_steps=64, batch_size=32, n_epochs=3, seed=5)


def _leaf(values, dtype=th.float64):
    return th.tensor(values, dtype=dtype).log().requires_grad_(True)


def _grad(loss, log_prob):
    (grad,) = th.autograd.grad(loss, log_prob)
    return grad


# --------------------------------------------------------------------------- Clip-Higher


def test_clip_higher_target_is_one_plus_high_and_one_minus_low():
    adv = th.tensor([2.0, -3.0, 0.0])
    np.testing.assert_allclose(target_ratio(th.zeros(3), adv, 0.2, "absolute", 0.28).numpy(), [1.28, 0.8, 1.0])
    # the symmetric case keeps PPO's expression
    assert th.equal(target_ratio(th.zeros(3), adv, 0.2, "absolute", 0.2), target_ratio(th.zeros(3), adv, 0.2))


@given(
    old_prob=st.floats(1e-6, 1 - 1e-6),
    low=st.floats(0.0, 0.99),
    high=st.floats(0.0, 0.99),
    sign=st.sampled_from([-1.0, 1.0]),
)
@settings(max_examples=150, deadline=None)
def test_clip_higher_logit_target_steps_up_by_high_and_down_by_low(old_prob, low, high, sign):
    old_log_prob = th.tensor([math.log(old_prob)], dtype=th.float64)
    ratio = target_ratio(old_log_prob, th.tensor([sign], dtype=th.float64), low, "logit", high).item()
    target_prob = old_prob * ratio
    logit = lambda p: math.log(p) - math.log1p(-p)  # noqa: E731
    epsilon = high if sign > 0 else low
    assert 0.0 < target_prob < 1.0
    assert logit(target_prob) - logit(old_prob) == pytest.approx(
        sign * math.log((1 + epsilon) / (1 - epsilon)), abs=1e-7
    )


def test_clip_higher_loss_is_dapo_value_and_gradient():
    ratios, adv = [0.7, 0.85, 1.1, 1.25, 1.4], th.tensor([-1.0, -2.0, 1.0, 3.0, 0.5], dtype=th.float64)
    low, high = 0.2, 0.28
    log_prob = _leaf(ratios)
    loss = clipped_surrogate(
        probability_ratio(log_prob, th.zeros(5, dtype=th.float64)),
        target_ratio(th.zeros(5, dtype=th.float64), adv, low, "absolute", high),
        adv,
    )
    # DAPO, eq. 10: min(r A, clip(r, 1 − ε_low, 1 + ε_high) A), computed independently
    log_prob_ref = _leaf(ratios)
    r = log_prob_ref.exp()
    reference = -th.min(r * adv, th.clamp(r, 1 - low, 1 + high) * adv).mean()
    assert loss.item() == pytest.approx(reference.item(), abs=1e-12)
    th.testing.assert_close(_grad(loss, log_prob), _grad(reference, log_prob_ref))


# --------------------------------------------------------------------------- dual clip


@given(
    ratio=st.lists(st.floats(1e-3, 20.0), min_size=1, max_size=6),
    advantage=st.lists(st.floats(-1e8, 1e8), min_size=6, max_size=6),
    epsilon=st.floats(0.0, 0.99),
    bound=st.floats(1.0 + 1e-3, 10.0),
)
@settings(max_examples=200, deadline=None)
def test_dual_clip_is_ye_et_al_eq_5(ratio, advantage, epsilon, bound):
    assume(all(r != bound and r != 1 + epsilon and r != 1 - epsilon for r in ratio))  # no subgradient ties
    n = len(ratio)
    adv = th.tensor(advantage[:n], dtype=th.float64)
    log_prob = _leaf(ratio)
    zeros = th.zeros(n, dtype=th.float64)
    loss = clipped_surrogate(
        probability_ratio(log_prob, zeros), target_ratio(zeros, adv, epsilon), adv, dual_clip_bound=bound
    )
    log_prob_ref = _leaf(ratio)
    r = log_prob_ref.exp()
    ppo = th.min(r * adv, th.clamp(r, 1 - epsilon, 1 + epsilon) * adv)
    reference = -th.where(adv < 0, th.max(ppo, bound * adv), ppo).mean()
    scale = max(1.0, float(adv.abs().max()) * max([*ratio, bound]))
    assert loss.item() == pytest.approx(reference.item(), abs=1e-9 * scale)
    np.testing.assert_allclose(_grad(loss, log_prob), _grad(reference, log_prob_ref), atol=1e-9 * scale)


def test_dual_clip_stops_the_gradient_beyond_c_only():
    adv = th.tensor([-1.0, -1.0, 1.0], dtype=th.float64)
    log_prob = _leaf([2.0, 4.0, 4.0])
    zeros = th.zeros(3, dtype=th.float64)
    loss = clipped_surrogate(
        probability_ratio(log_prob, zeros), target_ratio(zeros, adv, 0.2), adv, alpha=0.5, dual_clip_bound=3.0
    )
    # r = 2 < c: PPO's unclipped branch, gradient −A r / N; r = 4 > c with A < 0: constant −c A; A > 0: clipped
    np.testing.assert_allclose(_grad(loss, log_prob).numpy(), [2.0 / 3, 0.0, 0.5 * 4.0 / 3])
    assert loss.item() == pytest.approx((2.0 + 3.0 + (0.5 * (4.0 - 1.2) - 1.2)) / 3)


# --------------------------------------------------------------------------- KL-triggered trust region


def _kl_reference(r, adv, kl, bound, alpha):
    """Wang et al. 2019 as the reference code writes it (wangyuhuix/TrulyPPO, ppo2.py): past the KL bound with
    r A > A, TR-PPO keeps stop_gradient(r A) and TR-PPO-RB takes r A − α KL."""
    terms = []
    for i in range(len(adv)):
        triggered = kl[i].item() >= bound and (r[i] * adv[i]).item() > adv[i].item()
        if not triggered:
            terms.append(r[i] * adv[i])
        elif alpha == 0.0:
            terms.append((r[i] * adv[i]).detach() + 0.0 * r[i])  # the value, a zero gradient
        else:
            terms.append(r[i] * adv[i] - alpha * kl[i])
    return -th.stack(terms).mean()


@pytest.mark.parametrize("alpha", [0.0, 5.0])
def test_kl_trust_region_is_tr_ppo_and_truly_ppo(alpha):
    ratios = [0.8, 1.2, 1.2, 0.8, 1.05]
    adv = th.tensor([1.0, 1.0, -1.0, -1.0, 2.0], dtype=th.float64)
    base_kl = th.tensor([0.05, 0.05, 0.05, 0.05, 0.01], dtype=th.float64)
    scale = th.ones(5, dtype=th.float64, requires_grad=True)  # a KL that depends on θ too
    log_prob = _leaf(ratios)
    zeros = th.zeros(5, dtype=th.float64)
    loss = kl_trust_region_surrogate(probability_ratio(log_prob, zeros), adv, base_kl * scale, 0.03, alpha)
    log_prob_ref = _leaf(ratios)
    scale_ref = th.ones(5, dtype=th.float64, requires_grad=True)
    reference = _kl_reference(log_prob_ref.exp(), adv, base_kl * scale_ref, 0.03, alpha)
    assert loss.item() == pytest.approx(reference.item(), abs=1e-12)
    grads = th.autograd.grad(loss, (log_prob, scale), allow_unused=True, materialize_grads=True)
    expected = th.autograd.grad(reference, (log_prob_ref, scale_ref), allow_unused=True, materialize_grads=True)
    for got, want in zip(grads, expected, strict=True):
        th.testing.assert_close(got, want)
    # triggered: samples 1 (r A = 1.2 > 1) and 3 (r A = −0.8 > −1); sample 4 is inside the bound
    if alpha == 0.0:
        assert _grad(kl_trust_region_surrogate(probability_ratio(log_prob, zeros), adv, base_kl, 0.03), log_prob)[
            [1, 3]
        ].abs().sum() == pytest.approx(0.0)


@given(
    ratio=st.lists(st.floats(1e-4, 1e4), min_size=3, max_size=3),
    advantage=st.lists(st.floats(-1e8, 1e8), min_size=3, max_size=3),
    kl=st.lists(st.floats(0.0, 10.0), min_size=3, max_size=3),
    bound=st.floats(1e-6, 1.0),
    alpha=st.sampled_from([0.0, 0.3, 5.0]),
)
@settings(max_examples=150, deadline=None)
def test_kl_trust_region_matches_its_formula_at_the_edges(ratio, advantage, kl, bound, alpha):
    adv = th.tensor(advantage, dtype=th.float64)
    kl_t = th.tensor(kl, dtype=th.float64)
    log_prob = _leaf(ratio)
    loss = kl_trust_region_surrogate(
        probability_ratio(log_prob, th.zeros(3, dtype=th.float64)), adv, kl_t, bound, alpha
    )
    log_prob_ref = _leaf(ratio)
    reference = _kl_reference(log_prob_ref.exp(), adv, kl_t, bound, alpha)
    scale = max(1.0, float(adv.abs().max()) * max(ratio), alpha * max(kl))
    assert loss.item() == pytest.approx(reference.item(), abs=1e-9 * scale)
    grad = _grad(loss, log_prob)
    assert th.isfinite(grad).all()
    np.testing.assert_allclose(grad, _grad(reference, log_prob_ref), atol=1e-9 * scale)


def test_truly_ppo_alpha_may_exceed_one_only_with_the_kl_bound():
    assert restoring_slope(5.0, kl_trust_region=True) == 5.0
    with pytest.raises(ValueError, match=r"peaked_policy_loss must be False, True or a float in \[0, 1\]"):
        restoring_slope(5.0)


# --------------------------------------------------------------------------- SPO at ε = 0, ESPO, PFO, value weight


def test_spo_at_zero_epsilon_is_the_limit_with_the_policy_gradient_at_r_one():
    adv = th.tensor([2.0, -1.0], dtype=th.float64)
    zeros = th.zeros(2, dtype=th.float64)
    for ratios, expected_grad in (([1.0, 1.0], [-2.0 / 2, 1.0 / 2]), ([1.3, 0.6], [0.0, 0.0])):
        log_prob = _leaf(ratios)
        loss = spo_surrogate(probability_ratio(log_prob, zeros), target_ratio(zeros, adv, 0.0), adv, 0.0)
        assert th.isfinite(loss)
        np.testing.assert_allclose(_grad(loss, log_prob).numpy(), expected_grad)
    # SPO's gradient at r = 1 is −A for every ε > 0 too
    for epsilon in (1e-6, 0.2):
        log_prob = _leaf([1.0, 1.0])
        loss = spo_surrogate(probability_ratio(log_prob, zeros), target_ratio(zeros, adv, epsilon), adv, epsilon)
        np.testing.assert_allclose(_grad(loss, log_prob).numpy(), [-1.0, 0.5], rtol=1e-6)


def test_espo_ratio_change_is_mean_absolute_deviation_from_one():
    assert ratio_change(th.tensor([0.5, 1.0, 1.25, 2.0])).item() == pytest.approx((0.5 + 0 + 0.25 + 1.0) / 4)


def test_feature_drift_value_and_gradient():
    features = th.tensor([[1.0, 2.0], [0.0, -1.0]], requires_grad=True)
    old = th.tensor([[0.5, 2.0], [1.0, 1.0]])
    drift = feature_drift(features, old)
    assert drift.item() == pytest.approx((0.25 + 0 + 1 + 4) / 4)
    (grad,) = th.autograd.grad(drift, features)
    th.testing.assert_close(grad, 2 * (features.detach() - old) / 4)


def test_value_loss_weight_modes_and_running_mean():
    h = th.tensor([0.1, 0.3])
    assert value_loss_weight(None, None, None, 0.9) == (1.0, None)
    weight, mean = value_loss_weight("per_state", h, 0.7, 0.9)
    assert th.equal(weight, h) and mean == 0.7
    weight, mean = value_loss_weight("per_batch", h, None, 0.9)
    assert weight.item() == pytest.approx(0.2) and mean is None
    weight, mean = value_loss_weight("smoothed", h, None, 0.9)
    assert weight.item() == pytest.approx(0.2) and mean.item() == pytest.approx(0.2)
    weight, mean = value_loss_weight("smoothed", h, 0.5, 0.9)
    assert weight.item() == pytest.approx(0.9 * 0.5 + 0.1 * 0.2) and mean is weight
    with_grad = h.clone().requires_grad_(True)
    assert not value_loss_weight("per_state", with_grad, None, 0.9)[0].requires_grad


# --------------------------------------------------------------------------- the options in the loop


def _final_parameters(cls, env="CartPole-v1", **kwargs):
    model = cls("MlpPolicy", env, **{**SMALL, **kwargs}).learn(128)
    return model, [p.detach().clone() for p in model.policy.parameters()]


@pytest.mark.parametrize(
    "neutral",
    [dict(clip_range_high=0.2), dict(dual_clip=1e6), dict(feature_drift_coef=0.0), dict(ratio_change_limit=1e6)],
)
def test_neutral_values_reproduce_the_default_loop(neutral):
    _, reference = _final_parameters(VariantPPO)
    _, parameters = _final_parameters(VariantPPO, **neutral)
    for got, want in zip(parameters, reference, strict=True):
        assert th.equal(got, want)


def test_an_unreachable_kl_bound_is_the_unclipped_surrogate():
    _, reference = _final_parameters(VariantPPO, surrogate="unclipped")
    model, parameters = _final_parameters(VariantPPO, kl_trust_region=1e9)
    for got, want in zip(parameters, reference, strict=True):
        th.testing.assert_close(got, want)
    assert model.logger.name_to_value["train/kl_beyond_bound_fraction"] == 0.0
    assert 0.0 <= model.logger.name_to_value["train/kl"] <= model.logger.name_to_value["train/kl_p95"] + 1e-12


@pytest.mark.parametrize("env", ["CartPole-v1", "Pendulum-v1"])
@pytest.mark.parametrize(
    "options",
    [
        dict(clip_range_high=0.28, dual_clip=3.0, peaked_policy_loss=0.3),
        dict(kl_trust_region=0.01, peaked_policy_loss=5.0, dual_clip=3.0),
        dict(kl_trust_region=0.01, kl_coef=0.5),
        dict(feature_drift_coef=1.0, ratio_change_limit=0.2),
    ],
)
def test_the_options_train_on_discrete_and_box_actions(env, options):
    model = VariantPPO("MlpPolicy", env, **SMALL, learning_rate=3e-3, **options).learn(128)
    for key, value in model.logger.name_to_value.items():
        if key.startswith("train/"):
            assert np.isfinite(value), key
    if "feature_drift_coef" in options:
        assert model.logger.name_to_value["train/feature_drift"] > 0.0


def test_espo_stops_the_epochs_once_the_mean_ratio_change_is_past_the_limit():
    free = VariantPPO("MlpPolicy", "CartPole-v1", **SMALL, learning_rate=1e-2).learn(64)
    stopped = VariantPPO("MlpPolicy", "CartPole-v1", **SMALL, learning_rate=1e-2, ratio_change_limit=1e-4).learn(64)
    assert free._n_updates == SMALL["n_epochs"]
    assert stopped._n_updates < free._n_updates


def _optimizer_steps(stop):
    model = VariantPPO(
        "MlpPolicy", "CartPole-v1", **SMALL, learning_rate=1e-2, ratio_change_limit=1e-4, ratio_change_stop=stop
    )
    steps = []
    step = model.policy.optimizer.step
    model.policy.optimizer.step = lambda *args, **kwargs: steps.append(1) or step(*args, **kwargs)
    model.learn(64)
    return len(steps)


@pytest.mark.parametrize(("stop", "steps"), [("before_step", 1), ("after_step", 2)])
def test_espo_stop_point(stop, steps):
    """The first minibatch has r = 1 and steps; the second is past the limit: SB3's target_kl point skips its
    step, published ESPO code takes it and then stops."""
    assert _optimizer_steps(stop) == steps


def test_espo_stop_point_needs_the_limit():
    with pytest.raises(ValueError, match=r"ratio_change_stop places ESPO's early stop and needs ratio_change_limit"):
        VariantPPO("MlpPolicy", "CartPole-v1", ratio_change_stop="after_step")
    with pytest.raises(ValueError, match=r"ratio_change_stop must be one of 'before_step', 'after_step', got 'x'"):
        VariantPPO("MlpPolicy", "CartPole-v1", ratio_change_limit=0.2, ratio_change_stop="x")


def test_tr_ppo_keeps_the_value_of_triggered_samples_without_their_gradient():
    """Hand-computed: r = 1.2, A = 1, KL 0.05 ≥ δ = 0.03 is triggered (r A > A): its term is r A = 1.2, gradient 0;
    r = 0.9, A = 2 is not (r A < A): r A = 1.8 with gradient −A r / N."""
    log_prob = _leaf([1.2, 0.9])
    ratio = probability_ratio(log_prob, th.zeros(2, dtype=th.float64))
    adv = th.tensor([1.0, 2.0], dtype=th.float64)
    loss = kl_trust_region_surrogate(ratio, adv, th.tensor([0.05, 0.05], dtype=th.float64), 0.03)
    assert loss.item() == pytest.approx(-(1.2 + 1.8) / 2)
    np.testing.assert_allclose(_grad(loss, log_prob).numpy(), [0.0, -2.0 * 0.9 / 2])


def test_feature_drift_pulls_the_features_back():
    # same seed, hence the same first rollout; a negligible against a large coefficient
    drifts = {}
    for coef in (1e-12, 100.0):
        model = VariantPPO("MlpPolicy", "CartPole-v1", **SMALL, learning_rate=1e-2, feature_drift_coef=coef)
        drifts[coef] = model.learn(64).logger.name_to_value["train/feature_drift"]
    assert 0.0 < drifts[100.0] < drifts[1e-12]


def test_pfo_needs_a_hidden_layer():
    with pytest.raises(ValueError, match=r"feature_drift_coef needs a policy whose actor has a hidden nn\.Linear"):
        VariantPPO("MlpPolicy", IdentityEnvBox(), feature_drift_coef=1.0, policy_kwargs=dict(net_arch=[]))


# --------------------------------------------------------------------------- schedules ending at 0


@pytest.mark.parametrize(("cls", "options"), [(LogitPPO, {}), (SPOPPO, {}), (VariantPPO, dict(clip_range_high=0.0))])
def test_clip_schedules_ending_at_zero_are_accepted_and_used(cls, options):
    model = cls("MlpPolicy", "CartPole-v1", **SMALL, clip_range=LinearSchedule(0.2, 0.0, 1.0), **options)
    model.learn(192)
    clip_range = model.logger.name_to_value["train/clip_range"]
    assert 0.0 <= clip_range < 0.2
    for key, value in model.logger.name_to_value.items():
        if key.startswith("train/"):
            assert np.isfinite(value), key


def test_a_schedule_changed_after_construction_is_refused_before_training():
    model = LogitPPO("MlpPolicy", "CartPole-v1", **SMALL, clip_range=0.2).learn(64)
    parameters = [parameter.detach().clone() for parameter in model.policy.parameters()]
    model.clip_range = lambda _: 1.0  # e.g. a schedule changed after construction
    with pytest.raises(ValueError, match=r"clip_range must be in \[0, 1\) with delta_target_policy='logit'"):
        model.learn(64, reset_num_timesteps=False)
    assert model.num_timesteps == 64  # refused before any step
    for before, after in zip(parameters, model.policy.parameters(), strict=True):
        assert th.equal(before, after)


# --------------------------------------------------------------------------- save / load


@pytest.mark.parametrize(
    "options",
    [
        dict(clip_range_high=LinearSchedule(0.3, 0.1, 1.0), dual_clip=2.5, peaked_policy_loss=0.5),
        dict(kl_trust_region=0.02, peaked_policy_loss=4.0, ratio_change_limit=0.5, feature_drift_coef=0.1),
    ],
)
def test_new_options_survive_save_and_load(tmp_path, options):
    model = VariantPPO("MlpPolicy", "CartPole-v1", **SMALL, **options).learn(64)
    model.save(tmp_path / "model")
    loaded = VariantPPO.load(tmp_path / "model", env=model.get_env())
    for name, value in options.items():
        if name == "clip_range_high":
            assert loaded._clip_range_high_schedule(0.5) == pytest.approx(0.2)
        else:
            assert getattr(loaded, name) == value, name
    loaded.learn(64, reset_num_timesteps=False)
    if "feature_drift_coef" in options:
        assert loaded._preactivations is not None and loaded.rollout_buffer.feature_size == 64
        assert loaded.logger.name_to_value["train/feature_drift"] > 0.0
    if "kl_trust_region" in options:
        assert loaded.rollout_buffer.distribution_size == 2
        assert "train/kl_p95" in loaded.logger.name_to_value
