"""The pure objectives against values and gradients computed by hand or by brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch as th
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Bernoulli, Categorical, Normal

from sb3_ppo_variants.objectives import (
    adapt_kl_coef,
    approx_kl,
    bernoulli_pseudo_entropy,
    clipped_surrogate,
    joint_pseudo_entropy,
    probability_ratio,
    pseudo_entropy,
    restoring_slope,
    spo_surrogate,
    target_ratio,
    trust_region_statistics,
    unclipped_surrogate,
)

th.set_default_dtype(th.float32)


# the surrogates composed from log-probabilities, as train() composes them
def policy_loss(log_prob, old_log_prob, adv, eps, delta_target_policy="absolute", peaked_policy_loss=False):
    target = target_ratio(old_log_prob, adv, eps, delta_target_policy)
    return clipped_surrogate(
        probability_ratio(log_prob, old_log_prob), target, adv, restoring_slope(peaked_policy_loss)
    )


def spo_policy_loss(log_prob, old_log_prob, adv, eps, delta_target_policy="absolute"):
    target = target_ratio(old_log_prob, adv, eps, delta_target_policy)
    return spo_surrogate(probability_ratio(log_prob, old_log_prob), target, adv, eps)


def unclipped_policy_loss(log_prob, old_log_prob, adv):
    return unclipped_surrogate(probability_ratio(log_prob, old_log_prob), adv)


def _t(values, dtype=th.float32, requires_grad=False):
    return th.tensor(values, dtype=dtype, requires_grad=requires_grad)


# --------------------------------------------------------------------------- pseudo-entropy


@pytest.mark.parametrize(
    ("probs", "expected"),
    [
        ([0.5, 0.5], 0.5),
        ([1 / 3, 1 / 3, 1 / 3], 2 / 3),  # 1 - 1/N for a uniform distribution
        ([1.0, 0.0, 0.0], 0.0),
        ([0.7, 0.2, 0.1], 0.7 * 0.3 + 0.2 * 0.8 + 0.1 * 0.9),
    ],
)
def test_pseudo_entropy_hand_values(probs, expected):
    assert pseudo_entropy(_t(probs)).item() == pytest.approx(expected, abs=1e-6)


def test_pseudo_entropy_is_per_state():
    probs = _t([[0.5, 0.5], [0.9, 0.1]])
    np.testing.assert_allclose(pseudo_entropy(probs).numpy(), [0.5, 0.18], atol=1e-6)


def test_joint_pseudo_entropy_matches_enumeration_of_joint_actions():
    rng = np.random.default_rng(0)
    components = [rng.dirichlet(np.ones(n)) for n in (3, 2, 4)]
    joint = [
        math.prod(p[i] for p, i in zip(components, idx, strict=True))
        for idx in itertools.product(*(range(len(p)) for p in components))
    ]
    brute_force = sum(p * (1 - p) for p in joint)
    per_component = th.stack([pseudo_entropy(_t(p, th.float64)) for p in components])
    assert joint_pseudo_entropy(per_component).item() == pytest.approx(brute_force, rel=1e-12)


def test_bernoulli_pseudo_entropy_matches_enumeration():
    probs = [0.1, 0.5, 0.8]
    joint = [
        math.prod(p if bit else 1 - p for p, bit in zip(probs, bits, strict=True))
        for bits in itertools.product((0, 1), repeat=3)
    ]
    brute_force = sum(p * (1 - p) for p in joint)
    components = bernoulli_pseudo_entropy(_t(probs, th.float64))
    np.testing.assert_allclose(components.numpy(), [2 * 0.1 * 0.9, 0.5, 2 * 0.8 * 0.2])
    assert joint_pseudo_entropy(components).item() == pytest.approx(brute_force, rel=1e-12)


# --------------------------------------------------------------------------- target ratio


def test_absolute_target_is_ppo_clip():
    ratio = target_ratio(_t([0.0, 0.0, 0.0]), _t([2.0, -3.0, 0.0]), 0.2, "absolute")
    np.testing.assert_allclose(ratio.numpy(), [1.2, 0.8, 1.0], atol=1e-7)


@pytest.mark.parametrize(
    ("old_prob", "advantage", "expected_ratio"),
    [
        (0.5, 1.0, 1.2),  # equal to the absolute target at π_old = 1/2
        (0.5, -1.0, 0.8),
        (0.9, 1.0, 1.2 / 1.16),  # (1 + ε) / (1 + ε(2·0.9 − 1))
        (0.9, -1.0, 0.8 / 0.84),
        (0.1, 1.0, 1.2 / 0.84),
        (0.1, -1.0, 0.8 / 1.16),
    ],
)
def test_logit_target_hand_values(old_prob, advantage, expected_ratio):
    ratio = target_ratio(_t([math.log(old_prob)]), _t([advantage]), 0.2, "logit")
    assert ratio.item() == pytest.approx(expected_ratio, rel=1e-6)


@given(
    old_prob=st.floats(1e-4, 1 - 1e-4),
    epsilon=st.floats(0.01, 0.9),
    sign=st.sampled_from([-1.0, 1.0]),
)
@settings(max_examples=100, deadline=None)
def test_logit_target_is_a_fixed_step_in_logit_space(old_prob, epsilon, sign):
    ratio = target_ratio(_t([math.log(old_prob)], th.float64), _t([sign], th.float64), epsilon, "logit").item()
    target_prob = old_prob * ratio
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    assert logit(target_prob) - logit(old_prob) == pytest.approx(
        sign * math.log((1 + epsilon) / (1 - epsilon)), abs=1e-9
    )
    # the seed's symmetry π'(π_old, A) = 1 − π'(1 − π_old, −A)
    mirrored = (1 - old_prob) * target_ratio(
        _t([math.log(1 - old_prob)], th.float64), _t([-sign], th.float64), epsilon, "logit"
    ).item()
    assert target_prob == pytest.approx(1 - mirrored, abs=1e-12)


def test_target_ratio_rejects_unknown_mode():
    with pytest.raises(ValueError, match="delta_target_policy"):
        target_ratio(_t([0.0]), _t([1.0]), 0.2, "logits")


# --------------------------------------------------------------------------- clipped / peaked loss

# four samples with ε = 0.2: two inside the target, two beyond it
ADV = [1.0, 1.0, -1.0, -1.0]
RATIO = [1.1, 1.5, 0.9, 0.5]
EPS = 0.2


def _loss_and_grad(loss_fn, ratio=RATIO, adv=ADV, old_prob=None, **kwargs):
    old_log_prob = _t([math.log(p) for p in old_prob]) if old_prob else _t([0.0] * len(ratio))
    log_prob = (old_log_prob + _t([math.log(r) for r in ratio])).detach().requires_grad_(True)
    loss = loss_fn(log_prob, old_log_prob, _t(adv), EPS, **kwargs)
    loss.backward()
    return loss.item(), log_prob.grad.numpy()


def test_clipped_loss_equals_sb3_value_and_gradient():
    value, grad = _loss_and_grad(policy_loss)
    assert value == pytest.approx((-1.1 - 1.2 + 0.9 + 0.8) / 4, abs=1e-6)
    # SB3's expression, computed independently
    old_log_prob = th.zeros(4)
    log_prob = th.log(_t(RATIO)).requires_grad_(True)
    ratio = th.exp(log_prob - old_log_prob)
    adv = _t(ADV)
    sb3 = -th.min(adv * ratio, adv * th.clamp(ratio, 1 - EPS, 1 + EPS)).mean()
    sb3.backward()
    assert value == pytest.approx(sb3.item(), abs=1e-6)
    np.testing.assert_allclose(grad, log_prob.grad.numpy(), atol=1e-7)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_gradient_is_minus_a_r_inside_and_plus_alpha_a_r_beyond(alpha):
    _, grad = _loss_and_grad(policy_loss, peaked_policy_loss=alpha)
    expected = np.array([-1.0 * 1.1, alpha * 1.0 * 1.5, 1.0 * 0.9, alpha * -1.0 * 0.5]) / 4
    np.testing.assert_allclose(grad, expected, atol=1e-6)


def test_peaked_loss_value_is_absolute_distance_minus_constant():
    value, _ = _loss_and_grad(policy_loss, peaked_policy_loss=True)
    # |A(r' − r)| − A r' per sample: −1.1, 0.3 − 1.2, 0.1 + 0.8, 0.3 + 0.8
    assert value == pytest.approx((-1.1 - 0.9 + 0.9 + 1.1) / 4, abs=1e-6)


def test_logit_target_moves_the_clip_point():
    # π_old = 0.9, A > 0: the logit target is r' = 1.2/1.16 ≈ 1.0345, so r = 1.1 is already past it
    _, grad_logit = _loss_and_grad(policy_loss, ratio=[1.1], adv=[1.0], old_prob=[0.9], delta_target_policy="logit")
    _, grad_abs = _loss_and_grad(policy_loss, ratio=[1.1], adv=[1.0], old_prob=[0.9], delta_target_policy="absolute")
    assert grad_logit[0] == 0.0
    assert grad_abs[0] == pytest.approx(-1.1, abs=1e-6)


def test_restoring_slope_mapping_and_bounds():
    assert restoring_slope(False) == 0.0
    assert restoring_slope(True) == 1.0
    assert restoring_slope(0.25) == 0.25
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="peaked_policy_loss"):
            restoring_slope(bad)


def test_trust_region_statistics_per_sample():
    ratio = _t(RATIO)
    target = target_ratio(th.zeros(4), _t(ADV), EPS)
    columns = trust_region_statistics(ratio, target, _t(ADV), EPS)
    above, below, past_target, target_deviation, change = columns.T.tolist()
    assert above == [0.0, 1.0, 0.0, 0.0] and below == [0.0, 0.0, 0.0, 1.0]
    assert past_target == [0.0, 1.0, 0.0, 1.0]
    np.testing.assert_allclose(target_deviation, [0.1, 0.3, 0.1, 0.3], atol=1e-6)
    np.testing.assert_allclose(change, [0.1, 0.5, 0.1, 0.5], atol=1e-6)
    # SB3's clip fraction, |r − 1| > ε
    assert (columns[:, 0] + columns[:, 1]).mean().item() == th.mean((th.abs(ratio - 1) > EPS).float()).item()
    # asymmetric: 1.5 is inside 1 + ε_high = 1.6
    assert trust_region_statistics(ratio, target, _t(ADV), EPS, 0.6)[:, 0].tolist() == [0.0] * 4


# --------------------------------------------------------------------------- SPO


def test_spo_value_and_gradient_match_the_paper():
    value, grad = _loss_and_grad(spo_policy_loss)
    r, a = np.array(RATIO), np.array(ADV)
    objective = r * a - np.abs(a) / (2 * EPS) * (r - 1) ** 2
    assert value == pytest.approx(-objective.mean(), abs=1e-6)
    # d(−J)/d log π = −(A − |A|(r − 1)/ε) · r, over the mean's N
    expected = -(a - np.abs(a) * (r - 1) / EPS) * r / len(r)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("mode", "old_prob", "adv"),
    [("absolute", 0.3, 2.0), ("absolute", 0.3, -2.0), ("logit", 0.9, 1.0), ("logit", 0.1, -1.0)],
)
def test_spo_minimum_sits_at_the_target_ratio(mode, old_prob, adv):
    ratios = np.linspace(0.5, 1.6, 11001)
    old_log_prob = th.full((len(ratios),), math.log(old_prob), dtype=th.float64)
    log_prob = old_log_prob + th.log(th.tensor(ratios))
    advantages = th.full((len(ratios),), adv, dtype=th.float64)
    # per-sample losses: evaluate the mean loss of one sample at a time
    losses = [
        spo_policy_loss(log_prob[i : i + 1], old_log_prob[i : i + 1], advantages[i : i + 1], EPS, mode).item()
        for i in range(len(ratios))
    ]
    if mode == "absolute":
        expected = 1 + EPS * np.sign(adv)
    else:
        s = np.sign(adv)
        expected = (1 + EPS * s) / (1 + EPS * s * (2 * old_prob - 1))
    assert ratios[int(np.argmin(losses))] == pytest.approx(expected, abs=2e-4)


def test_unclipped_loss_is_minus_ratio_times_advantage():
    value, grad = _loss_and_grad(
        lambda lp, old, a, _eps: unclipped_policy_loss(lp, old, a), ratio=[1.5, 0.5], adv=[2.0, -1.0]
    )
    assert value == pytest.approx(-(1.5 * 2 - 0.5) / 2, abs=1e-6)
    np.testing.assert_allclose(grad, [-1.5 * 2 / 2, 0.5 / 2], atol=1e-6)


# --------------------------------------------------------------------------- KL


def test_approx_kl_matches_exact_kl_in_expectation():
    old = Categorical(probs=_t([0.6, 0.3, 0.1], th.float64))
    new = Categorical(probs=_t([0.5, 0.3, 0.2], th.float64))
    actions = th.arange(3)
    # E_old[(r − 1) − log r], written as a weighted sum over the three actions
    per_action = th.stack([approx_kl(new.log_prob(a)[None], old.log_prob(a)[None]) for a in actions])
    assert (old.probs * per_action).sum().item() == pytest.approx(th.distributions.kl_divergence(old, new).item())


@pytest.mark.parametrize(("kl", "expected"), [(0.005, 0.5), (0.0067, 1.0), (0.01, 1.0), (0.015, 1.0), (0.02, 2.0)])
def test_adaptive_kl_coefficient_follows_the_paper(kl, expected):
    assert adapt_kl_coef(1.0, kl, 0.01, factor=2.0, tolerance=1.5) == expected


# --------------------------------------------------------------------------- numerical safety

log_ratios = st.floats(-20.0, 20.0)
old_log_probs = st.floats(math.log(1e-30), 0.0)
advantages = st.floats(-1e6, 1e6)


@given(
    log_ratio=st.lists(log_ratios, min_size=1, max_size=8),
    old_log_prob=old_log_probs,
    advantage=advantages,
    epsilon=st.one_of(st.floats(1e-4, 1 - 1e-6), st.sampled_from([1e-4, 0.5, 1 - 1e-6])),
    mode=st.sampled_from(["absolute", "logit"]),
    surrogate=st.sampled_from(["clipped", "peaked", "rollback", "spo", "unclipped"]),
)
@settings(max_examples=300, deadline=None)
def test_losses_and_gradients_stay_finite(log_ratio, old_log_prob, advantage, epsilon, mode, surrogate):
    n = len(log_ratio)
    old = th.full((n,), old_log_prob)
    adv = th.linspace(-1.0, 1.0, n) * advantage if n > 1 else th.tensor([advantage])
    log_prob = (old + th.tensor(log_ratio)).requires_grad_(True)
    if surrogate == "spo":
        loss = spo_policy_loss(log_prob, old, adv, epsilon, mode)
    elif surrogate == "unclipped":
        loss = unclipped_policy_loss(log_prob, old, adv)
    else:
        alpha = {"clipped": False, "peaked": True, "rollback": 0.3}[surrogate]
        loss = policy_loss(log_prob, old, adv, epsilon, mode, alpha)
    loss.backward()
    assert th.isfinite(loss)
    assert th.isfinite(log_prob.grad).all()
    ratio = target_ratio(old, adv, epsilon, mode)
    assert th.isfinite(ratio).all() and (ratio >= 0).all()


@given(logits=st.lists(st.floats(-60.0, 60.0), min_size=2, max_size=6))
@settings(max_examples=200, deadline=None)
def test_pseudo_entropy_is_bounded_and_finite(logits):
    probs = Categorical(logits=th.tensor(logits)).probs
    value = pseudo_entropy(probs).item()
    n = len(logits)
    assert 0.0 <= value <= 1 - 1 / n + 1e-6


def test_exact_kl_normal_matches_closed_form():
    from stable_baselines3.common.distributions import DiagGaussianDistribution

    from sb3_ppo_variants.distributions import distribution_parameters, exact_kl

    dist = DiagGaussianDistribution(2)
    dist.proba_distribution(_t([[0.0, 1.0]]), th.log(_t([1.0, 2.0])))
    old = distribution_parameters(dist)
    dist.proba_distribution(_t([[0.5, 1.0]]), th.log(_t([2.0, 2.0])))
    # KL(N(0,1) ‖ N(0.5,2)) + KL(N(1,2) ‖ N(1,2))
    expected = math.log(2 / 1) + (1 + 0.25) / (2 * 4) - 0.5
    assert exact_kl(old, dist).item() == pytest.approx(expected, rel=1e-5)
    assert Normal(0.0, 1.0).stddev.item() == 1.0


def test_exact_kl_multicategorical_matches_joint_enumeration():
    from stable_baselines3.common.distributions import BernoulliDistribution, MultiCategoricalDistribution

    from sb3_ppo_variants.distributions import action_pseudo_entropy, distribution_parameters, exact_kl

    gen = th.Generator().manual_seed(0)
    old_logits, new_logits = (
        th.randn(1, 5, generator=gen, dtype=th.float64),
        th.randn(1, 5, generator=gen, dtype=th.float64),
    )
    dist = MultiCategoricalDistribution([3, 2])
    dist.proba_distribution(old_logits)
    old = distribution_parameters(dist)
    old_joint = [c.probs[0] for c in dist.distribution]
    dist.proba_distribution(new_logits)
    new_joint = [c.probs[0] for c in dist.distribution]
    kl = 0.0
    h = 0.0
    for i, j in itertools.product(range(3), range(2)):
        p = (old_joint[0][i] * old_joint[1][j]).item()
        q = (new_joint[0][i] * new_joint[1][j]).item()
        kl += p * math.log(p / q)
        h += q * (1 - q)
    assert exact_kl(old, dist).item() == pytest.approx(kl, rel=1e-10)
    assert action_pseudo_entropy(dist).item() == pytest.approx(h, rel=1e-10)

    bern = BernoulliDistribution(2)
    bern.proba_distribution(_t([[0.0, 2.0]], th.float64))
    old = distribution_parameters(bern)
    bern.proba_distribution(_t([[1.0, -1.0]], th.float64))
    p_old, p_new = th.sigmoid(_t([0.0, 2.0], th.float64)), th.sigmoid(_t([1.0, -1.0], th.float64))
    expected = sum(
        (
            Bernoulli(p_old[k]).log_prob(th.tensor(b, dtype=th.float64)).exp()
            * (
                Bernoulli(p_old[k]).log_prob(th.tensor(b, dtype=th.float64))
                - Bernoulli(p_new[k]).log_prob(th.tensor(b, dtype=th.float64))
            )
        ).item()
        for k in range(2)
        for b in (0.0, 1.0)
    )
    assert exact_kl(old, bern).item() == pytest.approx(expected, rel=1e-10)


def test_closed_form_kls_match_torch_distributions():
    from torch.distributions import kl_divergence

    from sb3_ppo_variants.objectives import bernoulli_kl, categorical_kl, normal_kl

    gen = th.Generator().manual_seed(1)
    a, b = th.randn(5, 4, generator=gen, dtype=th.float64), th.randn(5, 4, generator=gen, dtype=th.float64)
    th.testing.assert_close(categorical_kl(a, b), kl_divergence(Categorical(logits=a), Categorical(logits=b)))
    th.testing.assert_close(bernoulli_kl(a, b), kl_divergence(Bernoulli(logits=a), Bernoulli(logits=b)))
    s0, s1 = a.exp(), b.exp()
    th.testing.assert_close(normal_kl(b, s0, a, s1), kl_divergence(Normal(b, s0), Normal(a, s1)))
    assert categorical_kl(a, a).abs().max().item() < 1e-12
