"""Rollout buffers whose samples carry what the rollout policy computed while acting.

The exact KL (penalty and KL-triggered trust region) needs the rollout policy's distribution
parameters, and PFO needs its features ``φ_old(s)``. Both come out of the forward pass that picks
the actions, so ``VariantPPO.collect_rollouts`` hands them to ``add()`` next to the log-probability,
and the minibatches carry them as fields, the way sb3-contrib's ``MaskableRolloutBuffer`` carries
``action_masks``: ``train()`` reads ``rollout_data.old_distribution`` and ``rollout_data.old_features``.
A buffer built with sizes ``0`` records nothing and its fields are ``None``.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, NamedTuple

import numpy as np
import torch as th
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.type_aliases import TensorDict
from stable_baselines3.common.vec_env import VecNormalize


class RolloutPolicySamples(NamedTuple):
    """SB3's ``RolloutBufferSamples`` plus the rollout policy's distribution parameters and features."""

    observations: th.Tensor
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    old_distribution: th.Tensor | None
    old_features: th.Tensor | None


class DictRolloutPolicySamples(NamedTuple):
    """SB3's ``DictRolloutBufferSamples`` plus the rollout policy's distribution parameters and features."""

    observations: TensorDict
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    old_distribution: th.Tensor | None
    old_features: th.Tensor | None


_RECORDED = ("old_distribution", "old_features")


class _RolloutPolicyRecord:
    """Mixin: two extra per-step arrays, flattened and sampled like SB3's own."""

    distribution_size: int = 0
    feature_size: int = 0
    old_distribution: np.ndarray
    old_features: np.ndarray

    def reset(self) -> None:
        shape = (self.buffer_size, self.n_envs)  # type: ignore[attr-defined]
        self.old_distribution = np.zeros((*shape, self.distribution_size), dtype=np.float32)
        self.old_features = np.zeros((*shape, self.feature_size), dtype=np.float32)
        super().reset()  # type: ignore[misc]

    def resize_records(self, distribution_size: int, feature_size: int) -> None:
        """Set how many distribution parameters and features are recorded per step (and empty the buffer)."""
        self.distribution_size = distribution_size
        self.feature_size = feature_size
        self.reset()

    def add(
        self,
        *args: Any,
        old_distribution: th.Tensor | None = None,
        old_features: th.Tensor | None = None,
        **kwargs: Any,
    ) -> None:
        """SB3's ``add`` plus the rollout policy's ``(n_envs, size)`` parameters and features of this step."""
        for name, value in zip(_RECORDED, (old_distribution, old_features), strict=True):
            array = getattr(self, name)
            if array.shape[-1] > 0:
                if value is None:
                    raise ValueError(f"this buffer records {name} ({array.shape[-1]} values per step); none was given")
                array[self.pos] = value.detach().cpu().numpy()  # type: ignore[attr-defined]
        super().add(*args, **kwargs)  # type: ignore[misc]

    def get(self, batch_size: int | None = None) -> Generator[Any, None, None]:
        if not self.generator_ready:  # type: ignore[attr-defined]
            for name in _RECORDED:
                setattr(self, name, self.swap_and_flatten(getattr(self, name)))  # type: ignore[attr-defined]
        yield from super().get(batch_size)  # type: ignore[misc]

    def _recorded(self, batch_inds: np.ndarray) -> tuple[th.Tensor | None, th.Tensor | None]:
        return tuple(  # type: ignore[return-value]
            self.to_torch(getattr(self, name)[batch_inds]) if getattr(self, name).shape[-1] > 0 else None  # type: ignore[attr-defined]
            for name in _RECORDED
        )


class RolloutPolicyBuffer(_RolloutPolicyRecord, RolloutBuffer):
    """SB3's ``RolloutBuffer`` whose samples carry ``old_distribution`` and ``old_features``."""

    def _get_samples(self, batch_inds: np.ndarray, env: VecNormalize | None = None) -> RolloutPolicySamples:  # type: ignore[override]
        return RolloutPolicySamples(*super()._get_samples(batch_inds, env), *self._recorded(batch_inds))


class DictRolloutPolicyBuffer(_RolloutPolicyRecord, DictRolloutBuffer):
    """SB3's ``DictRolloutBuffer`` whose samples carry ``old_distribution`` and ``old_features``."""

    def _get_samples(  # type: ignore[override]
        self, batch_inds: np.ndarray, env: VecNormalize | None = None
    ) -> DictRolloutPolicySamples:
        return DictRolloutPolicySamples(*super()._get_samples(batch_inds, env), *self._recorded(batch_inds))
