"""Health of a policy's representation and of the gradients its heads send to shared layers.

Representation collapse in PPO (Moalla et al. 2024, arXiv:2405.00662) shows as a falling rank of
the last hidden features and a growing fraction of dead units (Dohare et al. 2023, loss of
plasticity). The seed's Pong collapse had a proximate cause on the shared trunk: the value-loss
gradient was about 100× the policy-loss gradient there.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch as th
from torch import nn

__all__ = [
    "ACTIVATIONS",
    "RepresentationHealth",
    "dead_unit_fraction",
    "effective_rank",
    "gradient_norm",
    "rank_for_variance",
    "representation_health",
    "shared_parameters",
]

# Modules whose input is a pre-activation and whose output is a hidden feature.
ACTIVATIONS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid)
# Bounded activations: a unit stuck at the bound passes no gradient, like a ReLU stuck at 0.
SATURATION = {nn.Tanh: 0.99, nn.Sigmoid: 0.99}


def _singular_values(features: th.Tensor) -> th.Tensor:
    matrix = features.detach().reshape(features.shape[0], -1).double()
    return th.linalg.svdvals(matrix)


def effective_rank(features: th.Tensor) -> float:
    """Roy & Vetterli (2007) effective rank ``exp(H(p))``, ``p_k = σ_k / Σσ``, of a ``(batch, features)`` matrix.

    Equal to ``r`` for ``r`` equal non-zero singular values; 0 for a zero matrix.
    """
    sigma = _singular_values(features)
    total = sigma.sum()
    if total <= 0:
        return 0.0
    p = sigma / total
    p = p[p > 0]
    return float(th.exp(-(p * p.log()).sum()))


def rank_for_variance(features: th.Tensor, fraction: float = 0.99) -> int:
    """The number of largest singular values whose squares keep ``fraction`` of ``Σσ²``.

    The features are not centred: a constant direction is part of what the heads read.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    energy = _singular_values(features) ** 2
    total = energy.sum()
    if total <= 0:
        return 0
    kept = th.cumsum(energy, 0) / total
    # A small tolerance so that fraction=1 counts exactly the non-zero singular values.
    return int(th.searchsorted(kept, th.tensor(fraction - 1e-12, dtype=kept.dtype)).item()) + 1


def dead_unit_fraction(activations: th.Tensor, saturation: float | None = None) -> float:
    """Fraction of units that are dead on every sample of the batch.

    Dead means an output of at most 0 (a ReLU that passes no gradient) or, for a bounded
    activation given its ``saturation`` level (0.99 for tanh), ``|a| >= saturation`` on every
    sample. ``activations`` is ``(batch, units)`` or a convolution's ``(batch, channels, h, w)``,
    where a unit is a channel, dead at every position.
    """
    values = activations.detach()
    if values.dim() > 2:
        values = values.transpose(0, 1).reshape(values.shape[1], -1).T
    if values.numel() == 0:
        return math.nan
    dead = (values <= 0).all(dim=0)
    if saturation is not None:
        dead = (values.abs() >= saturation).all(dim=0)
    return float(dead.double().mean())


def gradient_norm(loss: th.Tensor, parameters: Sequence[th.Tensor]) -> float:
    """L2 norm of ``d loss / d parameters`` over all of them (parameters the loss does not reach count 0)."""
    grads = th.autograd.grad(loss, list(parameters), retain_graph=True, allow_unused=True)
    squares = [grad.detach().double().pow(2).sum() for grad in grads if grad is not None]
    return float(th.stack(squares).sum().sqrt()) if squares else 0.0


def shared_parameters(
    policy_output: th.Tensor, value_output: th.Tensor, named_parameters: Iterable[tuple[str, th.Tensor]]
) -> list[tuple[str, th.Tensor]]:
    """The parameters both heads depend on, found by differentiating one output of each."""
    named = [(name, parameter) for name, parameter in named_parameters if parameter.requires_grad]
    params = [parameter for _, parameter in named]
    policy_grads = th.autograd.grad(policy_output.sum(), params, retain_graph=True, allow_unused=True)
    value_grads = th.autograd.grad(value_output.sum(), params, retain_graph=True, allow_unused=True)
    return [
        item
        for item, pg, vg in zip(named, policy_grads, value_grads, strict=False)
        if pg is not None and vg is not None
    ]


@dataclass
class RepresentationHealth:
    """Health of the policy's hidden layers on one batch.

    :param feature_erank: effective rank of the last hidden features the action head reads.
    :param feature_rank99: singular values keeping 99 % of their energy.
    :param feature_dim: width of those features (the largest possible rank).
    :param dead_fraction: dead units over all hidden layers on the actor's path.
    :param last_dead_fraction: dead units of the last hidden layer.
    :param preact_norm: mean per-sample L2 norm of the last hidden layer's pre-activation.
    :param weight_norm: L2 norm of all the policy's weights.
    """

    feature_erank: float
    feature_rank99: int
    feature_dim: int
    dead_fraction: float
    last_dead_fraction: float
    preact_norm: float
    weight_norm: float


def representation_health(policy: nn.Module, observations: th.Tensor) -> RepresentationHealth:
    """Run the actor's path of an SB3 ``ActorCriticPolicy`` on a batch and measure its hidden layers."""
    records: list[tuple[nn.Module, th.Tensor, th.Tensor]] = []

    def hook(module: nn.Module, inputs: tuple[th.Tensor, ...], output: th.Tensor) -> None:
        records.append((module, inputs[0].detach(), output.detach()))

    handles = [module.register_forward_hook(hook) for module in policy.modules() if isinstance(module, ACTIVATIONS)]
    try:
        with th.no_grad():
            features = policy.extract_features(observations, policy.pi_features_extractor)  # type: ignore[operator]
            latent_pi = policy.mlp_extractor.forward_actor(features)  # type: ignore[operator, union-attr]
    finally:
        for handle in handles:
            handle.remove()
    dead_units = total_units = 0.0
    last_dead, preact_norm = math.nan, math.nan
    for module, pre, post in records:
        fraction = dead_unit_fraction(post, SATURATION.get(type(module)))
        units = post.shape[1] if post.dim() > 1 else 1
        dead_units += fraction * units
        total_units += units
        last_dead = fraction
        preact_norm = float(pre.reshape(pre.shape[0], -1).norm(dim=1).mean())
    weights = [parameter.detach().double().pow(2).sum() for parameter in policy.parameters()]
    flat = latent_pi.reshape(latent_pi.shape[0], -1)
    return RepresentationHealth(
        feature_erank=effective_rank(flat),
        feature_rank99=rank_for_variance(flat, 0.99),
        feature_dim=int(flat.shape[1]),
        dead_fraction=dead_units / total_units if total_units else math.nan,
        last_dead_fraction=last_dead,
        preact_norm=preact_norm,
        weight_norm=float(th.stack(weights).sum().sqrt()) if weights else 0.0,
    )


def as_numpy_batch(array: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Rows ``indices`` of a ``(n_steps, n_envs, ...)`` rollout array, flattened over steps and envs."""
    return array.reshape(-1, *array.shape[2:])[indices]
