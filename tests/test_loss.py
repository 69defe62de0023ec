"""The one loss function: each option against values computed by hand, padding, and SB3's own expressions."""

from __future__ import annotations

import math
import statistics

import pytest
import torch as th
from stable_baselines3.common.distributions import CategoricalDistribution
from torch.nn import functional as F

from sb3_ppo_variants.loss import LossOptions, Minibatch, PolicyEvaluation, policy_evaluation, variant_ppo_loss

th.set_num_threads(1)

RATIO = [1.5, 0.5, 1.1, 0.9]
ADVANTAGES = [1.0, -2.0, 3.0, 0.5]
VALUES = [1.0, 2.0, 3.0, 4.0]
RETURNS = [1.5, 2.0, 2.0, 4.0]
ENTROPY = [0.5, 0.6, 0.7, 0.2]
OLD_PROB = [0.2, 0.5, 0.4, 0.9]


def _tensor(values):
    return th.tensor(values, dtype=th.float64)


def _inputs(ratio=RATIO, advantages=ADVANTAGES, values=VALUES, returns=RETURNS, entropy=ENTROPY, old_prob=OLD_PROB):
    """Leaves ``log π`` and ``V`` with gradient, and a minibatch whose ``π_old`` gives the wanted ratios."""
    old_log_prob = _tensor(old_prob).log()
    log_prob = (old_log_prob + _tensor(ratio).log()).detach().requires_grad_(True)
    value_leaf = _tensor(values).requires_grad_(True)
    evaluation = PolicyEvaluation(value_leaf, log_prob, _tensor(entropy))
    minibatch = Minibatch(_tensor(advantages), _tensor(returns), _tensor(values), old_log_prob)
    return evaluation, minibatch


def _mean(values):
    return sum(values) / len(values)


def test_clipped_loss_value_gradients_and_statistics_by_hand():
    options = LossOptions(clip_range=0.2, ent_coef=0.1, vf_coef=0.5, normalize_advantage=False)
    evaluation, minibatch = _inputs()
    loss, stats, state = variant_ppo_loss(options, evaluation, minibatch)

    # min(r A, clip(r, 0.8, 1.2) A): 1.2, −1.6, 3.3, 0.45
    policy_loss = -(1.2 - 1.6 + 3.3 + 0.45) / 4
    value_loss = (0.25 + 0.0 + 1.0 + 0.0) / 4
    assert stats.policy_loss.item() == pytest.approx(policy_loss, abs=1e-12)
    assert stats.value_loss.item() == pytest.approx(value_loss, abs=1e-12)
    assert stats.entropy_loss.item() == pytest.approx(-0.5, abs=1e-12)
    assert loss.item() == pytest.approx(policy_loss + 0.1 * -0.5 + 0.5 * value_loss, abs=1e-12)
    expected_kl = _mean([(r - 1.0) - math.log(r) for r in RATIO])
    assert stats.approx_kl.item() == pytest.approx(expected_kl, abs=1e-12)
    assert stats.ratio.tolist() == pytest.approx(RATIO)
    assert stats.target.tolist() == pytest.approx([1.2, 0.8, 1.2, 1.2])
    assert stats.value_loss_scale is None and stats.kl is None and stats.feature_drift is None
    assert state is None
    assert not any(tensor.requires_grad for tensor in (stats.policy_loss, stats.value_loss, stats.ratio))

    loss.backward()
    # ∂L/∂log π = −A r / n inside the clip range, 0 where clipped (the first two samples)
    assert evaluation.log_prob.grad.tolist() == pytest.approx([0.0, 0.0, -3.0 * 1.1 / 4, -0.5 * 0.9 / 4])
    # ∂L/∂V = c_vf · 2 (V − R) / n
    assert evaluation.values.grad.tolist() == pytest.approx(
        [0.5 * 2 * (v - r) / 4 for v, r in zip(VALUES, RETURNS, strict=True)]
    )


def test_default_path_is_sb3_ppo_expressions_bit_for_bit():
    generator = th.Generator().manual_seed(0)
    log_prob = th.randn(64, generator=generator).requires_grad_(True)
    values = th.randn(64, generator=generator).requires_grad_(True)
    entropy = th.rand(64, generator=generator).requires_grad_(True)
    old_log_prob, old_values, advantages, returns = th.randn(4, 64, generator=generator)
    clip_range, clip_range_vf, ent_coef, vf_coef = 0.2, 0.3, 0.01, 0.5

    # stable_baselines3/ppo/ppo.py, PPO.train(), with clip_range_vf
    normalized = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    ratio = th.exp(log_prob - old_log_prob)
    policy_loss = -th.min(normalized * ratio, normalized * th.clamp(ratio, 1 - clip_range, 1 + clip_range)).mean()
    values_pred = old_values + th.clamp(values - old_values, -clip_range_vf, clip_range_vf)
    value_loss = F.mse_loss(returns, values_pred)
    entropy_loss = -th.mean(entropy)
    expected = policy_loss + ent_coef * entropy_loss + vf_coef * value_loss
    expected_grads = th.autograd.grad(expected, (log_prob, values, entropy))

    options = LossOptions(clip_range=clip_range, clip_range_vf=clip_range_vf, ent_coef=ent_coef, vf_coef=vf_coef)
    minibatch = Minibatch(advantages, returns, old_values, old_log_prob)
    loss, stats, _ = variant_ppo_loss(options, PolicyEvaluation(values, log_prob, entropy), minibatch)
    # the surrogate is written as max(0, A(r' − r)) − A r' (objectives.clipped_surrogate): its value may
    # differ from SB3's in the last bit, its gradient, and so the training, is SB3's exactly
    th.testing.assert_close(loss, expected, rtol=1e-6, atol=0.0)
    for actual, wanted in zip(th.autograd.grad(loss, (log_prob, values, entropy)), expected_grads, strict=True):
        assert th.equal(actual, wanted)
    assert th.equal(stats.value_loss, value_loss.detach())
    with th.no_grad():
        log_ratio = log_prob - old_log_prob
        assert th.equal(stats.approx_kl, th.mean((th.exp(log_ratio) - 1) - log_ratio))


def test_without_closed_form_entropy_the_entropy_loss_is_mean_log_prob():
    evaluation, minibatch = _inputs()
    _, stats, _ = variant_ppo_loss(LossOptions(clip_range=0.2), evaluation._replace(entropy=None), minibatch)
    assert stats.entropy_loss.item() == pytest.approx(
        _mean([math.log(p * r) for p, r in zip(OLD_PROB, RATIO, strict=True)])
    )


def test_per_state_value_rescaling_weighs_each_error_by_its_pseudo_entropy():
    pseudo_entropy = [0.1, 0.5, 0.2, 0.8]
    options = LossOptions(clip_range=0.2, value_grad_rescaling="per_state", vf_coef=1.0, normalize_advantage=False)
    evaluation, minibatch = _inputs()
    evaluation = evaluation._replace(pseudo_entropy=_tensor(pseudo_entropy).requires_grad_(True))
    loss, stats, _ = variant_ppo_loss(options, evaluation, minibatch)

    errors = [(v - r) ** 2 for v, r in zip(VALUES, RETURNS, strict=True)]
    assert stats.value_loss.item() == pytest.approx(_mean(errors))  # logged unweighted
    assert stats.value_loss_scale.item() == pytest.approx(_mean(pseudo_entropy))
    assert loss.item() == pytest.approx(
        stats.policy_loss.item() + _mean([h * e for h, e in zip(pseudo_entropy, errors, strict=True)])
    )
    loss.backward()
    assert evaluation.pseudo_entropy.grad is None  # the weight carries no gradient
    assert evaluation.values.grad.tolist() == pytest.approx(
        [h * 2 * (v - r) / 4 for h, v, r in zip(pseudo_entropy, VALUES, RETURNS, strict=True)]
    )


def test_smoothed_value_rescaling_carries_its_running_mean():
    pseudo_entropy = [0.1, 0.5, 0.2, 0.8]
    options = LossOptions(clip_range=0.2, value_grad_rescaling="smoothed", pseudo_entropy_smoothing=0.9, vf_coef=1.0)
    evaluation, minibatch = _inputs()
    evaluation = evaluation._replace(pseudo_entropy=_tensor(pseudo_entropy))
    loss, stats, state = variant_ppo_loss(options, evaluation, minibatch, pseudo_entropy_average=0.5)
    smoothed = 0.9 * 0.5 + 0.1 * _mean(pseudo_entropy)
    assert float(state) == pytest.approx(smoothed)
    assert stats.value_loss_scale.item() == pytest.approx(smoothed)
    assert loss.item() == pytest.approx(stats.policy_loss.item() + smoothed * stats.value_loss.item())
    # the first minibatch starts the mean at its own
    _, _, first = variant_ppo_loss(options, evaluation, minibatch, pseudo_entropy_average=None)
    assert float(first) == pytest.approx(_mean(pseudo_entropy))


def test_logit_target_and_dual_clip_by_hand():
    epsilon, bound = 0.2, 1.4
    options = LossOptions(clip_range=epsilon, delta_target_policy="logit", dual_clip=bound, normalize_advantage=False)
    # the last sample: A < 0 and r = 1.5 > c, cut to the constant −c A by the dual clip
    ratio, advantages = [1.5, 0.5, 1.1, 1.5], [1.0, -2.0, 3.0, -0.5]
    evaluation, minibatch = _inputs(ratio=ratio, advantages=advantages)
    loss, stats, _ = variant_ppo_loss(options, evaluation, minibatch)

    def logit_target(old_prob, advantage):
        step = epsilon * math.copysign(1.0, advantage)
        return (1 + step) / (1 + step * (2 * old_prob - 1))

    targets = [logit_target(p, a) for p, a in zip(OLD_PROB, advantages, strict=True)]
    assert stats.target.tolist() == pytest.approx(targets, rel=1e-12)
    # −A min(r, r') for A > 0, −A max(r, r') for A < 0; the last sample is cut to −c A
    per_sample = [-a * (min(r, t) if a > 0 else max(r, t)) for r, a, t in zip(ratio, advantages, targets, strict=True)]
    assert per_sample[3] == pytest.approx(0.75)
    per_sample[3] = bound * 0.5
    assert stats.policy_loss.item() == pytest.approx(_mean(per_sample), rel=1e-12)
    loss.backward()
    assert evaluation.log_prob.grad[3].item() == 0.0


def test_restoring_slope_pulls_back_beyond_the_target():
    options = LossOptions(clip_range=0.2, restoring_slope=0.5, vf_coef=0.0, normalize_advantage=False)
    evaluation, minibatch = _inputs()
    loss, _, _ = variant_ppo_loss(options, evaluation, minibatch)
    # beyond the target: −A r' + α A (r − r'); inside: −A r
    expected = [-1.2 + 0.5 * 1.0 * 0.3, 1.6 + 0.5 * 2.0 * 0.3, -3.3, -0.45]
    assert loss.item() == pytest.approx(_mean(expected), abs=1e-12)
    loss.backward()
    assert evaluation.log_prob.grad.tolist() == pytest.approx(
        [0.5 * 1.0 * 1.5 / 4, 0.5 * -2.0 * 0.5 / 4, -3.0 * 1.1 / 4, -0.5 * 0.9 / 4]
    )


def test_kl_penalty_and_truly_ppo_trust_region_by_hand():
    kl = [0.01, 0.05, 0.002, 0.04]
    evaluation, minibatch = _inputs()
    evaluation = evaluation._replace(kl=_tensor(kl).requires_grad_(True))

    penalty = LossOptions(clip_range=0.2, surrogate="unclipped", kl_coef=2.0, vf_coef=0.0, normalize_advantage=False)
    loss, stats, _ = variant_ppo_loss(penalty, evaluation, minibatch)
    assert loss.item() == pytest.approx(
        -_mean([r * a for r, a in zip(RATIO, ADVANTAGES, strict=True)]) + 2.0 * _mean(kl)
    )
    assert stats.kl.tolist() == kl

    # δ = 0.03 for this update: triggered where KL ≥ δ and r A > A (only the first sample, KL 0.01, is not
    # past the bound; the second has r A = −1 > −2 and KL 0.05; the fourth has r A = 0.45 < 0.5)
    region = LossOptions(
        clip_range=0.2, kl_trust_region=0.03, restoring_slope=5.0, vf_coef=0.0, normalize_advantage=False
    )
    loss, _, _ = variant_ppo_loss(region, evaluation, minibatch)
    objective = [1.5, -1.0 - 5.0 * 0.05, 3.3, 0.45]
    assert loss.item() == pytest.approx(-_mean(objective), abs=1e-12)
    loss.backward()
    assert evaluation.kl.grad.tolist() == pytest.approx([0.0, 5.0 / 4, 0.0, 0.0])


def test_feature_drift_is_added_with_its_coefficient():
    features = th.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, 1.0], [1.0, 1.0]], dtype=th.float64, requires_grad=True)
    old_features = th.tensor([[1.0, 1.0], [0.0, 2.0], [3.0, 1.0], [0.0, 1.0]], dtype=th.float64)
    evaluation, minibatch = _inputs()
    options = LossOptions(clip_range=0.2, feature_drift_coef=0.5, normalize_advantage=False)
    plain, _, _ = variant_ppo_loss(LossOptions(clip_range=0.2, normalize_advantage=False), evaluation, minibatch)
    loss, stats, _ = variant_ppo_loss(
        options, evaluation._replace(features=features), minibatch._replace(old_features=old_features)
    )
    assert stats.feature_drift.item() == pytest.approx((1 + 4 + 1) / 8)
    assert loss.item() == pytest.approx(plain.item() + 0.5 * 6 / 8)


def test_the_mask_leaves_padded_samples_out_of_every_mean():
    """A padded fifth sample with absurd values changes nothing: every mean runs over the four real samples."""
    pseudo_entropy, kl = [0.1, 0.5, 0.2, 0.8], [0.01, 0.05, 0.002, 0.04]
    features = [[1.0, 2.0], [0.0, 0.0], [3.0, 1.0], [1.0, 1.0]]
    old_features = [[1.0, 1.0], [0.0, 2.0], [3.0, 1.0], [0.0, 1.0]]
    options = LossOptions(
        clip_range=0.2,
        value_grad_rescaling="smoothed",
        pseudo_entropy_smoothing=0.9,
        kl_coef=2.0,
        feature_drift_coef=0.5,
        ent_coef=0.1,
        vf_coef=0.5,
    )

    def run(padding):
        n = 4 + len(padding)
        evaluation, minibatch = _inputs(
            ratio=RATIO + [3.0] * len(padding),
            advantages=ADVANTAGES + padding,
            values=VALUES + [50.0] * len(padding),
            returns=RETURNS + [-50.0] * len(padding),
            entropy=ENTROPY + [9.0] * len(padding),
            old_prob=OLD_PROB + [0.01] * len(padding),
        )
        evaluation = evaluation._replace(
            pseudo_entropy=_tensor(pseudo_entropy + [0.99] * len(padding)),
            kl=_tensor(kl + [7.0] * len(padding)).requires_grad_(True),
            features=_tensor(features + [[9.0, 9.0]] * len(padding)).requires_grad_(True),
        )
        mask = th.tensor([True] * 4 + [False] * len(padding))
        minibatch = minibatch._replace(old_features=_tensor(old_features + [[0.0, 0.0]] * len(padding)), mask=mask)
        loss, stats, state = variant_ppo_loss(options, evaluation, minibatch, pseudo_entropy_average=0.5)
        loss.backward()
        assert evaluation.log_prob.grad.shape == (n,)
        return loss, stats, state, evaluation

    loss, stats, state, evaluation = run([100.0])

    # by hand, over the four real samples only
    mean = statistics.fmean(ADVANTAGES)
    std = statistics.stdev(ADVANTAGES)  # unbiased, as torch.std
    normalized = [(a - mean) / (std + 1e-8) for a in ADVANTAGES]
    policy = _mean([-min(r * a, min(max(r, 0.8), 1.2) * a) for r, a in zip(RATIO, normalized, strict=True)])
    value = _mean([(v - r) ** 2 for v, r in zip(VALUES, RETURNS, strict=True)])
    smoothed = 0.9 * 0.5 + 0.1 * _mean(pseudo_entropy)
    drift = (1 + 4 + 1) / 8
    expected = policy + 0.1 * -_mean(ENTROPY) + 0.5 * smoothed * value + 2.0 * _mean(kl) + 0.5 * drift
    assert stats.advantages.tolist() == pytest.approx(normalized, rel=1e-9)
    assert stats.policy_loss.item() == pytest.approx(policy, rel=1e-9)
    assert stats.value_loss.item() == pytest.approx(value, rel=1e-9)
    assert stats.entropy_loss.item() == pytest.approx(-_mean(ENTROPY), rel=1e-9)
    assert float(state) == pytest.approx(smoothed, rel=1e-9)
    assert stats.feature_drift.item() == pytest.approx(drift, rel=1e-9)
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    assert stats.approx_kl.item() == pytest.approx(_mean([(r - 1.0) - math.log(r) for r in RATIO]), rel=1e-9)
    # per-sample statistics hold the real samples only
    assert stats.ratio.tolist() == pytest.approx(RATIO) and stats.kl.tolist() == pytest.approx(kl)
    assert len(stats.target) == 4
    # no gradient reaches a padded sample
    assert evaluation.log_prob.grad[4].item() == 0.0 and evaluation.values.grad[4].item() == 0.0
    assert evaluation.kl.grad[4].item() == 0.0 and evaluation.features.grad[4].abs().sum().item() == 0.0

    # and the same as the four samples without padding
    unpadded_loss, unpadded, unpadded_state, _ = run([])
    assert loss.item() == pytest.approx(unpadded_loss.item(), rel=1e-12)
    assert float(state) == pytest.approx(float(unpadded_state), rel=1e-12)
    assert stats.approx_kl.item() == pytest.approx(unpadded.approx_kl.item(), rel=1e-12)


def test_policy_evaluation_computes_only_what_the_options_need():
    distribution = CategoricalDistribution(3).proba_distribution(th.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]]))
    old = th.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 3.0]])
    values, log_prob = th.zeros(2), th.zeros(2)
    plain = policy_evaluation(LossOptions(clip_range=0.2), values, log_prob, None, distribution, old)
    assert plain.kl is None and plain.pseudo_entropy is None
    options = LossOptions(clip_range=0.2, kl_trust_region=0.03, value_grad_rescaling="per_state")
    evaluation = policy_evaluation(options, values, log_prob, None, distribution, old)
    probs = th.softmax(th.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]]), dim=-1)
    old_probs = th.softmax(old, dim=-1)
    th.testing.assert_close(evaluation.pseudo_entropy, (probs * (1 - probs)).sum(-1))
    th.testing.assert_close(evaluation.kl, (old_probs * (old_probs.log() - probs.log())).sum(-1))
