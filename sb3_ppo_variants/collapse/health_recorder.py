"""The health recorder: representation and shared-gradient health of the policy, logged while training."""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import ActorCriticPolicy

from sb3_ppo_variants.collapse import health
from sb3_ppo_variants.collapse.detector import is_positive_int
from sb3_ppo_variants.collapse.events import HEALTH_FILE, append_csv_row, start_csv

__all__ = ["HEALTH_COLUMNS", "HealthRecorder"]

HEALTH_COLUMNS = (
    "timesteps",
    "feature_erank",
    "feature_rank99",
    "feature_dim",
    "dead_fraction",
    "last_dead_fraction",
    "preact_norm",
    "weight_norm",
    "grad_policy_shared",
    "grad_value_shared",
    "grad_ratio_value_policy",
)


class HealthRecorder(BaseCallback):
    """Logs the health of the policy's representation and of its shared gradients every ``every`` rollouts.

    On a batch of the rollout just collected (drawn with its own generator, so training is
    unchanged): the effective rank (Roy & Vetterli) and the 99 %-energy rank of the last
    hidden features the action head reads, the dead-unit fractions, the last pre-activation
    norm and the weight norm; and the norms of the gradients of the policy loss (PPO's
    surrogate at ratio 1) and of ``vf_coef ×`` the value loss on the parameters both heads
    share, and their ratio (value over policy). With nothing shared (SB3's default
    ``MlpPolicy``) the gradient keys are left out and a warning says so once.

    Keys: ``health/feature_erank``, ``health/feature_rank99``, ``health/dead_fraction``,
    ``health/preact_norm``, ``health/weight_norm``, ``health/grad_policy_shared``,
    ``health/grad_value_shared``, ``health/grad_ratio_vf_pg``.

    :param every: rollouts (one per ``train()``) between two measurements.
    :param batch_size: states of the rollout used for a measurement.
    :param save_path: a folder for ``health.csv`` as well as the logger (``None``: logger only).
    :param seed: seed of the generator that draws the batch.
    :param verbose: 1 prints the warning about unshared heads too.
    """

    def __init__(
        self,
        every: int = 10,
        batch_size: int = 512,
        save_path: str | os.PathLike[str] | None = None,
        seed: int = 0,
        verbose: int = 0,
    ):
        super().__init__(verbose=verbose)
        if not is_positive_int(every):
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        if not is_positive_int(batch_size) or batch_size < 2:
            raise ValueError(f"batch_size must be an integer >= 2, got {batch_size!r}")
        if save_path is not None and not isinstance(save_path, (str, os.PathLike)):
            raise ValueError(f"save_path must be None or a path, got {save_path!r}")
        self.every = int(every)
        self.batch_size = int(batch_size)
        self.save_path = None if save_path is None else Path(save_path)
        self.rng = np.random.default_rng(seed)
        self.n_rollouts = 0
        self.rows: list[dict[str, float]] = []
        self.shared_names: list[str] | None = None
        self._disabled: str | None = None

    def _on_training_start(self) -> None:
        if self.save_path is not None and not (self.save_path / HEALTH_FILE).is_file():
            self.save_path.mkdir(parents=True, exist_ok=True)
            start_csv(self.save_path / HEALTH_FILE, HEALTH_COLUMNS)

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        self.n_rollouts += 1
        if (self.n_rollouts - 1) % self.every == 0:
            self.record()

    def _warn_once(self, message: str) -> None:
        if self._disabled != message:
            self._disabled = message
            warnings.warn(message, stacklevel=2)
            if self.verbose >= 1:
                print(f"HealthRecorder: {message}")

    def _batch(self) -> tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor] | None:
        buffer = getattr(self.model, "rollout_buffer", None)
        policy = self.model.policy
        if buffer is None or not isinstance(policy, ActorCriticPolicy):
            self._warn_once("health metrics need an on-policy actor-critic algorithm (PPO, A2C): not recorded")
            return None
        if isinstance(buffer.observations, dict):
            self._warn_once("health metrics do not support Dict observations: not recorded")
            return None
        size = buffer.buffer_size * buffer.n_envs if buffer.full else buffer.pos * buffer.n_envs
        if size < 2:
            return None
        indices = self.rng.choice(size, size=min(self.batch_size, size), replace=False)
        if buffer.generator_ready:  # already flattened by train()
            take = lambda array: array[indices]  # noqa: E731
        else:
            take = lambda array: health.as_numpy_batch(array, indices)  # noqa: E731
        device = policy.device
        observations = th.as_tensor(take(buffer.observations), device=device)
        actions = th.as_tensor(take(buffer.actions), device=device)
        advantages = th.as_tensor(take(buffer.advantages), device=device).flatten()
        returns = th.as_tensor(take(buffer.returns), device=device).flatten()
        return observations, actions, advantages, returns

    def record(self) -> dict[str, float] | None:
        """Measure now and log; returns the row, or ``None`` when nothing could be measured."""
        batch = self._batch()
        if batch is None:
            return None
        observations, actions, advantages, returns = batch
        policy: ActorCriticPolicy = self.model.policy  # type: ignore[assignment]
        was_training = policy.training
        policy.set_training_mode(False)
        try:
            state = health.representation_health(policy, observations)
            row: dict[str, float] = {"timesteps": self.model.num_timesteps, **asdict(state)}
            row.update(self._gradient_health(policy, observations, actions, advantages, returns))
        finally:
            policy.set_training_mode(was_training)
        for key in ("feature_erank", "feature_rank99", "dead_fraction", "preact_norm", "weight_norm"):
            self.logger.record(f"health/{key}", row[key])
        if math.isfinite(row.get("grad_ratio_value_policy", math.nan)):
            self.logger.record("health/grad_policy_shared", row["grad_policy_shared"])
            self.logger.record("health/grad_value_shared", row["grad_value_shared"])
            self.logger.record("health/grad_ratio_vf_pg", row["grad_ratio_value_policy"])
        self.rows.append(row)
        if self.save_path is not None:
            append_csv_row(self.save_path / HEALTH_FILE, HEALTH_COLUMNS, row)
        return row

    def _gradient_health(
        self,
        policy: ActorCriticPolicy,
        observations: th.Tensor,
        actions: th.Tensor,
        advantages: th.Tensor,
        returns: th.Tensor,
    ) -> dict[str, float]:
        nan = {"grad_policy_shared": math.nan, "grad_value_shared": math.nan, "grad_ratio_value_policy": math.nan}
        if isinstance(self.model.action_space, gym.spaces.Discrete):
            actions = actions.long().flatten()
        values, log_prob, _ = policy.evaluate_actions(observations, actions)
        if self.shared_names is None:
            # The log-probability reaches every parameter the action head reads, for any
            # action distribution (a Categorical's logits, a Gaussian's mean, one Categorical
            # per dimension of a MultiDiscrete).
            shared = health.shared_parameters(log_prob, values, policy.named_parameters())
            self.shared_names = [name for name, _ in shared]
            if not shared:
                self._warn_once(
                    "the policy and value heads share no parameters (e.g. SB3's default MlpPolicy): "
                    "the shared-gradient ratio is not recorded"
                )
        if not self.shared_names:
            return nan
        parameters = dict(policy.named_parameters())
        shared_params = [parameters[name] for name in self.shared_names]
        if getattr(self.model, "normalize_advantage", True) and len(advantages) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        # PPO's clipped surrogate at ratio 1: its gradient is -E[A ∇log π].
        ratio = th.exp(log_prob - log_prob.detach())
        policy_loss = -(advantages * ratio).mean()
        value_loss = float(getattr(self.model, "vf_coef", 1.0)) * th.nn.functional.mse_loss(returns, values.flatten())
        policy_norm = health.gradient_norm(policy_loss, shared_params)
        value_norm = health.gradient_norm(value_loss, shared_params)
        return {
            "grad_policy_shared": policy_norm,
            "grad_value_shared": value_norm,
            "grad_ratio_value_policy": value_norm / policy_norm if policy_norm > 0 else math.inf,
        }
