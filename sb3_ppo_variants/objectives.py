"""Pure objectives of the PPO variants.

Every function here is a small, differentiable piece of maths named after the
quantity it computes. ``loss.variant_ppo_loss`` wires them together into one
minibatch's loss. A ``mask`` argument leaves padded samples out of a mean.

Notation (per sample): ``A`` is the advantage, ``π_old = π(a|s, θ_old)`` the
probability of the taken action under the rollout policy, ``r = π/π_old`` the
probability ratio, ``ε`` the clip range, ``s = sign(A)``, and ``r' = π'/π_old``
the ratio of the *target policy* ``π'``.

Reference for the seed formulas: the "Experimental modifications" of the
clipped surrogate, PPO paper (Schulman et al. 2017, arXiv:1707.06347).
"""

from __future__ import annotations

import math
import numbers

import torch as th
from torch.nn import functional as F

DELTA_TARGET_POLICIES = ("absolute", "logit")
SURROGATES = ("clipped", "spo", "unclipped")


def masked_mean(values: th.Tensor, mask: th.Tensor | None = None) -> th.Tensor:
    """Mean over the samples that count: ``mean(x)``, or ``mean(x[mask])`` with padding (as in ``RecurrentPPO``).

    :param values: per-sample values (samples on the first dimension).
    :param mask: boolean, ``False`` on padded samples, or ``None``.
    :return: scalar mean.
    """
    return values.mean() if mask is None else values[mask].mean()


def normalized_advantages(advantages: th.Tensor, mask: th.Tensor | None = None) -> th.Tensor:
    """``(A − mean A) / (std A + 1e-8)`` over the minibatch's unpadded samples (SB3's normalisation).

    :param advantages: advantages ``A`` of the minibatch.
    :param mask: boolean, ``False`` on padded samples, or ``None``.
    :return: normalised advantages, every sample (padded ones too) shifted and scaled alike.
    """
    if mask is None:
        return (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    kept = advantages[mask]
    return (advantages - kept.mean()) / (kept.std() + 1e-8)


def pseudo_entropy(probs: th.Tensor) -> th.Tensor:
    """Pseudo-entropy ``H'(s) = Σ_a π(a|s) (1 − π(a|s))`` over the last dimension.

    It is ``1 − 1/N`` for a uniform distribution over ``N`` actions and ``0`` for
    a deterministic one.

    :param probs: action probabilities, shape ``(..., n_actions)``.
    :return: ``H'`` with the last dimension reduced.
    """
    return (probs * (1.0 - probs)).sum(dim=-1)


def joint_pseudo_entropy(component_pseudo_entropies: th.Tensor) -> th.Tensor:
    """Pseudo-entropy of a product of independent distributions.

    For a joint action ``a = (a_1, …, a_k)`` with ``π(a) = Π_i π_i(a_i)``,
    ``Σ_a π(a)(1 − π(a)) = 1 − Σ_a π(a)² = 1 − Π_i Σ_{a_i} π_i(a_i)² = 1 − Π_i (1 − H'_i)``.
    This is how MultiDiscrete and MultiBinary action spaces are handled: the
    seed's definition applied to the joint action, so the value stays in ``[0, 1)``
    and is ``1 − 1/N`` for a uniform joint distribution over ``N`` actions.

    :param component_pseudo_entropies: ``H'_i`` of each component, shape ``(..., k)``.
    :return: the joint ``H'`` with the last dimension reduced.
    """
    return 1.0 - th.prod(1.0 - component_pseudo_entropies, dim=-1)


def bernoulli_pseudo_entropy(probs: th.Tensor) -> th.Tensor:
    """``H'`` of Bernoulli components: ``p(1 − p) + (1 − p)p = 2p(1 − p)`` element-wise.

    :param probs: probability of 1 for each binary component.
    :return: per-component pseudo-entropy, same shape as ``probs``.
    """
    return 2.0 * probs * (1.0 - probs)


def target_ratio(
    old_log_prob: th.Tensor,
    advantages: th.Tensor,
    clip_range: float,
    delta_target_policy: str = "absolute",
    clip_range_high: float | None = None,
) -> th.Tensor:
    """Ratio ``r' = π'/π_old`` of the target policy the surrogate is clipped toward.

    The signed step is ``δ = ε_high`` for ``A > 0``, ``δ = −ε_low`` for ``A < 0`` and ``0`` for
    ``A = 0``, with ``ε_low = clip_range`` and ``ε_high = clip_range_high`` (Clip-Higher, Yu et al.
    2025, arXiv:2503.14476; ``None`` is the symmetric ``ε_high = ε_low``).

    - ``"absolute"``: ``π' = π_old (1 + δ)``, i.e. PPO's clipping, ``r' = 1 + δ``.
    - ``"logit"``: ``π' = π_old (1 + δ) / (1 + δ (2π_old − 1))``, the target placed at a fixed
      distance from ``π_old`` in logit space: upward by ``ε_high`` and downward by ``ε_low``. Equal
      to the absolute target at ``π_old = 1/2``, about twice the step for ``π_old ≪ 1`` and much
      tighter for ``π_old ≈ 1``. With a symmetric range it is symmetric:
      ``π'(π_old, A) = 1 − π'(1 − π_old, −A)``.

    ``ε = 0`` gives ``r' = 1``. The logit denominator is at least ``1 − max(ε_low, ε_high) > 0`` for
    ``ε < 1``, so the ratio is finite; it is computed in float64 so that this holds for ``ε`` up to
    float32's last step below 1. The result carries no gradient: the target depends on the rollout only.

    :param old_log_prob: ``log π_old`` of the taken actions.
    :param advantages: advantages ``A`` (only their sign is used).
    :param clip_range: ``ε_low`` (and ``ε_high`` when ``clip_range_high`` is ``None``), in ``[0, 1)``
        for the logit target.
    :param delta_target_policy: ``"absolute"`` or ``"logit"``.
    :param clip_range_high: ``ε_high``, or ``None`` for ``ε_low``.
    :return: ``r'`` with the shape of ``advantages``.
    """
    if delta_target_policy not in DELTA_TARGET_POLICIES:
        raise ValueError(f"delta_target_policy must be one of {DELTA_TARGET_POLICIES}, got {delta_target_policy!r}")
    advantages = advantages.detach()
    symmetric = clip_range_high is None or clip_range_high == clip_range
    if delta_target_policy == "absolute":
        if symmetric:
            return 1.0 + clip_range * th.sign(advantages)
        return 1.0 + _signed_step(advantages, clip_range, clip_range_high)  # type: ignore[arg-type]
    # float64: with ε close to 1 the denominator 1 − ε would round to 0 in float32
    advantages64 = advantages.double()
    if symmetric:
        step64 = clip_range * th.sign(advantages64)
    else:
        step64 = _signed_step(advantages64, clip_range, clip_range_high)  # type: ignore[arg-type]
    old_prob = th.exp(old_log_prob.detach().double())
    return ((1.0 + step64) / (1.0 + step64 * (2.0 * old_prob - 1.0))).to(advantages.dtype)


def _signed_step(advantages: th.Tensor, clip_range_low: float, clip_range_high: float) -> th.Tensor:
    """``δ = ε_high`` where ``A > 0``, ``−ε_low`` where ``A < 0``, ``0`` where ``A = 0``."""
    return clip_range_high * (advantages > 0).to(advantages.dtype) - clip_range_low * (advantages < 0).to(
        advantages.dtype
    )


def restoring_slope(peaked_policy_loss: bool | float, kl_trust_region: bool = False) -> float:
    """Decode ``peaked_policy_loss`` into the slope ``α`` of the loss beyond the target.

    ``False`` → 0 (clipped), ``True`` → 1 (peaked), a float → itself. Beyond a ratio target ``α``
    is in ``[0, 1]`` (1 is the seed's ``|·|`` loss); beyond the KL bound of the KL-triggered trust
    region it multiplies ``KL(s)`` (Truly PPO's rollback) and may be any finite ``α ≥ 0``.

    :param peaked_policy_loss: ``False``, ``True`` or a float.
    :param kl_trust_region: whether ``α`` is the KL rollback coefficient.
    :return: ``α`` as a float.
    :raises ValueError: for any other value, naming the argument and what is allowed.
    """
    if isinstance(peaked_policy_loss, bool):
        return 1.0 if peaked_policy_loss else 0.0
    allowed = "a float in [0, 1] (the restoring slope)"
    if kl_trust_region:
        allowed = "a finite float >= 0 (the KL rollback α)"
    if not isinstance(peaked_policy_loss, numbers.Real) or not math.isfinite(peaked_policy_loss):
        raise ValueError(f"peaked_policy_loss must be False, True or {allowed}, got {peaked_policy_loss!r}")
    alpha = float(peaked_policy_loss)
    if alpha < 0.0 or (alpha > 1.0 and not kl_trust_region):
        raise ValueError(f"peaked_policy_loss must be False, True or {allowed}, got {peaked_policy_loss!r}")
    return alpha


def probability_ratio(log_prob: th.Tensor, old_log_prob: th.Tensor) -> th.Tensor:
    """``r = π/π_old = exp(log π − log π_old)``.

    :param log_prob: ``log π`` of the taken actions under the current policy.
    :param old_log_prob: ``log π_old`` of the same actions.
    :return: ``r``, with gradient through ``log_prob``.
    """
    return th.exp(log_prob - old_log_prob)


def dual_clip(loss: th.Tensor, ratio: th.Tensor, advantages: th.Tensor, bound: float) -> th.Tensor:
    """Dual clip (Ye et al. 2020, arXiv:1912.09729, eq. 5) applied to per-sample losses.

    The objective ``max(min(r A, clip(r) A), c A)`` differs from PPO's only where ``A < 0`` and
    ``r > c``: there it is the constant ``c A``. So the per-sample loss becomes ``−c A`` on those
    samples (no gradient) and is left unchanged elsewhere. A restoring slope acts below the target
    ``r' ≤ 1 < c`` for ``A < 0``, on the other side, and is unaffected.

    :param loss: per-sample loss (``−objective``).
    :param ratio: ``r = π/π_old``.
    :param advantages: advantages ``A``.
    :param bound: ``c > 1``.
    :return: per-sample loss.
    """
    cut = (advantages < 0) & (ratio.detach() > bound)
    return th.where(cut, -bound * advantages, loss)


def clipped_surrogate(
    ratio: th.Tensor,
    target: th.Tensor,
    advantages: th.Tensor,
    alpha: float = 0.0,
    dual_clip_bound: float | None = None,
    mask: th.Tensor | None = None,
) -> th.Tensor:
    """The seed's surrogate loss, mean over samples.

    Per sample, with ``x = A (π' − π)/π_old = A (r' − r)``::

        L = f_α(x) − A r',    f_α(x) = max(x, 0) + α max(−x, 0)

    ``α = 0`` is the clipped loss ``max(0, x)``, ``α = 1`` the peaked loss ``|x|``,
    ``0 < α < 1`` the rollback of Truly PPO (Wang et al. 2019). The term ``−A r'``
    does not depend on θ; with it, the absolute target and ``α = 0`` give exactly
    PPO's ``−min(A r, A clip(r, 1 − ε, 1 + ε))``. The gradient with respect to ``log π``
    is ``−A r`` inside the target and ``+α A r`` beyond it. ``dual_clip_bound = c``
    applies ``dual_clip``.

    :param ratio: ``r = π/π_old`` (``probability_ratio``).
    :param target: ``r'`` from ``target_ratio``.
    :param advantages: advantages ``A``.
    :param alpha: restoring slope ``α`` in ``[0, 1]``.
    :param dual_clip_bound: ``c > 1`` or ``None``.
    :param mask: boolean, ``False`` on padded samples left out of the mean, or ``None``.
    :return: scalar loss.
    """
    distance = advantages * (target - ratio)
    surrogate = th.clamp(distance, min=0.0)
    if isinstance(alpha, th.Tensor) or alpha > 0.0:  # a tensor holds one α per agent (batched training)
        surrogate = surrogate + alpha * th.clamp(-distance, min=0.0)
    loss = surrogate - advantages * target
    if dual_clip_bound is not None:
        loss = dual_clip(loss, ratio, advantages, dual_clip_bound)
    return masked_mean(loss, mask)


def spo_surrogate(
    ratio: th.Tensor, target: th.Tensor, advantages: th.Tensor, clip_range: float, mask: th.Tensor | None = None
) -> th.Tensor:
    """Simple Policy Optimization loss (Xie et al., arXiv:2401.16025), mean over samples.

    SPO maximises ``r A − |A|/(2ε) (r − 1)²``, whose maximum sits at ``r = 1 + ε s``.
    Completing the square, the same objective is ``−|A|/(2ε) (r − r')² + A + |A|ε/2``
    with ``r' = 1 + ε s``. The loss minimised here is that form for any target::

        L = |A|/(2ε) (r − r')² − A − |A| ε/2

    With the absolute target it equals SPO's objective (negated) exactly. With the
    logit target the minimum moves to the logit-space ratio ``r'`` while the
    curvature ``|A|/ε`` is kept, so the gradient is bounded even where ``π_old → 1``
    pulls ``r'`` to 1.

    At ``ε = 0`` (the end of a ``lin_`` schedule) the penalty's curvature is infinite and its
    optimum is ``r = r' = 1``; the loss is then the clipped surrogate at ``ε = 0``,
    ``max(0, A(1 − r)) − A``, the ``ε → 0`` limit with the same property that SPO has for every
    ``ε``: the gradient at ``r = 1`` is the policy gradient ``−A`` and no step goes past ``r = 1``.

    :param ratio: ``r = π/π_old`` (``probability_ratio``).
    :param target: ``r'`` from ``target_ratio``.
    :param advantages: advantages ``A``.
    :param clip_range: ``ε >= 0``.
    :param mask: boolean, ``False`` on padded samples left out of the mean, or ``None``.
    :return: scalar loss.
    """
    if not isinstance(clip_range, th.Tensor) and clip_range == 0.0:  # a tensor holds one ε > 0 per agent
        return clipped_surrogate(ratio, target, advantages, mask=mask)
    abs_adv = advantages.abs()
    return masked_mean(
        abs_adv / (2.0 * clip_range) * (ratio - target) ** 2 - advantages - abs_adv * clip_range / 2.0, mask
    )


def unclipped_surrogate(ratio: th.Tensor, advantages: th.Tensor, mask: th.Tensor | None = None) -> th.Tensor:
    """Plain importance-sampled surrogate ``−mean(r A)`` (the KL-penalty form of the PPO paper, section 4).

    :param ratio: ``r = π/π_old`` (``probability_ratio``).
    :param advantages: advantages ``A``.
    :param mask: boolean, ``False`` on padded samples left out of the mean, or ``None``.
    :return: scalar loss.
    """
    return -masked_mean(advantages * ratio, mask)


def kl_trust_region_surrogate(
    ratio: th.Tensor,
    advantages: th.Tensor,
    kl: th.Tensor,
    kl_bound: float,
    alpha: float = 0.0,
    dual_clip_bound: float | None = None,
    mask: th.Tensor | None = None,
) -> th.Tensor:
    """KL-triggered clipping (TR-PPO) and its rollback (Truly PPO), Wang et al. 2019, arXiv:1903.07940.

    A sample is *triggered* when its state has left the trust region, ``KL(π_old ‖ π)(s) ≥ δ``,
    and the ratio has moved in the improving direction, ``r A > A``. Per sample the objective is::

        r A                  not triggered
        sg(r A)              triggered, α = 0   (TR-PPO: no gradient)
        r A − α KL(s)        triggered, α > 0   (Truly PPO's TR-PPO-RB)

    and the loss is its negative mean; ``sg`` stops the gradient. TR-PPO's paper writes the triggered
    objective as ``min(r A, A) = A``; the reference implementation (wangyuhuix/TrulyPPO, ``ppo2.py``) keeps
    the value ``r A`` without its gradient, and so does this function, so that the logged loss is the
    reference's. Both train identically. ``dual_clip_bound = c`` applies ``dual_clip``.

    :param ratio: ``r = π/π_old`` (``probability_ratio``).
    :param advantages: advantages ``A``.
    :param kl: exact per-state ``KL(π_old ‖ π)``, with gradient.
    :param kl_bound: ``δ >= 0`` (0 at the end of a schedule: every improving sample is past the bound).
    :param alpha: rollback coefficient ``α >= 0``.
    :param dual_clip_bound: ``c > 1`` or ``None``.
    :param mask: boolean, ``False`` on padded samples left out of the mean, or ``None``.
    :return: scalar loss.
    """
    objective = ratio * advantages
    triggered = (kl.detach() >= kl_bound) & (objective.detach() > advantages)
    if alpha > 0.0:
        objective = th.where(triggered, objective - alpha * kl, objective)
    else:
        objective = th.where(triggered, objective.detach(), objective)
    loss = -objective
    if dual_clip_bound is not None:
        loss = dual_clip(loss, ratio, advantages, dual_clip_bound)
    return masked_mean(loss, mask)


def feature_drift(features: th.Tensor, old_features: th.Tensor, mask: th.Tensor | None = None) -> th.Tensor:
    """PFO's regulariser (Moalla et al. 2024, arXiv:2405.00662): ``mean((φ(s) − φ_old(s))²)``.

    ``φ`` are the pre-activations of the policy's last hidden layer; the mean runs over samples
    and features.

    :param features: ``φ(s)`` under the current policy, with gradient.
    :param old_features: ``φ_old(s)`` recorded while the rollout was collected.
    :param mask: boolean over the samples, ``False`` on padded ones left out of the mean, or ``None``.
    :return: scalar regulariser.
    """
    return masked_mean((features - old_features.detach()) ** 2, mask)


def ratio_change(ratio: th.Tensor) -> th.Tensor:
    """ESPO's ratio deviation (Sun et al. 2022, arXiv:2202.00079): ``mean |r − 1|``, detached.

    :param ratio: ``r = π/π_old``.
    :return: scalar.
    """
    return (ratio.detach() - 1.0).abs().mean()


def value_loss_weight(
    mode: str | None,
    state_pseudo_entropy: th.Tensor | None,
    running_mean: th.Tensor | float | None,
    smoothing: float,
    mask: th.Tensor | None = None,
) -> tuple[th.Tensor | float, th.Tensor | float | None]:
    """The seed's pseudo-entropy weight of the value loss, and the new running mean.

    - ``None``: weight 1;
    - ``"per_state"``: ``H'(s)`` per state (a tensor, no gradient);
    - ``"per_batch"``: the minibatch mean of ``H'``;
    - ``"smoothed"``: ``m ← c m + (1 − c) mean H'`` (``m ← mean H'`` the first time), the weight is the new ``m``.

    The value loss is ``mean(weight · (V − R)²)``. The running mean is returned, never stored:
    the caller keeps it.

    :param mode: ``None``, ``"per_state"``, ``"per_batch"`` or ``"smoothed"``.
    :param state_pseudo_entropy: ``H'(s)`` of the minibatch (``None`` only with ``mode=None``).
    :param running_mean: ``m`` before this minibatch, or ``None`` before the first.
    :param smoothing: ``c`` in ``[0, 1)``.
    :param mask: boolean, ``False`` on padded samples left out of the minibatch mean, or ``None``.
    :return: ``(weight, running mean after this minibatch)``.
    """
    if mode is None or state_pseudo_entropy is None:
        return 1.0, running_mean
    weights = state_pseudo_entropy.detach()
    if mode == "per_state":
        return weights, running_mean
    batch_mean = masked_mean(weights, mask)
    if mode == "per_batch":
        return batch_mean, running_mean
    if mode != "smoothed":
        raise ValueError(f"value_grad_rescaling must be None, 'per_state', 'per_batch' or 'smoothed', got {mode!r}")
    if running_mean is None:
        return batch_mean, batch_mean
    updated = smoothing * running_mean + (1.0 - smoothing) * batch_mean
    return updated, updated


def trust_region_statistics(
    ratio: th.Tensor,
    target: th.Tensor,
    advantages: th.Tensor,
    clip_range: float,
    clip_range_high: float | None = None,
) -> th.Tensor:
    """Per-sample indicators and deviations, for the once-per-update health logs.

    Columns: ``r > 1 + ε_high``, ``r < 1 − ε_low`` (their sum is SB3's clip fraction
    ``|r − 1| > ε`` when the range is symmetric), past the target (``A (r − r') > 0``),
    ``|r − r'|`` and ``|r − 1|``. All detached, in the ratio's dtype, so that a minibatch mean of
    the first two columns is the very number SB3 computes for its clip fraction.

    :param ratio: ``r = π/π_old``.
    :param target: ``r'`` from ``target_ratio``.
    :param advantages: advantages ``A``.
    :param clip_range: ``ε_low``.
    :param clip_range_high: ``ε_high`` or ``None`` for ``ε_low``.
    :return: tensor of shape ``(n, 5)``.
    """
    high = clip_range if clip_range_high is None else clip_range_high
    ratio = ratio.detach()
    change = ratio - 1.0
    deviation = ratio - target
    columns = (change > high, -change > clip_range, advantages.detach() * deviation > 0, deviation.abs(), change.abs())
    return th.stack([column.to(ratio.dtype) for column in columns], dim=-1)


def approx_kl(log_prob: th.Tensor, old_log_prob: th.Tensor, mask: th.Tensor | None = None) -> th.Tensor:
    """Sample estimate of ``KL(π_old ‖ π)``: ``E[(r − 1) − log r]`` over actions drawn from ``π_old``.

    Unbiased and non-negative (Schulman, "Approximating KL divergence", 2020); it is
    what SB3 logs as ``approx_kl``.

    :param log_prob: ``log π`` of the taken actions under the current policy.
    :param old_log_prob: ``log π_old`` of the same actions.
    :param mask: boolean, ``False`` on padded samples left out of the mean, or ``None``.
    :return: scalar estimate.
    """
    log_ratio = log_prob - old_log_prob
    return masked_mean((th.exp(log_ratio) - 1) - log_ratio, mask)


def categorical_kl(old_logits: th.Tensor, new_logits: th.Tensor) -> th.Tensor:
    """``KL(p ‖ q) = Σ_a p(a)(log p(a) − log q(a))`` between categoricals given by logits (last dimension).

    :param old_logits: logits of ``p`` (need not be normalised).
    :param new_logits: logits of ``q`` (need not be normalised).
    :return: KL with the last dimension reduced.
    """
    old_log_probs = th.log_softmax(old_logits, dim=-1)
    return (old_log_probs.exp() * (old_log_probs - th.log_softmax(new_logits, dim=-1))).sum(dim=-1)


def bernoulli_kl(old_logits: th.Tensor, new_logits: th.Tensor) -> th.Tensor:
    """Element-wise ``KL(Bern(p) ‖ Bern(q)) = p log(p/q) + (1 − p) log((1 − p)/(1 − q))`` from logits.

    :param old_logits: logits of ``p``.
    :param new_logits: logits of ``q``.
    :return: KL, same shape as the inputs.
    """
    p = th.sigmoid(old_logits)
    log_p, log_not_p = F.logsigmoid(old_logits), F.logsigmoid(-old_logits)
    log_q, log_not_q = F.logsigmoid(new_logits), F.logsigmoid(-new_logits)
    return p * (log_p - log_q) + (1.0 - p) * (log_not_p - log_not_q)


def normal_kl(old_mean: th.Tensor, old_std: th.Tensor, new_mean: th.Tensor, new_std: th.Tensor) -> th.Tensor:
    """Element-wise ``KL(N(μ₀, σ₀²) ‖ N(μ₁, σ₁²)) = log(σ₁/σ₀) + (σ₀² + (μ₀ − μ₁)²)/(2σ₁²) − 1/2``.

    :param old_mean: ``μ₀``.
    :param old_std: ``σ₀``.
    :param new_mean: ``μ₁``.
    :param new_std: ``σ₁``.
    :return: KL, same shape as the inputs.
    """
    variance_ratio = (old_std / new_std) ** 2
    return 0.5 * (variance_ratio + ((old_mean - new_mean) / new_std) ** 2 - 1.0 - th.log(variance_ratio))


def adapt_kl_coef(
    kl_coef: float,
    kl: float,
    kl_target: float,
    factor: float = 2.0,
    tolerance: float = 1.5,
) -> float:
    """Adaptive KL coefficient of the PPO paper (section 4).

    ``β ← β / factor`` when ``KL < d_targ / tolerance``; ``β ← β · factor`` when
    ``KL > d_targ · tolerance``; unchanged otherwise. The paper uses factor 2 and
    tolerance 1.5.

    :param kl_coef: current ``β``.
    :param kl: measured KL divergence.
    :param kl_target: ``d_targ``.
    :param factor: multiplicative adaptation factor, ``> 1``.
    :param tolerance: tolerance band, ``> 1``.
    :return: the new ``β``.
    """
    if kl < kl_target / tolerance:
        return kl_coef / factor
    if kl > kl_target * tolerance:
        return kl_coef * factor
    return kl_coef
