"""The per-minibatch loss of ``VariantPPO``: every option of the package in one pure function.

``variant_ppo_loss`` takes the options as resolved for one update, what the network computed for
one minibatch, the minibatch itself and the running state, and returns the loss, its statistics
and the new state. It reads no attribute of any algorithm and has no side effect, so the same maths
serves ``VariantPPO.train()``, sb3-contrib's algorithms and many agents trained in lock-step.

With every option off it computes SB3's own expressions (``F.mse_loss``, ``-th.mean(entropy)``, the
clipped surrogate), so that ``VariantPPO`` reproduces ``PPO`` bit for bit.

Padding (sb3-contrib's recurrent sequences) is a boolean ``mask`` over the samples: a padded sample
is left out of every mean, the losses, the advantage normalisation, the pseudo-entropy average, the
KL, the feature drift and the statistics, as ``th.mean(x[mask])`` in ``RecurrentPPO``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch as th
from stable_baselines3.common.distributions import Distribution
from torch.nn import functional as F

from sb3_ppo_variants import objectives
from sb3_ppo_variants.distributions import action_pseudo_entropy, exact_kl


@dataclass(frozen=True)
class LossOptions:
    """The options of one update's loss, with every schedule already evaluated.

    A term that is off is ``None``; any number, ``0`` included, adds its term.

    :param clip_range: ``ε`` (``ε_low`` with ``clip_range_high``) for this update
    :param clip_range_high: ``ε_high`` for this update, or ``None`` for ``ε_low``
    :param surrogate: ``"clipped"``, ``"spo"`` or ``"unclipped"``
    :param delta_target_policy: ``"absolute"`` or ``"logit"``
    :param restoring_slope: ``α``, the slope beyond the target (or the KL rollback with ``kl_trust_region``)
    :param dual_clip: the dual-clip bound ``c > 1``, or ``None``
    :param kl_trust_region: the per-state KL bound ``δ`` of TR-PPO for this update, or ``None``
    :param kl_coef: ``β`` of the KL penalty ``β mean KL(π_old ‖ π)`` for this update, or ``None``
    :param value_grad_rescaling: ``None``, ``"per_state"``, ``"per_batch"`` or ``"smoothed"``
    :param pseudo_entropy_smoothing: ``c`` of the running average of ``"smoothed"``
    :param feature_drift_coef: PFO's coefficient, or ``None``
    :param ent_coef: entropy coefficient
    :param vf_coef: value-loss coefficient
    :param clip_range_vf: value clipping for this update, or ``None``
    :param normalize_advantage: normalise the advantages over the minibatch
    """

    clip_range: float
    clip_range_high: float | None = None
    surrogate: str = "clipped"
    delta_target_policy: str = "absolute"
    restoring_slope: float = 0.0
    dual_clip: float | None = None
    kl_trust_region: float | None = None
    kl_coef: float | None = None
    value_grad_rescaling: str | None = None
    pseudo_entropy_smoothing: float = 0.99
    feature_drift_coef: float | None = None
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    clip_range_vf: float | None = None
    normalize_advantage: bool = True

    @property
    def uses_exact_kl(self) -> bool:
        """Whether the loss needs the exact per-state ``KL(π_old ‖ π)`` (penalty or trust region)."""
        return self.kl_coef is not None or self.kl_trust_region is not None

    @property
    def uses_pseudo_entropy(self) -> bool:
        """Whether the loss needs the per-state pseudo-entropy ``H'(s)``."""
        return self.value_grad_rescaling is not None


class PolicyEvaluation(NamedTuple):
    """What the current network computes on a minibatch, one row per sample."""

    values: th.Tensor
    """``V(s)``, flat."""
    log_prob: th.Tensor
    """``log π(a|s)`` of the taken actions."""
    entropy: th.Tensor | None
    """The entropy of ``π(·|s)``, or ``None`` where it has no closed form (``−log π`` is used)."""
    pseudo_entropy: th.Tensor | None = None
    """``H'(s)``, needed with ``value_grad_rescaling``."""
    kl: th.Tensor | None = None
    """The exact ``KL(π_old ‖ π)(s)`` with gradient, needed with the KL penalty or trust region."""
    features: th.Tensor | None = None
    """PFO's ``φ(s)``, needed with ``feature_drift_coef``."""


class Minibatch(NamedTuple):
    """The rollout's data for the samples of one minibatch."""

    advantages: th.Tensor
    returns: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    old_features: th.Tensor | None = None
    """PFO's ``φ_old(s)``, recorded during the rollout."""
    mask: th.Tensor | None = None
    """Boolean, ``False`` on padded samples; ``None``: every sample counts."""


class LossStatistics(NamedTuple):
    """The loss's diagnostics, all detached; per-sample ones hold the unpadded samples only."""

    policy_loss: th.Tensor
    value_loss: th.Tensor
    """``mean (R − V)²`` before any pseudo-entropy weight."""
    entropy_loss: th.Tensor
    approx_kl: th.Tensor
    """SB3's ``approx_kl``: ``mean((r − 1) − log r)``."""
    ratio: th.Tensor
    """``r`` per sample."""
    target: th.Tensor
    """``r'`` per sample."""
    advantages: th.Tensor
    """The advantages the surrogate used (normalised when asked), per sample."""
    value_loss_scale: th.Tensor | None = None
    """The mean pseudo-entropy weight of the value loss; ``None`` without rescaling."""
    kl: th.Tensor | None = None
    """``KL(π_old ‖ π)(s)`` per sample, when computed."""
    feature_drift: th.Tensor | None = None
    """PFO's ``mean((φ − φ_old)²)``, when on."""


def policy_evaluation(
    options: LossOptions,
    values: th.Tensor,
    log_prob: th.Tensor,
    entropy: th.Tensor | None,
    distribution: Distribution | None = None,
    old_distribution: th.Tensor | None = None,
    features: th.Tensor | None = None,
) -> PolicyEvaluation:
    """The network outputs ``variant_ppo_loss`` needs, from an SB3 action distribution.

    :param options: the update's options (they decide which quantities are computed).
    :param values: ``V(s)``, flat.
    :param log_prob: ``log π(a|s)``.
    :param entropy: the entropy per state, or ``None``.
    :param distribution: the current SB3 distribution of the minibatch's states, with gradient
        (needed for the exact KL and the pseudo-entropy).
    :param old_distribution: the rollout policy's ``distribution_parameters`` (needed for the exact KL).
    :param features: PFO's ``φ(s)``.
    :return: the evaluation.
    """
    kl = None
    if options.uses_exact_kl:
        assert distribution is not None and old_distribution is not None, "the exact KL needs both distributions"
        kl = exact_kl(old_distribution, distribution)
    state_pseudo_entropy = None
    if options.uses_pseudo_entropy:
        assert distribution is not None, "the pseudo-entropy needs the current distribution"
        state_pseudo_entropy = action_pseudo_entropy(distribution)
    return PolicyEvaluation(values, log_prob, entropy, state_pseudo_entropy, kl, features)


def _surrogate(
    options: LossOptions,
    ratio: th.Tensor,
    target: th.Tensor,
    advantages: th.Tensor,
    kl: th.Tensor | None,
    mask: th.Tensor | None,
) -> th.Tensor:
    if options.kl_trust_region is not None:
        assert kl is not None, "the KL trust region needs the exact KL"
        return objectives.kl_trust_region_surrogate(
            ratio, advantages, kl, options.kl_trust_region, options.restoring_slope, options.dual_clip, mask=mask
        )
    if options.surrogate == "spo":
        return objectives.spo_surrogate(ratio, target, advantages, options.clip_range, mask=mask)
    if options.surrogate == "unclipped":
        return objectives.unclipped_surrogate(ratio, advantages, mask=mask)
    return objectives.clipped_surrogate(
        ratio, target, advantages, options.restoring_slope, options.dual_clip, mask=mask
    )


def _kept(values: th.Tensor, mask: th.Tensor | None) -> th.Tensor:
    """The unpadded samples of a detached per-sample tensor."""
    values = values.detach()
    return values if mask is None else values[mask]


def variant_ppo_loss(
    options: LossOptions,
    evaluation: PolicyEvaluation,
    minibatch: Minibatch,
    pseudo_entropy_average: th.Tensor | float | None = None,
) -> tuple[th.Tensor, LossStatistics, th.Tensor | float | None]:
    """PPO's loss on one minibatch, with every option of the package.

    ``L = L_policy + c_ent L_entropy + c_vf w L_value [+ β mean KL] [+ c_PFO mean (φ − φ_old)²]``, where
    ``L_policy`` is the surrogate the options select (clipped toward the absolute or logit target,
    with restoring slope and dual clip, SPO, unclipped, or the KL-triggered trust region), and ``w``
    the pseudo-entropy weight of ``value_grad_rescaling`` (1 without it).

    :param options: the options for this update.
    :param evaluation: the current network's outputs on the minibatch.
    :param minibatch: the rollout's data for the same samples.
    :param pseudo_entropy_average: the smoothed pseudo-entropy before this minibatch (``None`` before the first).
    :return: the loss (with gradient), its statistics (detached, no device synchronisation) and the smoothed
        pseudo-entropy after this minibatch.
    """
    mask = minibatch.mask
    advantages = minibatch.advantages
    # Normalization does not make sense if mini batchsize == 1 (SB3 GH issue #325)
    if options.normalize_advantage and len(advantages) > 1:
        advantages = objectives.normalized_advantages(advantages, mask)

    ratio = objectives.probability_ratio(evaluation.log_prob, minibatch.old_log_prob)
    target = objectives.target_ratio(
        minibatch.old_log_prob, advantages, options.clip_range, options.delta_target_policy, options.clip_range_high
    )
    policy_loss = _surrogate(options, ratio, target, advantages, evaluation.kl, mask)

    values = evaluation.values
    if options.clip_range_vf is None:
        values_pred = values
    else:
        values_pred = minibatch.old_values + th.clamp(
            values - minibatch.old_values, -options.clip_range_vf, options.clip_range_vf
        )
    value_loss_scale: th.Tensor | None = None
    if options.value_grad_rescaling is None:
        # SB3's exact expression, so that the default options reproduce PPO bit for bit
        if mask is None:
            value_loss = F.mse_loss(minibatch.returns, values_pred)
        else:
            value_loss = objectives.masked_mean((minibatch.returns - values_pred) ** 2, mask)
        scaled_value_loss = value_loss
    else:
        weight, pseudo_entropy_average = objectives.value_loss_weight(
            options.value_grad_rescaling,
            evaluation.pseudo_entropy,
            pseudo_entropy_average,
            options.pseudo_entropy_smoothing,
            mask=mask,
        )
        if isinstance(weight, th.Tensor) and weight.dim() > 0:  # one weight per state
            value_errors = (minibatch.returns - values_pred) ** 2
            value_loss = objectives.masked_mean(value_errors, mask)
            scaled_value_loss = objectives.masked_mean(weight * value_errors, mask)
            value_loss_scale = objectives.masked_mean(weight, mask)
        else:  # one weight per minibatch: mean(w e) = w mean(e), one vector operation fewer
            if mask is None:
                value_loss = F.mse_loss(minibatch.returns, values_pred)
            else:
                value_loss = objectives.masked_mean((minibatch.returns - values_pred) ** 2, mask)
            scaled_value_loss = weight * value_loss
            value_loss_scale = th.as_tensor(weight)

    if evaluation.entropy is None:
        entropy_loss = -objectives.masked_mean(-evaluation.log_prob, mask)
    else:
        entropy_loss = -objectives.masked_mean(evaluation.entropy, mask)

    loss = policy_loss + options.ent_coef * entropy_loss + options.vf_coef * scaled_value_loss
    if options.kl_coef is not None:
        assert evaluation.kl is not None, "the KL penalty needs the exact KL"
        loss = loss + options.kl_coef * objectives.masked_mean(evaluation.kl, mask)
    drift = None
    if options.feature_drift_coef is not None:
        assert evaluation.features is not None and minibatch.old_features is not None, "PFO needs φ and φ_old"
        drift = objectives.feature_drift(evaluation.features, minibatch.old_features, mask=mask)
        loss = loss + options.feature_drift_coef * drift

    with th.no_grad():
        approx_kl = objectives.approx_kl(evaluation.log_prob, minibatch.old_log_prob, mask=mask)
    statistics = LossStatistics(
        policy_loss=policy_loss.detach(),
        value_loss=value_loss.detach(),
        entropy_loss=entropy_loss.detach(),
        approx_kl=approx_kl,
        ratio=_kept(ratio, mask),
        target=_kept(target, mask),
        advantages=_kept(advantages, mask),
        value_loss_scale=None if value_loss_scale is None else value_loss_scale.detach(),
        kl=None if evaluation.kl is None else _kept(evaluation.kl, mask),
        feature_drift=None if drift is None else drift.detach(),
    )
    return loss, statistics, pseudo_entropy_average
