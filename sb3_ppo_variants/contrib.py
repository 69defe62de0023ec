"""The options of ``VariantPPO`` on sb3-contrib's MaskablePPO and RecurrentPPO.

``MaskableVariantPPO`` and ``RecurrentVariantPPO`` put ``VariantAlgorithm`` (the options, their checks and the
one update loop around ``loss.variant_ppo_loss``) over the contrib class; they add only what differs:

- **action masks**: the policy evaluates actions with ``action_masks``, so ``π_old``, ``π``, the pseudo-entropy,
  the logit target and the exact KL are those of the masked distribution, where an invalid action has
  probability 0 and contributes nothing;
- **recurrent sequences**: the policy evaluates actions from the LSTM states and episode starts stored with
  each sequence, and the buffer's padding ``mask`` leaves padded steps out of every mean of the loss.

With every option off each class trains as its contrib parent does.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib import MaskablePPO, RecurrentPPO
from sb3_contrib.common.maskable.utils import get_action_masks, is_masking_supported
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.type_aliases import Schedule
from stable_baselines3.common.vec_env import VecEnv

from sb3_ppo_variants.buffers import (
    MaskableDictRolloutPolicyBuffer,
    MaskableRolloutPolicyBuffer,
    RecurrentDictRolloutPolicyBuffer,
    RecurrentRolloutPolicyBuffer,
)
from sb3_ppo_variants.distributions import distribution_parameter_size
from sb3_ppo_variants.variant_ppo import VariantAlgorithm

SelfMaskableVariantPPO = TypeVar("SelfMaskableVariantPPO", bound="MaskableVariantPPO")


class MaskableVariantPPO(VariantAlgorithm, MaskablePPO):  # type: ignore[misc]
    """PPO with invalid action masking (Huang and Ontañón 2020, arXiv:2006.14171) and the options of ``VariantPPO``.

    sb3-contrib's ``MaskablePPO`` whose update is ``VariantPPO``'s: every option, with the same names, checks,
    errors and logged keys, applied to the masked distribution. The rollout buffer (``MaskableRolloutPolicyBuffer``
    or its ``Dict`` version) refuses a mask that leaves a state without a valid action.

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, ...), as in ``MaskablePPO``
    :param env: The environment to learn from; it provides ``action_masks()``
    :param args: ``MaskablePPO``'s further positional arguments, in its order
    :param _init_setup_model: Whether or not to build the network at the creation of the instance
    :param value_grad_rescaling: as in ``VariantPPO``
    :param pseudo_entropy_smoothing: as in ``VariantPPO``
    :param delta_target_policy: as in ``VariantPPO``
    :param peaked_policy_loss: as in ``VariantPPO``
    :param surrogate: as in ``VariantPPO``
    :param kl_coef: as in ``VariantPPO``
    :param kl_penalty_target: as in ``VariantPPO``
    :param kl_adapt_factor: as in ``VariantPPO``
    :param kl_adapt_tolerance: as in ``VariantPPO``
    :param clip_range_high: as in ``VariantPPO``
    :param dual_clip: as in ``VariantPPO``
    :param kl_trust_region: as in ``VariantPPO``
    :param ratio_change_limit: as in ``VariantPPO``
    :param ratio_change_stop: as in ``VariantPPO``
    :param feature_drift_coef: as in ``VariantPPO``
    :param kwargs: ``MaskablePPO``'s keyword arguments (``rollout_buffer_class=None`` selects
        ``MaskableRolloutPolicyBuffer`` or its ``Dict`` version)
    """

    def __init__(
        self,
        policy: Any,
        env: Any,
        *args: Any,
        _init_setup_model: bool = True,
        value_grad_rescaling: str | None = None,
        pseudo_entropy_smoothing: float = 0.99,
        delta_target_policy: str = "absolute",
        peaked_policy_loss: bool | float = False,
        surrogate: str = "clipped",
        kl_coef: float = 0.0,
        kl_penalty_target: float = 0.01,
        kl_adapt_factor: float = 2.0,
        kl_adapt_tolerance: float = 1.5,
        clip_range_high: float | str | Schedule | None = None,
        dual_clip: float | None = None,
        kl_trust_region: float | str | Schedule | None = None,
        ratio_change_limit: float | None = None,
        ratio_change_stop: str = "before_step",
        feature_drift_coef: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(policy, env, *args, _init_setup_model=False, **kwargs)  # type: ignore[misc]
        self._set_variant_options(
            self.clip_range,
            value_grad_rescaling=value_grad_rescaling,
            pseudo_entropy_smoothing=pseudo_entropy_smoothing,
            delta_target_policy=delta_target_policy,
            peaked_policy_loss=peaked_policy_loss,
            surrogate=surrogate,
            kl_coef=kl_coef,
            kl_penalty_target=kl_penalty_target,
            kl_adapt_factor=kl_adapt_factor,
            kl_adapt_tolerance=kl_adapt_tolerance,
            clip_range_high=clip_range_high,
            dual_clip=dual_clip,
            kl_trust_region=kl_trust_region,
            ratio_change_limit=ratio_change_limit,
            ratio_change_stop=ratio_change_stop,
            feature_drift_coef=feature_drift_coef,
        )
        self._use_masking = True
        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        if self.rollout_buffer_class is None:
            dict_observations = isinstance(self.observation_space, spaces.Dict)
            self.rollout_buffer_class = (
                MaskableDictRolloutPolicyBuffer if dict_observations else MaskableRolloutPolicyBuffer
            )
        super()._setup_model()

    def _recording_buffer_names(self) -> str:
        return "MaskableRolloutPolicyBuffer or MaskableDictRolloutPolicyBuffer"

    def _distribution_parameter_size(self) -> int:
        return distribution_parameter_size(self.action_space, masked=True)

    def collect_rollouts(  # type: ignore[override]
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: RolloutBuffer,
        n_rollout_steps: int,
        use_masking: bool = True,
    ) -> bool:
        """``MaskablePPO.collect_rollouts``; when an option needs them, with the rollout policy's data recorded."""
        if not self.records_rollout_policy:
            return MaskablePPO.collect_rollouts(self, env, callback, rollout_buffer, n_rollout_steps, use_masking)
        if use_masking and not is_masking_supported(env):
            raise ValueError("Environment does not support action masking. Consider using ActionMasker wrapper")
        self._use_masking = use_masking
        return self.collect_recorded_rollouts(env, callback, rollout_buffer, n_rollout_steps)

    def _rollout_step(self, obs_tensor: Any, env: VecEnv) -> tuple[th.Tensor, th.Tensor, th.Tensor, dict[str, Any]]:
        action_masks = get_action_masks(env) if self._use_masking else None
        actions, values, log_probs = self.policy(obs_tensor, action_masks=action_masks)
        return actions, values, log_probs, {"action_masks": action_masks}

    def _evaluate_actions(self, rollout_data: Any, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        return self.policy.evaluate_actions(rollout_data.observations, actions, action_masks=rollout_data.action_masks)

    def _policy_distribution(self, rollout_data: Any) -> Distribution:
        return self.policy.get_distribution(rollout_data.observations, action_masks=rollout_data.action_masks)

    def learn(  # type: ignore[override]
        self: SelfMaskableVariantPPO,
        total_timesteps: int,
        callback: Any = None,
        log_interval: int = 1,
        tb_log_name: str | None = None,
        reset_num_timesteps: bool = True,
        use_masking: bool = True,
        progress_bar: bool = False,
    ) -> SelfMaskableVariantPPO:
        """``MaskablePPO.learn``, with the options checked first and the TensorBoard run named after the class."""
        return super().learn(
            total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
            use_masking=use_masking,
        )


class RecurrentVariantPPO(VariantAlgorithm, RecurrentPPO):  # type: ignore[misc]
    """PPO with an LSTM policy (sb3-contrib's ``RecurrentPPO``) and the options of ``VariantPPO``.

    Every option, with the same names, checks, errors and logged keys. Minibatches are RecurrentPPO's padded
    sequences: padded steps are left out of every mean (the losses, the statistics, the smoothed
    pseudo-entropy, the KL and the feature drift), and the policy is evaluated from the LSTM states stored with
    each sequence. With the exact KL or PFO the buffer is ``RecurrentRolloutPolicyBuffer`` (or its ``Dict``
    version), whose padded samples carry the rollout policy's distribution and features.

    :param policy: The policy model to use (MlpLstmPolicy, CnnLstmPolicy, ...), as in ``RecurrentPPO``
    :param env: The environment to learn from (if registered in Gym, can be str)
    :param args: ``RecurrentPPO``'s further positional arguments, in its order
    :param _init_setup_model: Whether or not to build the network at the creation of the instance
    :param value_grad_rescaling: as in ``VariantPPO``
    :param pseudo_entropy_smoothing: as in ``VariantPPO``
    :param delta_target_policy: as in ``VariantPPO``
    :param peaked_policy_loss: as in ``VariantPPO``
    :param surrogate: as in ``VariantPPO``
    :param kl_coef: as in ``VariantPPO``
    :param kl_penalty_target: as in ``VariantPPO``
    :param kl_adapt_factor: as in ``VariantPPO``
    :param kl_adapt_tolerance: as in ``VariantPPO``
    :param clip_range_high: as in ``VariantPPO``
    :param dual_clip: as in ``VariantPPO``
    :param kl_trust_region: as in ``VariantPPO``
    :param ratio_change_limit: as in ``VariantPPO``
    :param ratio_change_stop: as in ``VariantPPO``
    :param feature_drift_coef: as in ``VariantPPO``
    :param kwargs: ``RecurrentPPO``'s keyword arguments
    """

    def __init__(
        self,
        policy: Any,
        env: Any,
        *args: Any,
        _init_setup_model: bool = True,
        value_grad_rescaling: str | None = None,
        pseudo_entropy_smoothing: float = 0.99,
        delta_target_policy: str = "absolute",
        peaked_policy_loss: bool | float = False,
        surrogate: str = "clipped",
        kl_coef: float = 0.0,
        kl_penalty_target: float = 0.01,
        kl_adapt_factor: float = 2.0,
        kl_adapt_tolerance: float = 1.5,
        clip_range_high: float | str | Schedule | None = None,
        dual_clip: float | None = None,
        kl_trust_region: float | str | Schedule | None = None,
        ratio_change_limit: float | None = None,
        ratio_change_stop: str = "before_step",
        feature_drift_coef: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(policy, env, *args, _init_setup_model=False, **kwargs)  # type: ignore[misc]
        self._set_variant_options(
            self.clip_range,
            value_grad_rescaling=value_grad_rescaling,
            pseudo_entropy_smoothing=pseudo_entropy_smoothing,
            delta_target_policy=delta_target_policy,
            peaked_policy_loss=peaked_policy_loss,
            surrogate=surrogate,
            kl_coef=kl_coef,
            kl_penalty_target=kl_penalty_target,
            kl_adapt_factor=kl_adapt_factor,
            kl_adapt_tolerance=kl_adapt_tolerance,
            clip_range_high=clip_range_high,
            dual_clip=dual_clip,
            kl_trust_region=kl_trust_region,
            ratio_change_limit=ratio_change_limit,
            ratio_change_stop=ratio_change_stop,
            feature_drift_coef=feature_drift_coef,
        )
        self._rollout_lstm_states: Any = None
        if _init_setup_model:
            self._setup_model()

    def _use_recording_rollout_buffer(self) -> None:
        # RecurrentPPO builds its buffer itself; the recording one takes the same arguments
        buffer = self.rollout_buffer
        buffer_class = (
            RecurrentDictRolloutPolicyBuffer
            if isinstance(self.observation_space, spaces.Dict)
            else RecurrentRolloutPolicyBuffer
        )
        self.rollout_buffer = buffer_class(
            self.n_steps,
            self.observation_space,  # type: ignore[arg-type]
            self.action_space,
            buffer.hidden_state_shape,  # type: ignore[attr-defined]
            self.device,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            n_envs=self.n_envs,
        )

    def _recording_buffer_names(self) -> str:
        return "RecurrentRolloutPolicyBuffer or RecurrentDictRolloutPolicyBuffer"

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_rollout_lstm_states"]

    def _rollout_step(self, obs_tensor: Any, env: VecEnv) -> tuple[th.Tensor, th.Tensor, th.Tensor, dict[str, Any]]:
        episode_starts = th.tensor(self._last_episode_starts, dtype=th.float32, device=self.device)
        actions, values, log_probs, self._rollout_lstm_states = self.policy(
            obs_tensor, self._last_lstm_states, episode_starts
        )
        # the buffer stores the states the step started from, as RecurrentPPO does
        return actions, values, log_probs, {"lstm_states": self._last_lstm_states}

    def _end_rollout_step(self) -> None:
        self._last_lstm_states = self._rollout_lstm_states

    def _terminal_value(self, terminal_obs: Any, env_index: int) -> th.Tensor:
        hidden, cell = self._rollout_lstm_states.vf
        terminal_lstm_state = (
            hidden[:, env_index : env_index + 1, :].contiguous(),
            cell[:, env_index : env_index + 1, :].contiguous(),
        )
        episode_starts = th.tensor([False], dtype=th.float32, device=self.device)
        return self.policy.predict_values(terminal_obs, terminal_lstm_state, episode_starts)[0]  # type: ignore[call-arg]

    def _last_values(self, obs_tensor: Any, dones: np.ndarray) -> th.Tensor:
        episode_starts = th.tensor(dones, dtype=th.float32, device=self.device)
        return self.policy.predict_values(obs_tensor, self._last_lstm_states.vf, episode_starts)  # type: ignore[call-arg,union-attr,attr-defined]

    def _evaluate_actions(self, rollout_data: Any, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        return self.policy.evaluate_actions(  # type: ignore[call-arg]
            rollout_data.observations, actions, rollout_data.lstm_states, rollout_data.episode_starts
        )

    def _policy_distribution(self, rollout_data: Any) -> Distribution:
        distribution: Distribution
        distribution, _ = self.policy.get_distribution(  # type: ignore[call-arg,misc]
            rollout_data.observations, rollout_data.lstm_states.pi, rollout_data.episode_starts
        )
        return distribution

    def _padding_mask(self, rollout_data: Any) -> th.Tensor | None:
        # float to bool, as RecurrentPPO converts it
        return rollout_data.mask > 1e-8
