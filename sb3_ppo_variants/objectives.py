"""Pure objectives of the PPO variants.

Every function here is a small, differentiable piece of maths named after the
quantity it computes. ``VariantPPO.train()`` only wires them together.

Notation (per sample): ``A`` is the advantage, ``π_old = π(a|s, θ_old)`` the
probability of the taken action under the rollout policy, ``r = π/π_old`` the
probability ratio, ``ε`` the clip range, ``s = sign(A)``, and ``r' = π'/π_old``
the ratio of the *target policy* ``π'``.

Reference for the seed formulas: the "Experimental modifications" of the
clipped surrogate, PPO paper (Schulman et al. 2017, arXiv:1707.06347).
"""

from __future__ import annotations

import torch as th
from torch.nn import functional as F

DELTA_TARGET_POLICIES = ("absolute", "logit")
SURROGATES = ("clipped", "spo", "unclipped")


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
) -> th.Tensor:
    """Ratio ``r' = π'/π_old`` of the target policy the surrogate is clipped toward.

    - ``"absolute"``: ``π' = π_old (1 + ε s)``, i.e. PPO's clipping, ``r' = 1 + ε s``.
    - ``"logit"``: ``π' = π_old (1 + ε s) / (1 + ε s (2π_old − 1))``, the target placed
      at a fixed distance from ``π_old`` in logit space. Equal to the absolute target
      at ``π_old = 1/2``, about twice the step for ``π_old ≪ 1`` and much tighter for
      ``π_old ≈ 1``. It is symmetric: ``π'(π_old, A) = 1 − π'(1 − π_old, −A)``.

    The denominator is at least ``1 − ε > 0`` for ``ε < 1``, so the ratio is finite; it is
    computed in float64 so that this holds for ``ε`` up to float32's last step below 1.
    The result carries no gradient: the target depends on the rollout only.

    :param old_log_prob: ``log π_old`` of the taken actions.
    :param advantages: advantages ``A`` (only their sign is used).
    :param clip_range: ``ε``, in ``(0, 1)`` for the logit target.
    :param delta_target_policy: ``"absolute"`` or ``"logit"``.
    :return: ``r'`` with the shape of ``advantages``.
    """
    if delta_target_policy not in DELTA_TARGET_POLICIES:
        raise ValueError(f"delta_target_policy must be one of {DELTA_TARGET_POLICIES}, got {delta_target_policy!r}")
    if delta_target_policy == "absolute":
        return 1.0 + clip_range * th.sign(advantages.detach())
    # float64: with ε close to 1 the denominator 1 − ε would round to 0 in float32
    step64 = clip_range * th.sign(advantages.detach().double())
    old_prob = th.exp(old_log_prob.detach().double())
    return ((1.0 + step64) / (1.0 + step64 * (2.0 * old_prob - 1.0))).to(advantages.dtype)


def restoring_slope(peaked_policy_loss: bool | float) -> float:
    """Slope ``α`` of the loss beyond the target: ``False`` → 0 (clipped), ``True`` → 1 (peaked).

    :param peaked_policy_loss: ``False``, ``True`` or a float in ``[0, 1]``.
    :return: ``α`` as a float.
    """
    if isinstance(peaked_policy_loss, bool):
        return 1.0 if peaked_policy_loss else 0.0
    alpha = float(peaked_policy_loss)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"peaked_policy_loss must be False, True or a float in [0, 1], got {peaked_policy_loss!r}")
    return alpha


def _ratio(log_prob: th.Tensor, old_log_prob: th.Tensor) -> th.Tensor:
    return th.exp(log_prob - old_log_prob)


def policy_loss(
    log_prob: th.Tensor,
    old_log_prob: th.Tensor,
    advantages: th.Tensor,
    clip_range: float,
    delta_target_policy: str = "absolute",
    peaked_policy_loss: bool | float = False,
) -> th.Tensor:
    """The seed's surrogate loss, mean over samples.

    Per sample, with ``x = A (π' − π)/π_old = A (r' − r)``::

        L = f_α(x) − A r',    f_α(x) = max(x, 0) + α max(−x, 0)

    ``α = 0`` is the clipped loss ``max(0, x)``, ``α = 1`` the peaked loss ``|x|``,
    ``0 < α < 1`` the rollback of Truly PPO (Wang et al. 2019). The term ``−A r'``
    does not depend on θ; with it, the absolute target and ``α = 0`` give exactly
    PPO's ``−min(A r, A clip(r, 1 − ε, 1 + ε))``.

    The gradient with respect to ``log π`` is ``−A r`` inside the target and
    ``+α A r`` beyond it.

    :param log_prob: ``log π`` of the taken actions under the current policy.
    :param old_log_prob: ``log π_old`` of the same actions.
    :param advantages: advantages ``A``.
    :param clip_range: ``ε``.
    :param delta_target_policy: ``"absolute"`` or ``"logit"``.
    :param peaked_policy_loss: ``False``, ``True`` or the restoring slope ``α`` in ``[0, 1]``.
    :return: scalar loss.
    """
    ratio = _ratio(log_prob, old_log_prob)
    target = target_ratio(old_log_prob, advantages, clip_range, delta_target_policy)
    return clipped_surrogate(ratio, target, advantages, restoring_slope(peaked_policy_loss))


def clipped_surrogate(ratio: th.Tensor, target: th.Tensor, advantages: th.Tensor, alpha: float = 0.0) -> th.Tensor:
    """``policy_loss`` from a ratio and a target ratio already computed: ``mean(f_α(A(r' − r)) − A r')``.

    :param ratio: ``r = π/π_old``.
    :param target: ``r'`` from ``target_ratio``.
    :param advantages: advantages ``A``.
    :param alpha: restoring slope ``α`` in ``[0, 1]``.
    :return: scalar loss.
    """
    distance = advantages * (target - ratio)
    surrogate = th.clamp(distance, min=0.0)
    if alpha > 0.0:
        surrogate = surrogate + alpha * th.clamp(-distance, min=0.0)
    return (surrogate - advantages * target).mean()


def spo_policy_loss(
    log_prob: th.Tensor,
    old_log_prob: th.Tensor,
    advantages: th.Tensor,
    clip_range: float,
    delta_target_policy: str = "absolute",
) -> th.Tensor:
    """Simple Policy Optimization loss (Xie et al., arXiv:2401.16025), mean over samples.

    SPO maximises ``r A − |A|/(2ε) (r − 1)²``, whose maximum sits at ``r = 1 + ε s``.
    Completing the square, the same objective is ``−|A|/(2ε) (r − r')² + A + |A|ε/2``
    with ``r' = 1 + ε s``. The loss minimised here is that form for any target::

        L = |A|/(2ε) (r − r')² − A − |A| ε/2

    With the absolute target it equals SPO's objective (negated) exactly. With the
    logit target the minimum moves to the logit-space ratio ``r'`` while the
    curvature ``|A|/ε`` is kept, so the gradient is bounded even where ``π_old → 1``
    pulls ``r'`` to 1; the gradient at ``r = 1`` is then ``A (r' − 1)/(ε s)``, which
    shrinks with the logit-space step instead of staying at the policy gradient.

    :param log_prob: ``log π`` of the taken actions under the current policy.
    :param old_log_prob: ``log π_old`` of the same actions.
    :param advantages: advantages ``A``.
    :param clip_range: ``ε > 0``.
    :param delta_target_policy: ``"absolute"`` or ``"logit"``.
    :return: scalar loss.
    """
    ratio = _ratio(log_prob, old_log_prob)
    target = target_ratio(old_log_prob, advantages, clip_range, delta_target_policy)
    return spo_surrogate(ratio, target, advantages, clip_range)


def spo_surrogate(ratio: th.Tensor, target: th.Tensor, advantages: th.Tensor, clip_range: float) -> th.Tensor:
    """``spo_policy_loss`` from a ratio and a target ratio already computed.

    :param ratio: ``r = π/π_old``.
    :param target: ``r'`` from ``target_ratio``.
    :param advantages: advantages ``A``.
    :param clip_range: ``ε > 0``.
    :return: scalar loss.
    """
    abs_adv = advantages.abs()
    return (abs_adv / (2.0 * clip_range) * (ratio - target) ** 2 - advantages - abs_adv * clip_range / 2.0).mean()


def unclipped_policy_loss(log_prob: th.Tensor, old_log_prob: th.Tensor, advantages: th.Tensor) -> th.Tensor:
    """Plain importance-sampled surrogate ``−E[r A]`` (the KL-penalty form of the PPO paper, section 4).

    :param log_prob: ``log π`` of the taken actions under the current policy.
    :param old_log_prob: ``log π_old`` of the same actions.
    :param advantages: advantages ``A``.
    :return: scalar loss.
    """
    return unclipped_surrogate(_ratio(log_prob, old_log_prob), advantages)


def unclipped_surrogate(ratio: th.Tensor, advantages: th.Tensor) -> th.Tensor:
    """``unclipped_policy_loss`` from a ratio already computed: ``−mean(r A)``.

    :param ratio: ``r = π/π_old``.
    :param advantages: advantages ``A``.
    :return: scalar loss.
    """
    return -(advantages * ratio).mean()


def target_statistics(ratio: th.Tensor, target: th.Tensor, advantages: th.Tensor) -> th.Tensor:
    """``[clip fraction, mean |r − r'|]`` as one detached tensor, for accumulation without a sync per minibatch.

    :param ratio: ``r = π/π_old``.
    :param target: ``r'`` from ``target_ratio``.
    :param advantages: advantages ``A``.
    :return: tensor of shape ``(2,)``.
    """
    deviation = (ratio - target).detach()
    return th.stack(((advantages * deviation > 0).float().mean(), deviation.abs().mean()))


def approx_kl(log_prob: th.Tensor, old_log_prob: th.Tensor) -> th.Tensor:
    """Sample estimate of ``KL(π_old ‖ π)``: ``E[(r − 1) − log r]`` over actions drawn from ``π_old``.

    Unbiased and non-negative (Schulman, "Approximating KL divergence", 2020); it is
    what SB3 logs as ``approx_kl``.

    :param log_prob: ``log π`` of the taken actions under the current policy.
    :param old_log_prob: ``log π_old`` of the same actions.
    :return: scalar estimate.
    """
    log_ratio = log_prob - old_log_prob
    return th.mean((th.exp(log_ratio) - 1) - log_ratio)


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
