"""``VariantPPO``: stable-baselines3's PPO with the experimental modifications as independent options.

There is one training loop, ``VariantAlgorithm.train()``, and its per-minibatch loss is the pure function
``loss.variant_ppo_loss``. ``VariantAlgorithm`` sits under ``VariantPPO`` here and under the sb3-contrib
classes of ``sb3_ppo_variants.contrib``. The presets at the bottom of this module only change defaults.
"""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import (
    ActorCriticCnnPolicy,
    ActorCriticPolicy,
    BasePolicy,
    MultiInputActorCriticPolicy,
)
from stable_baselines3.common.type_aliases import GymEnv, Schedule
from stable_baselines3.common.utils import FloatSchedule, LinearSchedule, explained_variance, obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv
from torch import nn

from sb3_ppo_variants import objectives
from sb3_ppo_variants.buffers import DictRolloutPolicyBuffer, RolloutPolicyBuffer, _RolloutPolicyRecord
from sb3_ppo_variants.distributions import (
    distribution_batch_size,
    distribution_parameter_size,
    distribution_parameters,
    has_action_probabilities,
    pseudo_entropy_from_parameters,
)
from sb3_ppo_variants.loss import LossOptions, Minibatch, policy_evaluation, variant_ppo_loss

SelfVariantPPO = TypeVar("SelfVariantPPO", bound="VariantAlgorithm")

VALUE_GRAD_RESCALINGS = (None, "per_state", "per_batch", "smoothed")
RATIO_CHANGE_STOPS = ("before_step", "after_step")
"""Where ESPO's early stop falls: before the violating minibatch's step (as ``target_kl``) or after it."""
VARIANT_OPTIONS = (
    "value_grad_rescaling",
    "pseudo_entropy_smoothing",
    "delta_target_policy",
    "peaked_policy_loss",
    "surrogate",
    "kl_coef",
    "kl_penalty_target",
    "kl_adapt_factor",
    "kl_adapt_tolerance",
    "clip_range_high",
    "dual_clip",
    "kl_trust_region",
    "ratio_change_limit",
    "ratio_change_stop",
    "feature_drift_coef",
)
"""The keyword-only options ``VariantPPO`` adds to ``PPO``, in constructor order."""
KL_COEF_FLOOR = 1e-20
"""Smallest adapted ``β``: far below any useful penalty, far above float underflow."""


def _allowed(values: tuple[Any, ...]) -> str:
    return ", ".join(repr(value) for value in values)


SCHEDULE_CHECK_POINTS = 101
"""A schedule is checked at this many evenly spaced values of the progress remaining, 1 down to 0."""
LOGIT_CLIP_RANGE_MAX = 1.0 - 2.0**-24
"""Largest ε the logit target uses: float32's last step below 1 (``objectives.target_ratio`` needs ε < 1)."""


def as_schedule(value: float | str | Schedule) -> Schedule:
    """A clip range or trust-region bound as a function of the progress remaining (1 at the start, 0 at the end).

    A number is constant, a callable is used as it is, and rl-zoo3's string ``"lin_<initial>"`` decays
    linearly from ``<initial>`` to 0, as the zoo expands it for ``clip_range``. The zoo passes that string
    unexpanded for keys it does not know, such as ``kl_trust_region`` and ``clip_range_high``.
    """
    if isinstance(value, str):
        kind, _, initial = value.partition("_")
        if kind != "lin":
            raise ValueError(f"a schedule string must be 'lin_<initial value>', got {value!r}")
        try:
            start = float(initial)
        except ValueError:
            raise ValueError(f"a schedule string must be 'lin_<initial value>', got {value!r}") from None
        return LinearSchedule(start, 0.0, 1.0)
    return FloatSchedule(value)


def _schedule_values(name: str, value: float | str | Schedule) -> list[float]:
    """The values a schedule takes over training (a number: itself), for the checks at construction."""
    if isinstance(value, bool) or not (isinstance(value, (numbers.Real, str)) or callable(value)):
        raise ValueError(f"{name} must be a float, a schedule or 'lin_<initial value>', got {value!r}")
    if isinstance(value, numbers.Real):
        return [float(value)]
    try:
        schedule = as_schedule(value)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None
    return [float(schedule(step / (SCHEDULE_CHECK_POINTS - 1))) for step in range(SCHEDULE_CHECK_POINTS - 1, -1, -1)]


def scheduled_value(schedule: Schedule, progress_remaining: float, upper: float = math.inf) -> float:
    """A schedule's value for this update, never outside ``[0, upper]``, so that training cannot fail on it.

    SB3 collects whole rollouts, so the last one can overshoot the budget and the progress remaining turn
    slightly negative; a schedule is then read at its end (progress 0): a ``lin_`` clip range gives ε = 0,
    which every surrogate handles (SB3's own ``PPO`` reads it at the negative progress, ε < 0). Between
    the grid points checked at construction, a value outside the range is projected onto it.
    """
    value = float(schedule(max(progress_remaining, 0.0)))
    if math.isnan(value):
        value = float(schedule(0.0))  # checked at construction
    return min(max(value, 0.0), upper)


def _shown(values: list[float], low: float, high: float) -> str:
    """A number as ``[value]``; a schedule by its start, its end and its first value outside ``[low, high)``."""
    if len(values) == 1:
        return repr(values)
    outside = [value for value in values if not (math.isfinite(value) and low <= value < high)]
    return f"a schedule from {values[0]!r} to {values[-1]!r} that reaches {outside[0]!r}" if outside else repr(values)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_clip_ranges(
    clip_range: float | str | Schedule,
    clip_range_high: float | str | Schedule | None = None,
    delta_target_policy: str = "absolute",
) -> None:
    """Check clip ranges where the maths needs it: numbers, or schedules over the whole of training.

    Every ``ε >= 0`` defines the absolute target and SPO (``ε = 0`` included, see
    ``objectives.spo_surrogate``); the logit target needs ``ε < 1`` on both sides. A schedule is checked
    at ``SCHEDULE_CHECK_POINTS`` values of the progress remaining, its start and end included.

    :raises ValueError: naming the argument, the allowed range and the values found.
    """
    for name, value in (("clip_range", clip_range), ("clip_range_high", clip_range_high)):
        if value is None:
            continue
        values = _schedule_values(name, value)
        if not all(math.isfinite(epsilon) and epsilon >= 0.0 for epsilon in values):
            shown = _shown(values, 0.0, math.inf)
            raise ValueError(f"{name} must be a finite float >= 0 (or a schedule of such values), got {shown}")
        if delta_target_policy == "logit" and not all(epsilon < 1.0 for epsilon in values):
            raise ValueError(
                f"{name} must be in [0, 1) with delta_target_policy='logit' "
                f"(the logit-space target needs 1 - {name} > 0), got {_shown(values, 0.0, 1.0)}"
            )


def _check_kl_trust_region(kl_trust_region: float | str | Schedule) -> None:
    """``δ``: a float > 0, or a schedule (callable or ``lin_``) starting > 0 and never below 0, as ``clip_range``.

    A schedule may end at ``δ = 0`` (the Truly PPO reference decays it linearly to 0 on Atari): every
    sample whose ratio has moved in the improving direction is then past the bound.
    """
    allowed = "None, a finite float > 0, or a schedule (a callable or 'lin_<initial>') starting > 0 and never below 0"
    if isinstance(kl_trust_region, numbers.Real) and not isinstance(kl_trust_region, bool):
        if not (_is_real(kl_trust_region) and kl_trust_region > 0.0):
            raise ValueError(f"kl_trust_region must be {allowed}, got {kl_trust_region!r}")
        return
    try:
        values = _schedule_values("kl_trust_region", kl_trust_region)
    except ValueError:
        raise ValueError(f"kl_trust_region must be {allowed}, got {kl_trust_region!r}") from None
    if not (values[0] > 0.0 and all(math.isfinite(value) and value >= 0.0 for value in values)):
        raise ValueError(f"kl_trust_region must be {allowed}, got {_shown(values, 0.0, math.inf)}")


def _last_hidden_layer(policy: BasePolicy) -> nn.Linear:
    """The actor's last hidden ``Linear``: in its MLP head, else in its features extractor."""
    for part in ("mlp_extractor.policy_net", "pi_features_extractor"):
        module: Any = policy
        for attribute in part.split("."):
            module = getattr(module, attribute, None)
        if isinstance(module, nn.Module):
            linears = [layer for layer in module.modules() if isinstance(layer, nn.Linear)]
            if linears:
                return linears[-1]
    raise ValueError(
        "feature_drift_coef needs a policy whose actor has a hidden nn.Linear layer "
        f"(in mlp_extractor.policy_net or the features extractor); {type(policy).__name__} has none"
    )


class _PreActivations:
    """Keeps the output of one ``Linear`` layer from the last forward pass: PFO's ``φ(s)``.

    It reads an activation the way feature-extraction utilities do; it carries nothing between the
    rollout and the update (the buffer does that).
    """

    def __init__(self, layer: nn.Linear) -> None:
        self.size = layer.out_features
        self.output: th.Tensor | None = None
        self.handle = layer.register_forward_hook(self)

    def __call__(self, layer: nn.Module, inputs: Any, output: th.Tensor) -> None:
        self.output = output


if TYPE_CHECKING:
    _PPOAlgorithm = PPO  # the attributes the mixin reads: PPO's, which MaskablePPO and RecurrentPPO share
else:
    _PPOAlgorithm = object


class VariantAlgorithm(_PPOAlgorithm):
    """Every option of ``VariantPPO`` and its one update loop, for a PPO of SB3 or sb3-contrib.

    Layered under an algorithm the way SB3 layers ``OnPolicyAlgorithm`` under ``PPO``:
    ``VariantPPO(VariantAlgorithm, PPO)``, ``MaskableVariantPPO(VariantAlgorithm, MaskablePPO)`` and
    ``RecurrentVariantPPO(VariantAlgorithm, RecurrentPPO)``. The algorithm's constructor calls its parent with
    ``_init_setup_model=False``, then ``_set_variant_options``, then ``_setup_model``. What differs between the
    algorithms sits in small hooks, each one PPO's behaviour by default:

    - ``_evaluate_actions`` and ``_policy_distribution``: what the policy needs besides the observations
      (``action_masks``, LSTM states and episode starts);
    - ``_padding_mask``: which samples of a minibatch count (RecurrentPPO's padded sequences);
    - ``_rollout_step``, ``_end_rollout_step``, ``_terminal_value``, ``_last_values``: the rollout that records the
      policy's distribution and features (``collect_recorded_rollouts``);
    - ``_distribution_parameter_size``, ``_recording_buffer_names``: the recorded data's layout and buffers.
    """

    _pseudo_entropy_average: float | None
    _preactivations: _PreActivations | None
    _clip_range_high_schedule: Schedule | None
    _kl_trust_region_schedule: Schedule | None
    value_grad_rescaling: str | None
    pseudo_entropy_smoothing: float
    delta_target_policy: str
    peaked_policy_loss: bool | float
    surrogate: str
    kl_coef: float
    kl_penalty_target: float
    kl_adapt_factor: float
    kl_adapt_tolerance: float
    clip_range_high: float | str | Schedule | None
    dual_clip: float | None
    kl_trust_region: float | str | Schedule | None
    ratio_change_limit: float | None
    ratio_change_stop: str
    feature_drift_coef: float

    def _set_variant_options(self, clip_range: float | Schedule, **options: Any) -> None:
        """Set and check the options (every name of ``VARIANT_OPTIONS``), and create the plain running state."""
        if set(options) != set(VARIANT_OPTIONS):
            raise TypeError(f"expected the options {VARIANT_OPTIONS}, got {sorted(options)}")
        for name in VARIANT_OPTIONS:
            setattr(self, name, options[name])
        self.validate_options(
            action_space=getattr(self, "action_space", None),  # unset when load() builds the model without env
            clip_range=clip_range,
            **self.variant_options(),
        )
        # Plain Python state lives here, not in _setup_model: load() calls _setup_model again
        # after restoring attributes and would reset it.
        self._pseudo_entropy_average = None
        self._preactivations = None

    def variant_options(self) -> dict[str, Any]:
        """The current value of every option ``VariantPPO`` adds to ``PPO``, by name (``VARIANT_OPTIONS``)."""
        return {name: getattr(self, name) for name in VARIANT_OPTIONS}

    @staticmethod
    def validate_options(
        action_space: spaces.Space | None = None,
        clip_range: float | Schedule = 0.2,
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
    ) -> None:
        """Check the variant options; raise ``ValueError`` naming the argument and what is allowed.

        Usable before an environment exists (``action_space=None`` skips the action-space checks),
        e.g. to validate hyperparameters read from a file.
        """
        if value_grad_rescaling not in VALUE_GRAD_RESCALINGS:
            raise ValueError(
                f"value_grad_rescaling must be one of {_allowed(VALUE_GRAD_RESCALINGS)}, got {value_grad_rescaling!r}"
            )
        if not _is_real(pseudo_entropy_smoothing) or not 0.0 <= pseudo_entropy_smoothing < 1.0:
            raise ValueError(f"pseudo_entropy_smoothing must be a float in [0, 1), got {pseudo_entropy_smoothing!r}")
        if delta_target_policy not in objectives.DELTA_TARGET_POLICIES:
            raise ValueError(
                f"delta_target_policy must be one of {_allowed(objectives.DELTA_TARGET_POLICIES)}, "
                f"got {delta_target_policy!r}"
            )
        if surrogate not in objectives.SURROGATES:
            raise ValueError(f"surrogate must be one of {_allowed(objectives.SURROGATES)}, got {surrogate!r}")
        bounded: tuple[tuple[str, Any, float, bool], ...] = (
            ("kl_coef", kl_coef, 0.0, True),
            ("kl_penalty_target", kl_penalty_target, 0.0, False),
            ("kl_adapt_factor", kl_adapt_factor, 1.0, False),
            ("kl_adapt_tolerance", kl_adapt_tolerance, 1.0, False),
            ("feature_drift_coef", feature_drift_coef, 0.0, True),
            ("dual_clip", dual_clip, 1.0, False),
            ("ratio_change_limit", ratio_change_limit, 0.0, False),
        )
        for name, value, low, inclusive in bounded:
            optional = name in ("dual_clip", "ratio_change_limit")
            if optional and value is None:
                continue
            if not (_is_real(value) and (value >= low if inclusive else value > low)):
                bound = f">= {low:g}" if inclusive else f"> {low:g}"
                allowed = f"None or a finite float {bound}" if optional else f"a finite float {bound}"
                raise ValueError(f"{name} must be {allowed}, got {value!r}")

        if kl_trust_region is not None:
            _check_kl_trust_region(kl_trust_region)
        if ratio_change_stop not in RATIO_CHANGE_STOPS:
            raise ValueError(
                f"ratio_change_stop must be one of {_allowed(RATIO_CHANGE_STOPS)}, got {ratio_change_stop!r}"
            )
        if ratio_change_stop != "before_step" and ratio_change_limit is None:
            raise ValueError(
                "ratio_change_stop places ESPO's early stop and needs ratio_change_limit; with ratio_change_limit=None "
                f"it must be 'before_step', got {ratio_change_stop!r}"
            )

        # decoded once, here and in restoring_slope
        alpha = objectives.restoring_slope(peaked_policy_loss, kl_trust_region=kl_trust_region is not None)
        clipped_only = {
            "peaked_policy_loss": (alpha > 0.0, peaked_policy_loss, "False", "it shapes the clipped surrogate"),
            "dual_clip": (dual_clip is not None, dual_clip, "None", "it bounds the clipped surrogate"),
            "kl_trust_region": (kl_trust_region is not None, kl_trust_region, "None", "it clips by a KL bound"),
            "clip_range_high": (
                clip_range_high is not None,
                clip_range_high,
                "None",
                "SPO's penalty has one curvature |A|/ε and the unclipped surrogate no target",
            ),
        }
        for name, (requested, shown, default, reason) in clipped_only.items():
            if requested and surrogate != "clipped":
                raise ValueError(
                    f"{name} needs surrogate='clipped' ({reason}); with surrogate={surrogate!r} it must be {default}, "
                    f"got {shown!r}"
                )
        if kl_trust_region is not None:
            if delta_target_policy != "absolute":
                raise ValueError(
                    "kl_trust_region replaces the ratio target by a KL bound; with it delta_target_policy must be "
                    f"'absolute', got {delta_target_policy!r}"
                )
            if clip_range_high is not None:
                raise ValueError(
                    "kl_trust_region replaces the ratio clipping by a KL bound; with it clip_range_high must be None, "
                    f"got {clip_range_high!r}"
                )
        check_clip_ranges(clip_range, clip_range_high, delta_target_policy)

        if action_space is not None and not has_action_probabilities(action_space):
            needs_probabilities = {
                "value_grad_rescaling": value_grad_rescaling is not None,
                "delta_target_policy": delta_target_policy == "logit",
            }
            for name, requested in needs_probabilities.items():
                if requested:
                    allowed = "None" if name == "value_grad_rescaling" else "'absolute'"
                    raise ValueError(
                        f"{name} needs action probabilities (Discrete, MultiDiscrete or MultiBinary action spaces); "
                        f"the action space is {action_space}, where only {name}={allowed} is allowed"
                    )

    def _setup_model(self) -> None:
        super()._setup_model()
        # derived from the saved raw value, so rebuilt by load() like SB3's clip_range schedule
        self._clip_range_high_schedule = None if self.clip_range_high is None else as_schedule(self.clip_range_high)
        self._kl_trust_region_schedule = None if self.kl_trust_region is None else as_schedule(self.kl_trust_region)
        self._preactivations = None
        if self.feature_drift_coef > 0.0:
            self._preactivations = _PreActivations(_last_hidden_layer(self.policy))
        if self.records_rollout_policy:
            self._use_recording_rollout_buffer()
            if not isinstance(self.rollout_buffer, _RolloutPolicyRecord):
                raise ValueError(
                    "the exact KL (kl_coef > 0 or kl_trust_region) and feature_drift_coef need a rollout buffer whose "
                    f"samples carry the rollout policy's data: rollout_buffer_class must be None, "
                    f"{self._recording_buffer_names()}, got {type(self.rollout_buffer).__name__}"
                )
            self.rollout_buffer.resize_records(
                self._distribution_parameter_size() if self.uses_exact_kl else 0,
                self._preactivations.size if self._preactivations is not None else 0,
            )

    def _use_recording_rollout_buffer(self) -> None:
        """Where the algorithm builds its buffer without ``rollout_buffer_class``, swap in one that records."""

    def _recording_buffer_names(self) -> str:
        """The rollout buffers of this algorithm whose samples carry the rollout policy's data, for messages."""
        return "RolloutPolicyBuffer or DictRolloutPolicyBuffer"

    def _distribution_parameter_size(self) -> int:
        """Width of the rollout policy's ``distribution_parameters`` recorded per step for the exact KL."""
        return distribution_parameter_size(self.action_space)

    def _excluded_save_params(self) -> list[str]:
        return [
            *super()._excluded_save_params(),
            "_preactivations",
            "_clip_range_high_schedule",
            "_kl_trust_region_schedule",
        ]

    @property
    def restoring_slope(self) -> float:
        """``α``: the slope beyond the ratio target, or the KL rollback coefficient with ``kl_trust_region``."""
        return objectives.restoring_slope(self.peaked_policy_loss, kl_trust_region=self.kl_trust_region is not None)

    @property
    def uses_kl_penalty(self) -> bool:
        """Whether the adaptive KL penalty is on."""
        return self.kl_coef > 0.0

    @property
    def uses_exact_kl(self) -> bool:
        """Whether the update computes the exact per-state ``KL(π_old ‖ π)`` (penalty or trust region)."""
        return self.uses_kl_penalty or self.kl_trust_region is not None

    @property
    def records_rollout_policy(self) -> bool:
        """Whether the rollout buffer records the rollout policy's distribution or features."""
        return self.uses_exact_kl or self.feature_drift_coef > 0.0

    def _rollout_policy_record(self) -> dict[str, th.Tensor | None]:
        """What the forward pass that just picked the actions computed, for ``RolloutPolicyBuffer.add``."""
        return {
            "old_distribution": distribution_parameters(self.policy.action_dist) if self.uses_exact_kl else None,
            "old_features": None if self._preactivations is None else self._preactivations.output,
        }

    def collect_rollouts(
        self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer, n_rollout_steps: int
    ) -> bool:
        """The algorithm's own ``collect_rollouts``; when an option needs them, ``collect_recorded_rollouts``."""
        if not self.records_rollout_policy:
            return super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)
        return self.collect_recorded_rollouts(env, callback, rollout_buffer, n_rollout_steps)

    def collect_recorded_rollouts(
        self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer, n_rollout_steps: int
    ) -> bool:
        """SB3's ``collect_rollouts`` that also hands the rollout policy's distribution parameters and features
        to ``rollout_buffer.add`` with each step (as sb3-contrib's MaskablePPO hands over ``action_masks``).

        What an algorithm adds to a step (action masks, LSTM states) comes from ``_rollout_step``; the values that
        bootstrap truncated episodes and the last step from ``_terminal_value`` and ``_last_values``.
        """
        assert self._last_obs is not None, "No previous observation was provided"
        self.policy.set_training_mode(False)
        n_steps = 0
        rollout_buffer.reset()
        if self.use_sde:
            self.policy.reset_noise(env.num_envs)
        callback.on_rollout_start()
        while n_steps < n_rollout_steps:
            if self.use_sde and self.sde_sample_freq > 0 and n_steps % self.sde_sample_freq == 0:
                self.policy.reset_noise(env.num_envs)
            with th.no_grad():
                obs_tensor = obs_as_tensor(self._last_obs, self.device)  # type: ignore[arg-type]
                action_tensor, values, log_probs, step_data = self._rollout_step(obs_tensor, env)
                record = self._rollout_policy_record()
            actions = action_tensor.cpu().numpy()
            clipped_actions = actions
            if isinstance(self.action_space, spaces.Box):
                if self.policy.squash_output:
                    clipped_actions = self.policy.unscale_action(clipped_actions)
                else:
                    clipped_actions = np.clip(actions, self.action_space.low, self.action_space.high)
            new_obs, rewards, dones, infos = env.step(clipped_actions)
            self.num_timesteps += env.num_envs
            callback.update_locals(locals())
            if not callback.on_step():
                return False
            self._update_info_buffer(infos, dones)
            n_steps += 1
            if isinstance(self.action_space, spaces.Discrete):
                actions = actions.reshape(-1, 1)
            # timeouts bootstrap with the value function (SB3 GH issue #633)
            for idx, done in enumerate(dones):
                if (
                    done
                    and infos[idx].get("terminal_observation") is not None
                    and infos[idx].get("TimeLimit.truncated", False)
                ):
                    terminal_obs = self.policy.obs_to_tensor(infos[idx]["terminal_observation"])[0]
                    with th.no_grad():
                        terminal_value = self._terminal_value(terminal_obs, idx)
                    rewards[idx] += self.gamma * terminal_value
            rollout_buffer.add(
                self._last_obs,  # type: ignore[arg-type]
                actions,
                rewards,
                self._last_episode_starts,  # type: ignore[arg-type]
                values,
                log_probs,
                **step_data,
                **record,
            )
            self._last_obs = new_obs  # type: ignore[assignment]
            self._last_episode_starts = dones
            self._end_rollout_step()
        with th.no_grad():
            values = self._last_values(obs_as_tensor(new_obs, self.device), dones)  # type: ignore[arg-type]
        rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    def _rollout_step(self, obs_tensor: Any, env: VecEnv) -> tuple[th.Tensor, th.Tensor, th.Tensor, dict[str, Any]]:
        """One forward pass of the rollout: actions, values, log-probabilities and the algorithm's own
        ``rollout_buffer.add`` arguments."""
        actions, values, log_probs = self.policy(obs_tensor)
        return actions, values, log_probs, {}

    def _end_rollout_step(self) -> None:
        """After the step is stored: what the algorithm carries to the next step (LSTM states)."""

    def _terminal_value(self, terminal_obs: Any, env_index: int) -> th.Tensor:
        """``V`` of a truncated episode's last observation in environment ``env_index``."""
        return self.policy.predict_values(terminal_obs)[0]

    def _last_values(self, obs_tensor: Any, dones: np.ndarray) -> th.Tensor:
        """``V`` of the observations after the rollout's last step, which bootstrap the returns."""
        return self.policy.predict_values(obs_tensor)

    def _evaluate_actions(self, rollout_data: Any, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        """``V(s)``, ``log π(a|s)`` and the entropy of a minibatch: ``policy.evaluate_actions`` with what the
        algorithm's policy needs besides the observations (action masks, LSTM states)."""
        return self.policy.evaluate_actions(rollout_data.observations, actions)

    def _policy_distribution(self, rollout_data: Any) -> Distribution:
        """The current distribution of a minibatch's states, from a forward pass of the actor."""
        return self.policy.get_distribution(rollout_data.observations)

    def _padding_mask(self, rollout_data: Any) -> th.Tensor | None:
        """Boolean, ``False`` on a minibatch's padded samples; ``None`` when every sample counts."""
        return None

    def _current_distribution(self, rollout_data: Any, batch_size: int) -> Distribution:
        """The action distribution set by the last ``evaluate_actions`` call.

        SB3's actor-critic policies (and sb3-contrib's) store it in ``policy.action_dist``; reusing it keeps
        one forward pass per minibatch. A policy that does not gets a second forward pass.
        """
        distribution = getattr(self.policy, "action_dist", None)
        if isinstance(distribution, Distribution) and distribution_batch_size(distribution) == batch_size:
            return distribution
        return self._policy_distribution(rollout_data)

    def _loss_options(
        self,
        clip_range: float,
        clip_range_high: float | None,
        clip_range_vf: float | None,
        kl_trust_region: float | None,
    ) -> LossOptions:
        """The options of this update's loss, with the clip ranges and the KL bound this update uses."""
        return LossOptions(
            clip_range=clip_range,
            clip_range_high=clip_range_high,
            surrogate=self.surrogate,
            delta_target_policy=self.delta_target_policy,
            restoring_slope=self.restoring_slope,
            dual_clip=self.dual_clip,
            kl_trust_region=kl_trust_region,
            kl_coef=self.kl_coef if self.uses_kl_penalty else None,
            value_grad_rescaling=self.value_grad_rescaling,
            pseudo_entropy_smoothing=self.pseudo_entropy_smoothing,
            feature_drift_coef=self.feature_drift_coef if self._preactivations is not None else None,
            ent_coef=self.ent_coef,
            vf_coef=self.vf_coef,
            clip_range_vf=clip_range_vf,
            normalize_advantage=self.normalize_advantage,
        )

    def train(self) -> None:
        """Update policy using the currently gathered rollout buffer (one forward pass per minibatch)."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        progress = self._current_progress_remaining
        # read at the end of training on an overshooting last rollout, and kept in range (scheduled_value)
        upper = LOGIT_CLIP_RANGE_MAX if self.delta_target_policy == "logit" else math.inf
        clip_range = scheduled_value(self.clip_range, progress, upper)  # type: ignore[arg-type]
        clip_range_high = None
        if self._clip_range_high_schedule is not None:
            clip_range_high = scheduled_value(self._clip_range_high_schedule, progress, upper)
        kl_bound = None
        if self._kl_trust_region_schedule is not None:
            kl_bound = scheduled_value(self._kl_trust_region_schedule, progress)
        clip_range_vf = None
        if self.clip_range_vf is not None:
            clip_range_vf = self.clip_range_vf(progress)  # type: ignore[operator]
        options = self._loss_options(clip_range, clip_range_high, clip_range_vf, kl_bound)
        probabilities = has_action_probabilities(self.action_space)
        # the running mean stays a tensor during the update (no sync per minibatch) and a float between updates
        pseudo_entropy_average: th.Tensor | float | None = self._pseudo_entropy_average

        entropy_losses, pg_losses, value_losses = [], [], []
        # detached tensors, read once after the epochs instead of one sync per minibatch
        ratios: list[th.Tensor] = []
        targets: list[th.Tensor] = []
        normalized_advantages: list[th.Tensor] = []
        logits: list[th.Tensor] = []
        grad_norms: list[th.Tensor] = []
        value_loss_scales: list[th.Tensor] = []
        state_kls: list[th.Tensor] = []
        feature_drifts: list[th.Tensor] = []

        continue_training = True
        for epoch in range(self.n_epochs):
            approx_kl_divs = []
            state_kls = []
            for rollout_data in self.rollout_buffer.get(self.batch_size):
                actions = rollout_data.actions
                if isinstance(self.action_space, spaces.Discrete):
                    actions = rollout_data.actions.long().flatten()
                mask = self._padding_mask(rollout_data)

                values, log_prob, entropy = self._evaluate_actions(rollout_data, actions)
                distribution: Distribution | None = None
                if probabilities or options.uses_exact_kl:
                    distribution = self._current_distribution(rollout_data, len(rollout_data.advantages))
                evaluation = policy_evaluation(
                    options,
                    values.flatten(),
                    log_prob,
                    entropy,
                    distribution,
                    getattr(rollout_data, "old_distribution", None),
                    None if self._preactivations is None else self._preactivations.output,
                )
                minibatch = Minibatch(
                    rollout_data.advantages,
                    rollout_data.returns,
                    rollout_data.old_values,
                    rollout_data.old_log_prob,
                    getattr(rollout_data, "old_features", None),
                    mask,
                )
                loss, statistics, pseudo_entropy_average = variant_ppo_loss(
                    options, evaluation, minibatch, pseudo_entropy_average
                )
                pg_losses.append(statistics.policy_loss.item())
                value_losses.append(statistics.value_loss.item())
                entropy_losses.append(statistics.entropy_loss.item())
                ratios.append(statistics.ratio)
                targets.append(statistics.target)
                normalized_advantages.append(statistics.advantages)
                if probabilities and distribution is not None:
                    parameters = distribution_parameters(distribution)
                    logits.append(parameters if mask is None else parameters[mask])
                if statistics.value_loss_scale is not None:
                    value_loss_scales.append(statistics.value_loss_scale)
                if statistics.kl is not None:
                    state_kls.append(statistics.kl)
                if statistics.feature_drift is not None:
                    feature_drifts.append(statistics.feature_drift)
                approx_kl_div = statistics.approx_kl.cpu().numpy()
                approx_kl_divs.append(approx_kl_div)

                if self.target_kl is not None and approx_kl_div > 1.5 * self.target_kl:
                    continue_training = False
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch} due to reaching max kl: {approx_kl_div:.2f}")
                    break
                if self.ratio_change_limit is not None:
                    change = objectives.ratio_change(statistics.ratio).item()
                    if change > self.ratio_change_limit:
                        continue_training = False
                        if self.verbose >= 1:
                            print(f"Early stopping at step {epoch} due to reaching max mean |r - 1|: {change:.3f}")
                        if self.ratio_change_stop == "before_step":
                            break

                self.policy.optimizer.zero_grad()
                loss.backward()
                grad_norm = th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                grad_norms.append(grad_norm)
                self.policy.optimizer.step()
                if not continue_training:  # ESPO's "after_step": the violating minibatch has had its step
                    break

            self._n_updates += 1
            if not continue_training:
                break

        if pseudo_entropy_average is not None:
            self._pseudo_entropy_average = float(pseudo_entropy_average)
        last_epoch_kl = th.cat(state_kls) if state_kls else None
        if self.uses_kl_penalty and last_epoch_kl is not None:
            # Once per rollout, from the last epoch's mean KL: per-minibatch adaptation is unstable.
            adapted = objectives.adapt_kl_coef(
                self.kl_coef,
                last_epoch_kl.mean().item(),
                self.kl_penalty_target,
                self.kl_adapt_factor,
                self.kl_adapt_tolerance,
            )
            # a β halved down to float underflow would read as "penalty off" and could never double again
            self.kl_coef = max(adapted, KL_COEF_FLOOR)

        explained_var = explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())

        self.logger.record("train/entropy_loss", np.mean(entropy_losses))
        self.logger.record("train/policy_gradient_loss", np.mean(pg_losses))
        self.logger.record("train/value_loss", np.mean(value_losses))
        self.logger.record("train/approx_kl", np.mean(approx_kl_divs))
        self._record_trust_region(ratios, targets, normalized_advantages, clip_range, clip_range_high)
        self.logger.record("train/loss", loss.item())
        self.logger.record("train/explained_variance", explained_var)
        if grad_norms:
            self.logger.record("train/grad_norm", th.stack(grad_norms).mean().item())
        if logits:
            pseudo_entropy = pseudo_entropy_from_parameters(self.policy.action_dist, th.cat(logits))
            self.logger.record("train/pseudo_entropy", pseudo_entropy.mean().item())
        value_loss_scale = 1.0
        if value_loss_scales:
            value_loss_scale = th.stack(value_loss_scales).mean().item()
        self.logger.record("train/value_loss_scale", value_loss_scale)
        if options.kl_coef is not None:
            self.logger.record("train/kl_coef", options.kl_coef)
        if last_epoch_kl is not None:
            self.logger.record("train/kl", last_epoch_kl.mean().item())
            self.logger.record("train/kl_p95", th.quantile(last_epoch_kl.double(), 0.95).item())
            if options.kl_trust_region is not None:
                beyond = (last_epoch_kl >= options.kl_trust_region).double().mean()
                self.logger.record("train/kl_beyond_bound_fraction", beyond.item())
        if feature_drifts:
            self.logger.record("train/feature_drift", th.stack(feature_drifts).mean().item())
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
        if clip_range_high is not None:
            self.logger.record("train/clip_range_high", clip_range_high)
        if kl_bound is not None:
            self.logger.record("train/kl_trust_region", kl_bound)
        if self.clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)

    def _record_trust_region(
        self,
        ratios: list[th.Tensor],
        targets: list[th.Tensor],
        advantages: list[th.Tensor],
        clip_range: float,
        clip_range_high: float | None,
    ) -> None:
        """The update's trust-region health, in a few vectorised operations over all its samples.

        Fractions are means of minibatch means, as SB3 computes ``clip_fraction``, so that key is SB3's number.
        """
        ratio = th.cat(ratios)
        columns = objectives.trust_region_statistics(
            ratio, th.cat(targets), th.cat(advantages), clip_range, clip_range_high
        )
        sizes = [len(minibatch) for minibatch in ratios]
        if len(set(sizes)) == 1:
            minibatch_means = columns.view(len(sizes), sizes[0], -1).mean(dim=1)
        else:
            minibatch_means = th.stack([chunk.mean(dim=0) for chunk in th.split(columns, sizes)])
        clip_fraction = (minibatch_means[:, 0] + minibatch_means[:, 1]).double().mean()
        high, low, past_target, target_deviation, change = minibatch_means.double().mean(dim=0).tolist()
        self.logger.record("train/clip_fraction", clip_fraction.item())
        self.logger.record("train/clip_high_fraction", high)
        self.logger.record("train/clip_low_fraction", low)
        self.logger.record("train/past_target_fraction", past_target)
        self.logger.record("train/ratio_deviation", target_deviation)
        self.logger.record("train/ratio_change", change)
        self.logger.record("train/ratio_max", ratio.max().item())
        self.logger.record("train/ratio_min", ratio.min().item())

    def learn(
        self: SelfVariantPPO,
        total_timesteps: int,
        callback: Any = None,
        log_interval: int = 1,
        tb_log_name: str | None = None,
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
        **kwargs: Any,
    ) -> SelfVariantPPO:
        """The algorithm's ``learn`` (``kwargs``: its own further arguments, such as MaskablePPO's ``use_masking``);
        the TensorBoard run is named after the class (``LogitPPO_1``) unless given.

        The options are checked again first, so that a value changed since construction (an attribute set by
        hand, ``load``'s ``custom_objects``) fails here, before any compute is spent, never mid-training.
        """
        self.validate_options(action_space=self.action_space, clip_range=self.clip_range, **self.variant_options())
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=type(self).__name__ if tb_log_name is None else tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
            **kwargs,
        )


class VariantPPO(VariantAlgorithm, PPO):
    """Proximal Policy Optimization (Schulman et al. 2017, arXiv:1707.06347) with options against collapse.

    Every option below is independent and off by default; with all of them off the
    algorithm trains exactly like SB3's ``PPO``. The options:

    - **value-gradient rescaling** by the pseudo-entropy ``H'(s) = Σ_a π(a|s)(1 − π(a|s))``, so the
      value loss cannot dominate the shared weights once the policy is confident;
    - a **target policy in logit space**: PPO's clipping target ``π_old(1 + ε sign A)`` replaced by
      ``π_old(1 + ε sign A) / (1 + ε sign A (2π_old − 1))``;
    - a **restoring force** beyond the target: the peaked loss ``|A(π' − π)/π_old|`` or any slope
      ``α`` in ``[0, 1]`` (Truly PPO's rollback, Wang et al. 2019);
    - the **SPO surrogate** ``r A − |A|/(2ε)(r − 1)²`` (Xie et al., arXiv:2401.16025);
    - the **adaptive KL penalty** ``r A − β KL(π_old ‖ π)`` of the PPO paper, section 4;
    - **Clip-Higher** (Yu et al. 2025, arXiv:2503.14476): a separate upper clip range ``ε_high``;
    - the **dual clip** ``max(min(r A, clip(r) A), c A)`` for ``A < 0`` (Ye et al. 2020, arXiv:1912.09729);
    - the **KL-triggered trust region** of TR-PPO and Truly PPO (Wang et al. 2019, arXiv:1903.07940);
    - **ratio-deviation early stopping** (ESPO, Sun et al. 2022, arXiv:2202.00079);
    - **feature-drift regularisation** (PFO, Moalla et al. 2024, arXiv:2405.00662).

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, ...)
    :param env: The environment to learn from (if registered in Gym, can be str)
    :param learning_rate: The learning rate, it can be a function of the current progress remaining (from 1 to 0)
    :param n_steps: The number of steps to run for each environment per update
    :param batch_size: Minibatch size
    :param n_epochs: Number of epoch when optimizing the surrogate loss
    :param gamma: Discount factor
    :param gae_lambda: Factor for trade-off of bias vs variance for Generalized Advantage Estimator
    :param clip_range: Clipping parameter ``ε``, it can be a function of the current progress remaining (from 1 to 0).
        It sets the target ratio of every surrogate and the curvature of SPO; with ``clip_range_high`` it is the
        lower range ``ε_low``. Any ``ε >= 0`` (``< 1`` for the logit target) is accepted, schedules ending at 0
        included; a schedule is checked over the whole of training at construction. When the last rollout
        overshoots the budget (progress remaining < 0), the schedule is read at its end: a ``lin_`` schedule
        gives ``ε = 0`` where SB3's ``PPO`` uses a slightly negative ``ε`` (see ``scheduled_value``).
    :param clip_range_vf: Clipping parameter for the value function, as in ``PPO``
    :param normalize_advantage: Whether to normalize or not the advantage
    :param ent_coef: Entropy coefficient for the loss calculation
    :param vf_coef: Value function coefficient for the loss calculation
    :param max_grad_norm: The maximum value for the gradient clipping
    :param use_sde: Whether to use generalized State Dependent Exploration (gSDE)
    :param sde_sample_freq: Sample a new noise matrix every n steps when using gSDE
    :param rollout_buffer_class: Rollout buffer class to use. ``None`` selects ``RolloutPolicyBuffer`` (or its
        ``Dict`` version), whose samples carry the rollout policy's distribution and features when an option
        needs them (exact KL, PFO); such options require one of these two classes.
    :param rollout_buffer_kwargs: Keyword arguments to pass to the rollout buffer on creation
    :param target_kl: Limit the KL divergence between updates by stopping epochs early, as in ``PPO``
        (independent of the KL penalty)
    :param stats_window_size: Window size for the rollout logging
    :param tensorboard_log: the log location for tensorboard (if None, no logging)
    :param policy_kwargs: additional arguments to be passed to the policy on creation
    :param verbose: Verbosity level: 0 for no output, 1 for info messages, 2 for debug messages
    :param seed: Seed for the pseudo random generators
    :param device: Device (cpu, cuda, ...) on which the code should be run.
    :param _init_setup_model: Whether or not to build the network at the creation of the instance
    :param value_grad_rescaling: ``None``, ``"per_state"``, ``"per_batch"`` or ``"smoothed"``: multiply the value
        loss by ``H'(s)`` of the current policy (no gradient through ``H'``) per state, by its minibatch mean,
        or by an exponential running average of minibatch means carried across minibatches, epochs and rollouts.
        Needs a Discrete, MultiDiscrete or MultiBinary action space.
    :param pseudo_entropy_smoothing: Coefficient ``c`` in ``[0, 1)`` of the running average
        ``m ← c m + (1 − c) mean H'`` used by ``"smoothed"``
    :param delta_target_policy: ``"absolute"`` (PPO's target) or ``"logit"`` (the same step in logit space;
        needs action probabilities and ``clip_range < 1``)
    :param peaked_policy_loss: ``False`` (clipped), ``True`` (peaked ``|·|`` loss) or a float ``α`` in ``[0, 1]``,
        the slope of the restoring force beyond the target. Only with ``surrogate="clipped"``.
    :param surrogate: ``"clipped"`` (the seed's piecewise-linear family, shaped by ``peaked_policy_loss``),
        ``"spo"`` (the smooth SPO objective) or ``"unclipped"`` (plain ``r A``, the KL-penalty form)
    :param kl_coef: Initial ``β`` of the adaptive KL penalty ``β KL(π_old ‖ π)``; ``0`` disables it. The attribute
        holds the current, adapted ``β`` and is saved with the model.
    :param kl_penalty_target: ``d_targ`` of the KL penalty (> 0)
    :param kl_adapt_factor: ``β`` is multiplied or divided by this factor (> 1) once per rollout
    :param kl_adapt_tolerance: ``β`` changes when the last epoch's mean KL leaves
        ``[d_targ / tolerance, d_targ · tolerance]`` (tolerance > 1)
    :param clip_range_high: ``ε_high`` of Clip-Higher: the target is ``1 + ε_high`` for ``A > 0`` and ``1 − ε_low``
        for ``A < 0`` (in logit space with the logit target). ``None``: ``ε_high = ε_low``. A float, a schedule or
        rl-zoo3's ``"lin_<initial>"``, checked and read like ``clip_range``. Not with SPO, the unclipped surrogate
        or the KL trust region.
    :param dual_clip: ``c > 1``: for ``A < 0`` and ``r > c`` the objective is the constant ``c A``. ``None`` disables
        it. Only with ``surrogate="clipped"``.
    :param kl_trust_region: per-state KL bound ``δ > 0`` of TR-PPO: a sample stops pulling once
        ``KL(π_old ‖ π)(s) >= δ`` and ``r A > A``; with ``peaked_policy_loss = α > 0`` its objective there is
        ``r A − α KL(s)`` (Truly PPO). Replaces the ratio clipping; ``None`` disables it. ``δ`` is the trust
        region's clip range and is scheduled like ``clip_range``: a float, a callable of the progress remaining or
        rl-zoo3's ``"lin_<initial>"`` (the reference decays ``δ`` linearly to 0 on Atari); a schedule starts
        above 0 and may end at 0. The value used is logged as ``train/kl_trust_region``.
    :param ratio_change_limit: ESPO's threshold: stop the epochs once a minibatch's ``mean |r − 1|`` exceeds it
        (``> 0``); ``None`` disables it. Independent of ``target_kl`` and checked where SB3 checks it: the
        violating minibatch is not stepped on unless ``ratio_change_stop="after_step"``.
    :param ratio_change_stop: ``"before_step"`` (as SB3's ``target_kl``: the minibatch whose ``mean |r − 1|``
        exceeds the limit is measured before its step and not stepped on) or ``"after_step"`` (as published ESPO
        code: that step is taken, then the epochs stop). Only with ``ratio_change_limit``.
    :param feature_drift_coef: PFO's coefficient (``>= 0``) of ``mean((φ(s) − φ_old(s))²)``, ``φ`` the
        pre-activations of the actor's last hidden layer, ``φ_old`` recorded during the rollout; 0 disables it.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": ActorCriticPolicy,
        "CnnPolicy": ActorCriticCnnPolicy,
        "MultiInputPolicy": MultiInputActorCriticPolicy,
    }

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        n_steps: int = 2048,
        batch_size: int = 64,
        n_epochs: int = 10,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip_range: float | Schedule = 0.2,
        clip_range_vf: float | Schedule | None = None,
        normalize_advantage: bool = True,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        rollout_buffer_class: type[RolloutBuffer] | None = None,
        rollout_buffer_kwargs: dict[str, Any] | None = None,
        target_kl: float | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
        *,
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
    ):
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            batch_size=batch_size,
            n_epochs=n_epochs,
            gamma=gamma,
            gae_lambda=gae_lambda,
            clip_range=clip_range,
            clip_range_vf=clip_range_vf,
            normalize_advantage=normalize_advantage,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            use_sde=use_sde,
            sde_sample_freq=sde_sample_freq,
            rollout_buffer_class=rollout_buffer_class,
            rollout_buffer_kwargs=rollout_buffer_kwargs,
            target_kl=target_kl,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=False,
        )
        self._set_variant_options(
            clip_range,
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
        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        if self.rollout_buffer_class is None:
            dict_observations = isinstance(self.observation_space, spaces.Dict)
            self.rollout_buffer_class = DictRolloutPolicyBuffer if dict_observations else RolloutPolicyBuffer
        super()._setup_model()


class LogitPPO(VariantPPO):
    """``VariantPPO`` with the target policy placed in logit space (``delta_target_policy="logit"``).

    Takes every argument of ``VariantPPO``; only the default changes.
    """

    def __init__(self, *args: Any, delta_target_policy: str = "logit", **kwargs: Any) -> None:
        super().__init__(*args, delta_target_policy=delta_target_policy, **kwargs)


class PeakedPPO(VariantPPO):
    """``VariantPPO`` with the peaked loss ``|A(π' − π)/π_old|`` (``peaked_policy_loss=True``).

    Takes every argument of ``VariantPPO``; only the default changes.
    """

    def __init__(self, *args: Any, peaked_policy_loss: bool | float = True, **kwargs: Any) -> None:
        super().__init__(*args, peaked_policy_loss=peaked_policy_loss, **kwargs)


class RescaledPPO(VariantPPO):
    """``VariantPPO`` with smoothed pseudo-entropy value-gradient rescaling (``value_grad_rescaling="smoothed"``).

    Takes every argument of ``VariantPPO``; only the default changes.
    """

    def __init__(self, *args: Any, value_grad_rescaling: str | None = "smoothed", **kwargs: Any) -> None:
        super().__init__(*args, value_grad_rescaling=value_grad_rescaling, **kwargs)


class SPOPPO(VariantPPO):
    """``VariantPPO`` with the Simple Policy Optimization surrogate (Xie et al., arXiv:2401.16025).

    ``surrogate="spo"``: maximise ``r A − |A|/(2ε)(r − 1)²``. Takes every argument of
    ``VariantPPO``; only the default changes.
    """

    def __init__(self, *args: Any, surrogate: str = "spo", **kwargs: Any) -> None:
        super().__init__(*args, surrogate=surrogate, **kwargs)


class KLPenaltyPPO(VariantPPO):
    """The adaptive-KL form of PPO (Schulman et al. 2017, arXiv:1707.06347, section 4).

    Maximises ``r A − β KL(π_old ‖ π)``, with ``β`` halved when the last epoch's mean KL is
    below ``d_targ/1.5`` and doubled above ``1.5·d_targ``, once per rollout. Defaults are the
    paper's: ``kl_coef=1`` (initial β), ``kl_penalty_target=0.01``, factor 2, tolerance 1.5,
    and no clipping (``surrogate="unclipped"``; pass ``surrogate="clipped"`` to keep the clipped
    term as well). The KL is exact (see ``sb3_ppo_variants.distributions.exact_kl``).
    Takes every argument of ``VariantPPO``; only the defaults change.
    """

    def __init__(self, *args: Any, surrogate: str = "unclipped", kl_coef: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, surrogate=surrogate, kl_coef=kl_coef, **kwargs)


class TrulyPPO(VariantPPO):
    """Truly PPO (TR-PPO-RB, Wang et al. 2019, arXiv:1903.07940): KL-triggered clipping with rollback.

    A sample whose state has left the trust region ``KL(π_old ‖ π)(s) >= δ`` while ``r A > A`` gets the
    objective ``r A − α KL(s)``; every other sample keeps ``r A``. The KL is exact and per state.
    Defaults ``kl_trust_region=δ=0.03`` and ``peaked_policy_loss=α=5``, the reference's MuJoCo values
    (wangyuhuix/TrulyPPO ``run.py``); its Atari values are ``δ = "lin_0.0008"`` and ``α = 20``
    (``hyperparams/ppo_truly.yml``). ``TRPPO`` is the same trust region without the rollback.
    Takes every argument of ``VariantPPO``; only the defaults change.
    """

    def __init__(
        self,
        *args: Any,
        kl_trust_region: float | str | Schedule | None = 0.03,
        peaked_policy_loss: bool | float = 5.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, kl_trust_region=kl_trust_region, peaked_policy_loss=peaked_policy_loss, **kwargs)


class TRPPO(VariantPPO):
    """TR-PPO (Wang et al. 2019, arXiv:1903.07940): the KL-triggered trust region without rollback.

    A sample whose state has left the trust region ``KL(π_old ‖ π)(s) >= δ`` while ``r A > A`` stops
    pulling: its objective is ``r A`` with no gradient, as in the reference's ``stop_gradient``. Every other
    sample keeps ``r A``. Default ``kl_trust_region=δ=0.035``, the reference's MuJoCo value
    (wangyuhuix/TrulyPPO ``run.py``, ``kl``); its Atari value is ``δ = "lin_0.001"``
    (``hyperparams/ppo_tr.yml``). Takes every argument of ``VariantPPO``; only the default changes.
    """

    def __init__(self, *args: Any, kl_trust_region: float | str | Schedule | None = 0.035, **kwargs: Any) -> None:
        super().__init__(*args, kl_trust_region=kl_trust_region, **kwargs)


class DualClipPPO(VariantPPO):
    """Dual-clip PPO (Ye et al. 2020, arXiv:1912.09729, eq. 5): ``max(min(r A, clip(r) A), c A)`` for ``A < 0``.

    Default ``dual_clip=c=3``, the paper's value. Takes every argument of ``VariantPPO``; only the default changes.
    """

    def __init__(self, *args: Any, dual_clip: float | None = 3.0, **kwargs: Any) -> None:
        super().__init__(*args, dual_clip=dual_clip, **kwargs)
