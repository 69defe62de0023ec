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
"""

from __future__ import annotations

import copy
from typing import Any

import torch as th
from gymnasium import spaces
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


def has_action_probabilities(action_space: spaces.Space) -> bool:
    """Whether actions in this space have probabilities (not densities) under SB3's policies.

    :param action_space: the environment's action space.
    :return: ``True`` for Discrete, MultiDiscrete and MultiBinary.
    """
    return isinstance(action_space, PROBABILITY_SPACES)


def action_pseudo_entropy(distribution: Distribution) -> th.Tensor:
    """Per-state pseudo-entropy ``H'(s)`` of an SB3 action distribution.

    :param distribution: a categorical, multi-categorical or Bernoulli SB3 distribution
        whose parameters have been set by a forward pass.
    :return: ``H'`` with shape ``(batch,)``.
    """
    if isinstance(distribution, CategoricalDistribution):
        return pseudo_entropy(distribution.distribution.probs)
    if isinstance(distribution, MultiCategoricalDistribution):
        components = th.stack([pseudo_entropy(component.probs) for component in distribution.distribution], dim=-1)
        return joint_pseudo_entropy(components)
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
    torch_distribution: Any = distribution.distribution
    if isinstance(torch_distribution, list):
        return th.cat([component.logits for component in torch_distribution], dim=-1).detach()
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
    current: Any = distribution.distribution
    if isinstance(current, list):
        splits = th.split(old_parameters, [component.logits.shape[-1] for component in current], dim=-1)
        return th.stack(
            [categorical_kl(old, new.logits) for old, new in zip(splits, current, strict=True)], dim=-1
        ).sum(dim=-1)
    if isinstance(current, Categorical):
        return categorical_kl(old_parameters, current.logits)
    if isinstance(current, Bernoulli):
        return bernoulli_kl(old_parameters, current.logits).sum(dim=-1)
    if isinstance(current, Normal):
        old_mean, old_std = th.chunk(old_parameters, 2, dim=-1)
        return normal_kl(old_mean, old_std, current.mean, current.stddev).sum(dim=-1)
    raise TypeError(f"no exact KL for {type(current).__name__}")


class RolloutKL:
    """Exact ``KL(π_old ‖ π)`` for minibatches of one rollout.

    Prepared once per update from the old parameters of the whole rollout. For categorical
    policies the old log-probabilities, probabilities and ``Σ p log p`` are computed here once,
    so each minibatch needs only ``Σ_a p_old(a) log p_old(a) − Σ_a p_old(a) log π(a)``.

    :param old_parameters: ``distribution_parameters`` of the rollout policy, one row per sample.
    :param action_dist: the policy's SB3 action distribution (decides the parameter layout).
    """

    def __init__(self, old_parameters: th.Tensor, action_dist: Distribution) -> None:
        self.old_parameters = old_parameters
        self.categorical = isinstance(action_dist, CategoricalDistribution)
        if self.categorical:
            self.old_log_probs = th.log_softmax(old_parameters, dim=-1)
            self.old_probs = self.old_log_probs.exp()
            self.old_negative_entropy = (self.old_probs * self.old_log_probs).sum(dim=-1)

    def __call__(self, batch_indices: th.Tensor, distribution: Distribution) -> th.Tensor:
        """Per-state KL for the samples ``batch_indices`` of the rollout.

        :param batch_indices: flat buffer indices of the minibatch.
        :param distribution: the current SB3 distribution for those samples, with gradient.
        :return: KL with shape ``(batch,)``.
        """
        if self.categorical:
            # torch's Categorical keeps normalised logits, i.e. log-probabilities
            new_log_probs = distribution.distribution.logits  # type: ignore[union-attr]
            return self.old_negative_entropy[batch_indices] - (self.old_probs[batch_indices] * new_log_probs).sum(-1)
        return exact_kl(self.old_parameters[batch_indices], distribution)
