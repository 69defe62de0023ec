"""Rollout buffers whose samples carry what the rollout policy computed while acting.

The exact KL (penalty and KL-triggered trust region) needs the rollout policy's distribution
parameters, and PFO needs its features ``φ_old(s)``. Both come out of the forward pass that picks
the actions, so ``VariantPPO.collect_rollouts`` hands them to ``add()`` next to the log-probability,
and the minibatches carry them as fields, the way sb3-contrib's ``MaskableRolloutBuffer`` carries
``action_masks``: ``train()`` reads ``rollout_data.old_distribution`` and ``rollout_data.old_features``.
A buffer built with sizes ``0`` records nothing and its fields are ``None``.

sb3-contrib's buffers get the same two fields: ``MaskableRolloutPolicyBuffer`` (its samples also carry
``action_masks``, and a mask that leaves a state without a valid action is refused) and
``RecurrentRolloutPolicyBuffer`` (the fields are padded like every other per-step array of a sequence), with
their ``Dict`` versions.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, NamedTuple

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib.common.maskable.buffers import MaskableDictRolloutBuffer, MaskableRolloutBuffer
from sb3_contrib.common.recurrent.buffers import RecurrentDictRolloutBuffer, RecurrentRolloutBuffer
from sb3_contrib.common.recurrent.type_aliases import RNNStates
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


class MaskableRolloutPolicySamples(NamedTuple):
    """sb3-contrib's ``MaskableRolloutBufferSamples`` plus the rollout policy's distribution parameters and features."""

    observations: th.Tensor
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    action_masks: th.Tensor
    old_distribution: th.Tensor | None
    old_features: th.Tensor | None


class MaskableDictRolloutPolicySamples(NamedTuple):
    """sb3-contrib's ``MaskableDictRolloutBufferSamples`` plus the rollout policy's distribution and features."""

    observations: TensorDict
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    action_masks: th.Tensor
    old_distribution: th.Tensor | None
    old_features: th.Tensor | None


def mask_components(action_space: spaces.Space) -> list[int]:
    """How many mask entries each independent action component has, in sb3-contrib's mask layout."""
    if isinstance(action_space, spaces.Discrete):
        return [int(action_space.n)]
    if isinstance(action_space, spaces.MultiDiscrete):
        return [int(n) for n in action_space.nvec]
    if isinstance(action_space, spaces.MultiBinary):
        return [2] * int(np.prod(action_space.shape))
    raise ValueError(f"action masks need a Discrete, MultiDiscrete or MultiBinary action space, got {action_space}")


def check_valid_actions(action_masks: np.ndarray, action_space: spaces.Space, n_envs: int) -> None:
    """Raise ``ValueError`` if a mask leaves a state (or one component of its action) without a valid action.

    Over no valid action the masked distribution has no probabilities: every logit is sb3-contrib's ``-1e8``,
    and the policy would sample, and the loss would score, actions the environment refuses.

    :param action_masks: masks of one step, ``(n_envs, mask entries)`` in any shape with that many values.
    :param action_space: the environment's action space.
    :param n_envs: number of environments.
    """
    sizes = mask_components(action_space)
    masks = np.asarray(action_masks, dtype=bool).reshape(n_envs, sum(sizes))
    starts = np.cumsum([0, *sizes[:-1]])
    valid = np.logical_or.reduceat(masks, starts, axis=1)
    if not valid.all():
        env_index, component = (int(index) for index in np.argwhere(~valid)[0])
        where = f" in component {component} of {action_space}" if len(sizes) > 1 else ""
        raise ValueError(
            f"the action mask of environment {env_index} leaves no valid action{where}; every state needs at least "
            "one valid action (check the environment's action_masks())"
        )


class _ValidActionMasks:
    """Mixin: refuses a step whose mask leaves a state without a valid action."""

    def add(self, *args: Any, action_masks: np.ndarray | None = None, **kwargs: Any) -> None:
        if action_masks is not None:
            check_valid_actions(action_masks, self.action_space, self.n_envs)  # type: ignore[attr-defined]
        super().add(*args, action_masks=action_masks, **kwargs)  # type: ignore[misc]


class MaskableRolloutPolicyBuffer(_RolloutPolicyRecord, _ValidActionMasks, MaskableRolloutBuffer):
    """sb3-contrib's ``MaskableRolloutBuffer`` whose samples carry ``old_distribution`` and ``old_features``."""

    def _get_samples(  # type: ignore[override]
        self, batch_inds: np.ndarray, env: VecNormalize | None = None
    ) -> MaskableRolloutPolicySamples:
        return MaskableRolloutPolicySamples(*super()._get_samples(batch_inds, env), *self._recorded(batch_inds))


class MaskableDictRolloutPolicyBuffer(_RolloutPolicyRecord, _ValidActionMasks, MaskableDictRolloutBuffer):
    """sb3-contrib's ``MaskableDictRolloutBuffer`` whose samples carry ``old_distribution`` and ``old_features``."""

    def _get_samples(  # type: ignore[override]
        self, batch_inds: np.ndarray, env: VecNormalize | None = None
    ) -> MaskableDictRolloutPolicySamples:
        return MaskableDictRolloutPolicySamples(*super()._get_samples(batch_inds, env), *self._recorded(batch_inds))


class RecurrentRolloutPolicySamples(NamedTuple):
    """sb3-contrib's ``RecurrentRolloutBufferSamples`` plus the rollout policy's distribution and features."""

    observations: th.Tensor
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    lstm_states: RNNStates
    episode_starts: th.Tensor
    mask: th.Tensor
    old_distribution: th.Tensor | None
    old_features: th.Tensor | None


class RecurrentDictRolloutPolicySamples(NamedTuple):
    """sb3-contrib's ``RecurrentDictRolloutBufferSamples`` plus the rollout policy's distribution and features."""

    observations: TensorDict
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    lstm_states: RNNStates
    episode_starts: th.Tensor
    mask: th.Tensor
    old_distribution: th.Tensor | None
    old_features: th.Tensor | None


_PADDING_VALUES = {"old_distribution": 1.0, "old_features": 0.0}
"""Padded steps are left out of every mean, but their KL is still computed: a distribution parameter of 1 keeps
it finite (a Gaussian's standard deviation of 0 would make it infinite, and its gradient NaN outside the mean)."""


class _PaddedRecord(_RolloutPolicyRecord):
    """The two arrays cut into the minibatch's sequences and padded as sb3-contrib pads the others."""

    def _padded_recorded(self, batch_inds: np.ndarray, padded_size: int) -> tuple[th.Tensor | None, th.Tensor | None]:
        recorded: list[th.Tensor | None] = []
        for name in _RECORDED:
            array = getattr(self, name)
            size = array.shape[-1]
            if size == 0:
                recorded.append(None)
                continue
            padded = self.pad(array[batch_inds], padding_value=_PADDING_VALUES[name])  # type: ignore[attr-defined]
            recorded.append(padded.reshape(padded_size, size))
        return recorded[0], recorded[1]


class RecurrentRolloutPolicyBuffer(_PaddedRecord, RecurrentRolloutBuffer):
    """sb3-contrib's ``RecurrentRolloutBuffer`` whose samples carry ``old_distribution`` and ``old_features``."""

    def _get_samples(  # type: ignore[override]
        self, batch_inds: np.ndarray, env_change: np.ndarray, env: VecNormalize | None = None
    ) -> RecurrentRolloutPolicySamples:
        samples = super()._get_samples(batch_inds, env_change, env)
        return RecurrentRolloutPolicySamples(*samples, *self._padded_recorded(batch_inds, len(samples.mask)))


class RecurrentDictRolloutPolicyBuffer(_PaddedRecord, RecurrentDictRolloutBuffer):
    """sb3-contrib's ``RecurrentDictRolloutBuffer`` whose samples carry ``old_distribution`` and ``old_features``."""

    def _get_samples(  # type: ignore[override]
        self, batch_inds: np.ndarray, env_change: np.ndarray, env: VecNormalize | None = None
    ) -> RecurrentDictRolloutPolicySamples:
        samples = super()._get_samples(batch_inds, env_change, env)
        return RecurrentDictRolloutPolicySamples(*samples, *self._padded_recorded(batch_inds, len(samples.mask)))
