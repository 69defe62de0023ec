"""The objectives applied to stable-baselines3's action distributions.

SB3 wraps torch distributions in its own classes; this module reads the torch
distribution out of them to compute the pseudo-entropy and the exact KL
divergence, and keeps the old distribution's parameters as a plain tensor so they
can be stored for a whole rollout.

How the maths extends beyond a single categorical action:

- **Discrete**: ``H' = Σ_a π(a)(1 − π(a))`` as in the seed.
- **MultiDiscrete** and **MultiBinary**: the action is the joint ``a = (a_1, …, a_k)`` of
  independent components, and ``H'`` is the seed's formula applied to that joint action:
  ``1 − Π_i (1 − H'_i)``, with ``H'_i = 2p_i(1 − p_i)`` for a binary component. The
  logit-space target uses ``π_old`` of the joint action, ``exp(Σ_i log π_i)``, which is what
  SB3 stores as the old log-probability.
- **Box**: a Gaussian density is not a probability, so neither ``H'`` nor the logit target
  is defined; asking for them raises at construction.
- **Masked** (sb3-contrib's MaskablePPO): an invalid action's logit is ``-1e8``, so its probability
  is exactly 0 in float32 and it adds nothing to ``H'`` or to the KL. A MultiBinary action is masked
  as one two-way categorical per component, whose ``H'_i = 2p_i(1 − p_i)`` is the Bernoulli one.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib.common.maskable.distributions import (
    MaskableCategoricalDistribution,
    MaskableMultiCategoricalDistribution,
)
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    Distribution,
    MultiCategoricalDistribution,
)
from torch.distributions import Bernoulli, Categorical, Normal

from sb3_ppo_variants.objectives import (
    bernoulli_kl,
    bernoulli_pseudo_entropy,
    categorical_kl,
    joint_pseudo_entropy,
    normal_kl,
    pseudo_entropy,
)

PROBABILITY_SPACES = (spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)


def distribution_parameter_size(action_space: spaces.Space, masked: bool = False) -> int:
    """Width of ``distribution_parameters`` for SB3's distribution over this action space.

    :param action_space: the environment's action space.
    :param masked: sb3-contrib's masked distributions, whose MultiBinary is one two-way categorical per component.
    :return: ``n`` (Discrete, MultiBinary; ``2 n`` masked), ``Σ nvec`` (MultiDiscrete) or ``2 · dim`` (Box: mean
        and std).
    """
    if isinstance(action_space, spaces.Discrete):
        return int(action_space.n)
    if isinstance(action_space, spaces.MultiDiscrete):
        return int(sum(action_space.nvec))
    if isinstance(action_space, spaces.MultiBinary):
        return (2 if masked else 1) * int(np.prod(action_space.shape))
    if isinstance(action_space, spaces.Box):
        return 2 * int(np.prod(action_space.shape))
    raise TypeError(f"no parameter layout for the action space {action_space}")


def has_action_probabilities(action_space: spaces.Space) -> bool:
    """Whether actions in this space have probabilities (not densities) under SB3's policies.

    :param action_space: the environment's action space.
    :return: ``True`` for Discrete, MultiDiscrete and MultiBinary.
    """
    return isinstance(action_space, PROBABILITY_SPACES)


def _categorical_components(distribution: Distribution) -> list[Categorical] | None:
    """The torch categoricals of a multi-categorical distribution (SB3's, or sb3-contrib's masked one)."""
    if isinstance(distribution, MultiCategoricalDistribution):
        return distribution.distribution
    if isinstance(distribution, MaskableMultiCategoricalDistribution):
        return distribution.distributions  # type: ignore[return-value]
    return None


def distribution_batch_size(distribution: Distribution) -> int | None:
    """How many states an SB3 distribution's parameters are set for (``None`` before they are set)."""
    components = _categorical_components(distribution)
    if components is not None:
        return components[0].batch_shape[0] if components else None
    torch_distribution = getattr(distribution, "distribution", None)
    return None if torch_distribution is None else torch_distribution.batch_shape[0]


def action_pseudo_entropy(distribution: Distribution) -> th.Tensor:
    """Per-state pseudo-entropy ``H'(s)`` of an SB3 action distribution.

    :param distribution: a categorical, multi-categorical or Bernoulli SB3 distribution
        whose parameters have been set by a forward pass.
    :return: ``H'`` with shape ``(batch,)``.
    """
    if isinstance(distribution, CategoricalDistribution | MaskableCategoricalDistribution):
        return pseudo_entropy(distribution.distribution.probs)
    components = _categorical_components(distribution)
    if components is not None:
        return joint_pseudo_entropy(th.stack([pseudo_entropy(component.probs) for component in components], dim=-1))
    if isinstance(distribution, BernoulliDistribution):
        return joint_pseudo_entropy(bernoulli_pseudo_entropy(distribution.distribution.probs))
    raise ValueError(
        f"the pseudo-entropy needs action probabilities (Discrete, MultiDiscrete or MultiBinary action spaces), "
        f"got {type(distribution).__name__}"
    )


def pseudo_entropy_from_parameters(template: Distribution, parameters: th.Tensor) -> th.Tensor:
    """Per-state ``H'`` of the distributions with these ``distribution_parameters``.

    :param template: an SB3 categorical, multi-categorical or Bernoulli distribution (left unchanged).
    :param parameters: logits as returned by ``distribution_parameters``, shape ``(batch, n)``.
    :return: ``H'`` with shape ``(batch,)``.
    """
    distribution = copy.copy(template)
    distribution.proba_distribution(parameters)  # type: ignore[call-arg]
    return action_pseudo_entropy(distribution)


def distribution_parameters(distribution: Distribution) -> th.Tensor:
    """The parameters of an SB3 distribution as one ``(batch, n)`` tensor, without gradient.

    Categorical and Bernoulli: logits. Multi-categorical: the components' logits side by
    side. Gaussian (diagonal or state-dependent noise): mean and standard deviation side by side.

    :param distribution: an SB3 distribution whose parameters have been set.
    :return: the detached parameters.
    """
    components = _categorical_components(distribution)
    if components is not None:
        return th.cat([component.logits for component in components], dim=-1).detach()
    torch_distribution: Any = distribution.distribution
    if isinstance(torch_distribution, Categorical | Bernoulli):
        return torch_distribution.logits.detach()
    if isinstance(torch_distribution, Normal):
        return th.cat([torch_distribution.mean, torch_distribution.stddev], dim=-1).detach()
    raise TypeError(f"no parameter layout for {type(torch_distribution).__name__}")


def exact_kl(old_parameters: th.Tensor, distribution: Distribution) -> th.Tensor:
    """Exact ``KL(π_old ‖ π)`` per state, from stored old parameters and the current distribution.

    Independent components (Gaussian dimensions, binary components, the categorical
    components of a MultiDiscrete action) add up.

    :param old_parameters: ``distribution_parameters`` of the rollout policy for the same states.
    :param distribution: the current SB3 distribution, with gradient.
    :return: KL with shape ``(batch,)``.
    """
    components = _categorical_components(distribution)
    if components is not None:
        splits = th.split(old_parameters, [component.logits.shape[-1] for component in components], dim=-1)
        return th.stack(
            [categorical_kl(old, new.logits) for old, new in zip(splits, components, strict=True)], dim=-1
        ).sum(dim=-1)
    current: Any = distribution.distribution
    if isinstance(current, Categorical):
        return categorical_kl(old_parameters, current.logits)
    if isinstance(current, Bernoulli):
        return bernoulli_kl(old_parameters, current.logits).sum(dim=-1)
    if isinstance(current, Normal):
        old_mean, old_std = th.chunk(old_parameters, 2, dim=-1)
        return normal_kl(old_mean, old_std, current.mean, current.stddev).sum(dim=-1)
    raise TypeError(f"no exact KL for {type(current).__name__}")
