"""``VariantPPO``: stable-baselines3's PPO with the experimental modifications as independent options.

There is one training loop, ``VariantPPO.train()``. The presets at the bottom of
this module only change defaults.
"""

from __future__ import annotations

import math
import numbers
import weakref
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import (
    ActorCriticCnnPolicy,
    ActorCriticPolicy,
    BasePolicy,
    MultiInputActorCriticPolicy,
)
from stable_baselines3.common.type_aliases import GymEnv, Schedule
from stable_baselines3.common.utils import explained_variance
from torch.nn import functional as F

from sb3_ppo_variants import objectives
from sb3_ppo_variants.distributions import (
    RolloutKL,
    action_pseudo_entropy,
    distribution_parameters,
    has_action_probabilities,
    pseudo_entropy_from_parameters,
)

SelfVariantPPO = TypeVar("SelfVariantPPO", bound="VariantPPO")

VALUE_GRAD_RESCALINGS = (None, "per_state", "per_batch", "smoothed")
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
)
"""The keyword-only options ``VariantPPO`` adds to ``PPO``, in constructor order."""
KL_COEF_FLOOR = 1e-20
"""Smallest adapted ``β``: far below any useful penalty, far above float underflow."""


class _RolloutDistributionRecorder:
    """Rollout-buffer mixin for the exact KL penalty.

    It keeps the rollout policy's distribution parameters beside each stored step (handed
    over by a forward hook on the policy, so collecting them costs no extra forward pass)
    and remembers the flat indices of the last minibatch, so those parameters can be
    looked up for the samples of each minibatch.
    """

    last_batch_indices: np.ndarray | None = None
    pending_distribution_parameters: th.Tensor | None = None
    _step_distribution_parameters: list[th.Tensor | None]

    def reset(self) -> None:
        super().reset()  # type: ignore[misc]
        self._step_distribution_parameters = []
        self.pending_distribution_parameters = None

    def add(self, *args: Any, **kwargs: Any) -> None:
        self._step_distribution_parameters.append(self.pending_distribution_parameters)
        self.pending_distribution_parameters = None
        super().add(*args, **kwargs)  # type: ignore[misc]

    def old_distribution_parameters(self) -> th.Tensor | None:
        """Parameters recorded during the rollout, in the buffer's flat (env-major) order, or ``None``."""
        recorded = self._step_distribution_parameters
        n_steps = self.buffer_size  # type: ignore[attr-defined]
        if len(recorded) != n_steps or any(step is None for step in recorded):
            return None
        stacked = th.stack(recorded)  # type: ignore[arg-type]  # (n_steps, n_envs, n_parameters)
        # the same order as SB3's swap_and_flatten: index = env * n_steps + step
        return stacked.transpose(0, 1).reshape(-1, stacked.shape[-1])

    def _get_samples(self, batch_inds: np.ndarray, env: Any = None) -> Any:
        self.last_batch_indices = batch_inds
        return super()._get_samples(batch_inds, env)  # type: ignore[misc]


class IndexedRolloutBuffer(_RolloutDistributionRecorder, RolloutBuffer):
    """SB3's ``RolloutBuffer``, keeping the rollout policy's distribution parameters and minibatch indices."""


class IndexedDictRolloutBuffer(_RolloutDistributionRecorder, DictRolloutBuffer):
    """SB3's ``DictRolloutBuffer``, keeping the rollout policy's distribution parameters and minibatch indices."""


class _RecordRolloutDistribution:
    """Forward hook on the policy: ``policy(obs)`` is how SB3 samples actions while collecting a
    rollout, and it leaves the distribution in ``policy.action_dist``. Holds the buffer weakly so
    that copying or pickling the policy does not drag the algorithm along."""

    def __init__(self, buffer: _RolloutDistributionRecorder) -> None:
        self.buffer = weakref.ref(buffer)

    def __call__(self, policy: th.nn.Module, inputs: Any, outputs: Any) -> None:
        buffer = self.buffer()
        distribution = getattr(policy, "action_dist", None)
        if buffer is not None and isinstance(distribution, Distribution):
            buffer.pending_distribution_parameters = distribution_parameters(distribution)


def _allowed(values: tuple[Any, ...]) -> str:
    return ", ".join(repr(value) for value in values)


def _clip_range_bounds(clip_range: float | Schedule) -> list[float]:
    """Values of a clip range at the start and the end of training (a schedule is evaluated at both)."""
    if callable(clip_range):
        return [float(clip_range(1.0)), float(clip_range(0.0))]
    return [float(clip_range)]


class VariantPPO(PPO):
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
    - the **adaptive KL penalty** ``r A − β KL(π_old ‖ π)`` of the PPO paper, section 4.

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, ...)
    :param env: The environment to learn from (if registered in Gym, can be str)
    :param learning_rate: The learning rate, it can be a function of the current progress remaining (from 1 to 0)
    :param n_steps: The number of steps to run for each environment per update
    :param batch_size: Minibatch size
    :param n_epochs: Number of epoch when optimizing the surrogate loss
    :param gamma: Discount factor
    :param gae_lambda: Factor for trade-off of bias vs variance for Generalized Advantage Estimator
    :param clip_range: Clipping parameter ``ε``, it can be a function of the current progress remaining (from 1 to 0).
        It sets the target ratio of every surrogate and the curvature of SPO.
    :param clip_range_vf: Clipping parameter for the value function, as in ``PPO``
    :param normalize_advantage: Whether to normalize or not the advantage
    :param ent_coef: Entropy coefficient for the loss calculation
    :param vf_coef: Value function coefficient for the loss calculation
    :param max_grad_norm: The maximum value for the gradient clipping
    :param use_sde: Whether to use generalized State Dependent Exploration (gSDE)
    :param sde_sample_freq: Sample a new noise matrix every n steps when using gSDE
    :param rollout_buffer_class: Rollout buffer class to use. ``None`` selects SB3's buffer that records
        minibatch indices (needed by the exact KL penalty).
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
        self.value_grad_rescaling = value_grad_rescaling
        self.pseudo_entropy_smoothing = pseudo_entropy_smoothing
        self.delta_target_policy = delta_target_policy
        self.peaked_policy_loss = peaked_policy_loss
        self.surrogate = surrogate
        self.kl_coef = kl_coef
        self.kl_penalty_target = kl_penalty_target
        self.kl_adapt_factor = kl_adapt_factor
        self.kl_adapt_tolerance = kl_adapt_tolerance
        self.validate_options(
            action_space=getattr(self, "action_space", None),  # unset when load() builds the model without env
            clip_range=clip_range,
            **self.variant_options(),
        )
        # Plain Python state lives here, not in _setup_model: load() calls _setup_model again
        # after restoring attributes and would reset it.
        self._pseudo_entropy_average: float | None = None
        if _init_setup_model:
            self._setup_model()

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
    ) -> None:
        """Check the variant options; raise ``ValueError`` naming the argument and what is allowed.

        Usable before an environment exists (``action_space=None`` skips the action-space checks),
        e.g. to validate hyperparameters read from a file.
        """
        if value_grad_rescaling not in VALUE_GRAD_RESCALINGS:
            raise ValueError(
                f"value_grad_rescaling must be one of {_allowed(VALUE_GRAD_RESCALINGS)}, got {value_grad_rescaling!r}"
            )
        if (
            isinstance(pseudo_entropy_smoothing, bool)
            or not isinstance(pseudo_entropy_smoothing, numbers.Real)
            or not 0.0 <= pseudo_entropy_smoothing < 1.0
        ):
            raise ValueError(f"pseudo_entropy_smoothing must be a float in [0, 1), got {pseudo_entropy_smoothing!r}")
        if delta_target_policy not in objectives.DELTA_TARGET_POLICIES:
            raise ValueError(
                f"delta_target_policy must be one of {_allowed(objectives.DELTA_TARGET_POLICIES)}, "
                f"got {delta_target_policy!r}"
            )
        if surrogate not in objectives.SURROGATES:
            raise ValueError(f"surrogate must be one of {_allowed(objectives.SURROGATES)}, got {surrogate!r}")
        if not isinstance(peaked_policy_loss, bool):
            if (
                not isinstance(peaked_policy_loss, numbers.Real)
                or math.isnan(peaked_policy_loss)
                or not 0.0 <= peaked_policy_loss <= 1.0
            ):
                raise ValueError(
                    f"peaked_policy_loss must be False, True or a float in [0, 1] (the restoring slope), "
                    f"got {peaked_policy_loss!r}"
                )
        if surrogate != "clipped" and objectives.restoring_slope(peaked_policy_loss) > 0.0:
            raise ValueError(
                f"peaked_policy_loss shapes the clipped surrogate; with surrogate={surrogate!r} it must be False, "
                f"got {peaked_policy_loss!r}"
            )
        for name, value, low, inclusive in (
            ("kl_coef", kl_coef, 0.0, True),
            ("kl_penalty_target", kl_penalty_target, 0.0, False),
            ("kl_adapt_factor", kl_adapt_factor, 1.0, False),
            ("kl_adapt_tolerance", kl_adapt_tolerance, 1.0, False),
        ):
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
            ok = ok and (value >= low if inclusive else value > low)
            if not ok:
                bound = f">= {low:g}" if inclusive else f"> {low:g}"
                raise ValueError(f"{name} must be a finite float {bound}, got {value!r}")

        bounds = _clip_range_bounds(clip_range)
        if surrogate == "spo" and not all(epsilon > 0.0 for epsilon in bounds):
            raise ValueError(f"clip_range must be > 0 with surrogate='spo' (it divides the penalty), got {bounds}")
        if delta_target_policy == "logit" and not all(0.0 < epsilon < 1.0 for epsilon in bounds):
            raise ValueError(
                f"clip_range must be in (0, 1) with delta_target_policy='logit' "
                f"(the logit-space target needs 1 - clip_range > 0), got {bounds}"
            )

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
        if self.rollout_buffer_class is None:
            self.rollout_buffer_class = (
                IndexedDictRolloutBuffer if isinstance(self.observation_space, spaces.Dict) else IndexedRolloutBuffer
            )
        super()._setup_model()
        if self.uses_kl_penalty and isinstance(self.rollout_buffer, _RolloutDistributionRecorder):
            self.policy.register_forward_hook(_RecordRolloutDistribution(self.rollout_buffer))

    @property
    def restoring_slope(self) -> float:
        """``α``, the slope of the clipped surrogate beyond the target (0 for PPO)."""
        return objectives.restoring_slope(self.peaked_policy_loss)

    @property
    def uses_kl_penalty(self) -> bool:
        """Whether the adaptive KL penalty is on."""
        return self.kl_coef > 0.0

    def _surrogate_loss(
        self, ratio: th.Tensor, target: th.Tensor, advantages: th.Tensor, clip_range: float
    ) -> th.Tensor:
        if self.surrogate == "spo":
            return objectives.spo_surrogate(ratio, target, advantages, clip_range)
        if self.surrogate == "unclipped":
            return objectives.unclipped_surrogate(ratio, advantages)
        return objectives.clipped_surrogate(ratio, target, advantages, self.restoring_slope)

    def _current_distribution(self, observations: Any, batch_size: int) -> Distribution:
        """The action distribution set by the last ``evaluate_actions`` call.

        SB3's actor-critic policies store it in ``policy.action_dist``; reusing it keeps
        one forward pass per minibatch. A policy that does not gets a second forward pass.
        """
        distribution = getattr(self.policy, "action_dist", None)
        torch_distribution = getattr(distribution, "distribution", None)
        first = torch_distribution[0] if isinstance(torch_distribution, list) else torch_distribution
        if isinstance(distribution, Distribution) and first is not None and first.batch_shape[0] == batch_size:
            return distribution
        return self.policy.get_distribution(observations)

    def _scaled_value_loss(
        self, value_errors: th.Tensor, state_pseudo_entropy: th.Tensor | None
    ) -> tuple[th.Tensor, float]:
        """Value loss with the seed's pseudo-entropy rescaling, and the factor applied (mean factor per state)."""
        if self.value_grad_rescaling is None or state_pseudo_entropy is None:
            return value_errors.mean(), 1.0
        weights = state_pseudo_entropy.detach()
        if self.value_grad_rescaling == "per_state":
            return (weights * value_errors).mean(), weights.mean().item()
        batch_mean = weights.mean().item()
        if self.value_grad_rescaling == "per_batch":
            return batch_mean * value_errors.mean(), batch_mean
        # "smoothed": exponential average of minibatch means, carried across minibatches, epochs and rollouts
        if self._pseudo_entropy_average is None:
            self._pseudo_entropy_average = batch_mean
        else:
            smoothing = self.pseudo_entropy_smoothing
            self._pseudo_entropy_average = smoothing * self._pseudo_entropy_average + (1.0 - smoothing) * batch_mean
        return self._pseudo_entropy_average * value_errors.mean(), self._pseudo_entropy_average

    def _old_distribution_parameters(self) -> th.Tensor:
        """Parameters of the rollout policy's action distribution for every sample of the buffer.

        Normally recorded while the rollout was collected. When they were not (a buffer filled
        by other code), the policy has not changed since the rollout was collected, so one forward
        pass without gradient gives ``π_old`` exactly. The rows follow the buffer's flat order.
        """
        buffer = self.rollout_buffer
        if not isinstance(buffer, _RolloutDistributionRecorder):
            raise TypeError(
                "the exact KL penalty needs a rollout buffer that records minibatch indices "
                "(IndexedRolloutBuffer or IndexedDictRolloutBuffer)"
            )
        recorded = buffer.old_distribution_parameters()
        if recorded is not None:
            return recorded.to(self.device)
        return self._evaluate_old_distribution_parameters(buffer)

    def _evaluate_old_distribution_parameters(self, buffer: Any) -> th.Tensor:
        full = next(iter(buffer.get(batch_size=None)))
        order = th.as_tensor(buffer.last_batch_indices, device=self.device)
        n_samples = len(order)
        chunks = []
        with th.no_grad():
            for start in range(0, n_samples, self.batch_size):
                end = start + self.batch_size
                if isinstance(full.observations, dict):
                    observations = {key: value[start:end] for key, value in full.observations.items()}
                else:
                    observations = full.observations[start:end]
                chunks.append(distribution_parameters(self.policy.get_distribution(observations)))
        shuffled = th.cat(chunks)
        parameters = th.empty_like(shuffled)
        parameters[order] = shuffled
        return parameters

    def train(self) -> None:
        """Update policy using the currently gathered rollout buffer (one forward pass per minibatch)."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)  # type: ignore[operator]
        self.validate_options(
            clip_range=clip_range, delta_target_policy=self.delta_target_policy, surrogate=self.surrogate
        )
        if self.clip_range_vf is not None:
            clip_range_vf = self.clip_range_vf(self._current_progress_remaining)  # type: ignore[operator]
        probabilities = has_action_probabilities(self.action_space)
        rollout_kl = (
            RolloutKL(self._old_distribution_parameters(), self.policy.action_dist) if self.uses_kl_penalty else None
        )
        kl_coef = self.kl_coef

        entropy_losses, pg_losses, value_losses = [], [], []
        # detached tensors, read once after the epochs instead of one sync per minibatch
        ratios: list[th.Tensor] = []
        targets: list[th.Tensor] = []
        normalized_advantages: list[th.Tensor] = []
        logits: list[th.Tensor] = []
        grad_norms: list[th.Tensor] = []
        value_loss_scales: list[float] = []
        kl_divs: list[th.Tensor] = []

        continue_training = True
        for epoch in range(self.n_epochs):
            approx_kl_divs = []
            kl_divs = []
            for rollout_data in self.rollout_buffer.get(self.batch_size):
                actions = rollout_data.actions
                if isinstance(self.action_space, spaces.Discrete):
                    actions = rollout_data.actions.long().flatten()

                values, log_prob, entropy = self.policy.evaluate_actions(rollout_data.observations, actions)
                values = values.flatten()
                advantages = rollout_data.advantages
                # Normalization does not make sense if mini batchsize == 1 (SB3 GH issue #325)
                if self.normalize_advantage and len(advantages) > 1:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

                ratio = th.exp(log_prob - rollout_data.old_log_prob)
                target = objectives.target_ratio(
                    rollout_data.old_log_prob, advantages, clip_range, self.delta_target_policy
                )
                policy_loss = self._surrogate_loss(ratio, target, advantages, clip_range)
                pg_losses.append(policy_loss.item())
                ratios.append(ratio.detach())
                targets.append(target)
                normalized_advantages.append(advantages.detach())

                distribution: Distribution | None = None
                state_pseudo_entropy = None
                if probabilities or self.uses_kl_penalty:
                    distribution = self._current_distribution(rollout_data.observations, len(advantages))
                if probabilities and distribution is not None:
                    logits.append(distribution_parameters(distribution))
                    if self.value_grad_rescaling is not None:
                        state_pseudo_entropy = action_pseudo_entropy(distribution)

                if self.clip_range_vf is None:
                    values_pred = values
                else:
                    values_pred = rollout_data.old_values + th.clamp(
                        values - rollout_data.old_values, -clip_range_vf, clip_range_vf
                    )
                if self.value_grad_rescaling is None:
                    # SB3's exact expression, so that the default options reproduce PPO bit for bit
                    value_loss = F.mse_loss(rollout_data.returns, values_pred)
                    scaled_value_loss, value_loss_scale = value_loss, 1.0
                else:
                    value_errors = (rollout_data.returns - values_pred) ** 2
                    value_loss = value_errors.mean()
                    scaled_value_loss, value_loss_scale = self._scaled_value_loss(value_errors, state_pseudo_entropy)
                value_losses.append(value_loss.item())
                value_loss_scales.append(value_loss_scale)

                if entropy is None:
                    entropy_loss = -th.mean(-log_prob)
                else:
                    entropy_loss = -th.mean(entropy)
                entropy_losses.append(entropy_loss.item())

                loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * scaled_value_loss

                if rollout_kl is not None and distribution is not None:
                    batch_indices = self.rollout_buffer.last_batch_indices  # type: ignore[attr-defined]
                    kl = rollout_kl(th.as_tensor(batch_indices, device=self.device), distribution).mean()
                    kl_divs.append(kl.detach())
                    loss = loss + kl_coef * kl

                with th.no_grad():
                    approx_kl_div = objectives.approx_kl(log_prob, rollout_data.old_log_prob).cpu().numpy()
                    approx_kl_divs.append(approx_kl_div)

                if self.target_kl is not None and approx_kl_div > 1.5 * self.target_kl:
                    continue_training = False
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch} due to reaching max kl: {approx_kl_div:.2f}")
                    break

                self.policy.optimizer.zero_grad()
                loss.backward()
                grad_norm = th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                grad_norms.append(grad_norm)
                self.policy.optimizer.step()

            self._n_updates += 1
            if not continue_training:
                break

        if self.uses_kl_penalty and kl_divs:
            # Once per rollout, from the last epoch's mean KL: per-minibatch adaptation is unstable.
            adapted = objectives.adapt_kl_coef(
                self.kl_coef,
                th.stack(kl_divs).mean().item(),
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
        # diagnostics over all samples of the update, in a few vectorised operations
        clip_fraction, ratio_deviation = objectives.target_statistics(
            th.cat(ratios), th.cat(targets), th.cat(normalized_advantages)
        ).tolist()
        self.logger.record("train/clip_fraction", clip_fraction)
        self.logger.record("train/ratio_deviation", ratio_deviation)
        self.logger.record("train/loss", loss.item())
        self.logger.record("train/explained_variance", explained_var)
        if grad_norms:
            self.logger.record("train/grad_norm", th.stack(grad_norms).mean().item())
        if logits:
            pseudo_entropy = pseudo_entropy_from_parameters(self.policy.action_dist, th.cat(logits))
            self.logger.record("train/pseudo_entropy", pseudo_entropy.mean().item())
        self.logger.record("train/value_loss_scale", np.mean(value_loss_scales))
        if self.restoring_slope > 0.0:
            # the samples past the target are exactly those the restoring force acts on
            self.logger.record("train/restoring_fraction", clip_fraction)
        if self.uses_kl_penalty:
            self.logger.record("train/kl_coef", kl_coef)
            if kl_divs:
                self.logger.record("train/kl", th.stack(kl_divs).mean().item())
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
        if self.clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)

    def learn(
        self: SelfVariantPPO,
        total_timesteps: int,
        callback: Any = None,
        log_interval: int = 1,
        tb_log_name: str = "VariantPPO",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfVariantPPO:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )


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
