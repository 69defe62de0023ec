"""SB3 callbacks that catch a policy collapse, keep what explains it, and can undo it.

Composed the way SB3 composes ``EvalCallback`` with ``StopTrainingOnNoModelImprovement``::

    rollback = RollbackToBest(lr_scale=0.5)
    on_eval = CollapseOnEval(margin=0.5, patience=3, callback_on_collapse=rollback)
    model.learn(1e6, callback=[EvalCallback(eval_env, eval_freq=10_000, callback_after_eval=on_eval),
                               HealthRecorder()])

* :class:`CollapseOnEval` follows ``parent.last_mean_reward`` after each evaluation;
* :class:`CollapseOnRollout` follows the mean return of the last training episodes;
* :class:`RollbackToBest` restores the kept best policy, optimizer and ``VecNormalize``;
* :class:`HealthRecorder` logs ``health/*`` (feature rank, dead units, shared-gradient norms);
* :class:`CollapseMonitor` is all of it behind one set of keywords, for an rl-zoo3 yml ``callback:``.

A collapse is PPO's catastrophic drop from a good policy to one worse than random
(Schulman et al. 2017, arXiv:1707.06347; the seeds' "Experimental modifications").
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import sys
import warnings
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, EvalCallback, EventCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import HumanOutputFormat, KVWriter
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.save_util import load_from_zip_file, recursive_getattr, recursive_setattr
from stable_baselines3.common.type_aliases import Schedule
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, sync_envs_normalization

from sb3_ppo_variants.collapse import diagnosis as diagnosis_module
from sb3_ppo_variants.collapse import health
from sb3_ppo_variants.collapse.detector import (
    DropDetector,
    DropRule,
    is_finite_number,
    is_non_negative_int,
    is_positive_int,
)
from sb3_ppo_variants.collapse.events import (
    BEST_MODEL_FILE,
    BEST_VECNORMALIZE_FILE,
    CHECKPOINT_FOLDER,
    DIAGNOSTICS_FILE,
    HEALTH_FILE,
    MONITOR_FOLDER,
    PROBE_FILE,
    RETURNS_COLUMNS,
    RETURNS_FILE,
    CollapseEvent,
    MonitorRecord,
    append_csv_row,
    collapse_folder,
    start_csv,
)

__all__ = [
    "DIAGNOSTIC_KEYS",
    "DIAGNOSTIC_NAMES",
    "CollapseCallback",
    "CollapseMonitor",
    "CollapseOnEval",
    "CollapseOnRollout",
    "HealthRecorder",
    "RollbackToBest",
    "ScaledSchedule",
]

# Diagnostic name -> logger key written by ``train()``. SB3's PPO and A2C record the
# first five; ``VariantPPO`` adds the pseudo-entropy and the pre-clipping gradient norm.
# A key an algorithm does not record is kept as NaN.
DIAGNOSTIC_KEYS: dict[str, str] = {
    "entropy": "train/entropy_loss",
    "pseudo_entropy": "train/pseudo_entropy",
    "approx_kl": "train/approx_kl",
    "clip_fraction": "train/clip_fraction",
    "value_loss": "train/value_loss",
    "explained_variance": "train/explained_variance",
    "grad_norm": "train/grad_norm",
}
DIAGNOSTIC_NAMES: tuple[str, ...] = (*DIAGNOSTIC_KEYS, "learning_rate")
RETURN_SOURCES = ("auto", "eval", "rollout")
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


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _summarise(rows: Sequence[Mapping[str, float]], name: str) -> dict[str, float]:
    values = np.array([row.get(name, math.nan) for row in rows], dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"mean": math.nan, "min": math.nan, "max": math.nan}
    return {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max())}


class ScaledSchedule:
    """A learning-rate schedule multiplied by a constant factor.

    A module-level class rather than a closure so that a model saved after a rollback
    still pickles and loads with its reduced learning rate.

    :param schedule: the schedule to scale, a function of the remaining progress (1 → 0).
    :param scale: the factor applied to every value of ``schedule``.
    """

    def __init__(self, schedule: Schedule, scale: float):
        # Nested rollbacks multiply one factor instead of stacking wrappers.
        if isinstance(schedule, ScaledSchedule):
            scale *= schedule.scale
            schedule = schedule.schedule
        self.schedule: Schedule = schedule
        self.scale: float = float(scale)

    def __call__(self, progress_remaining: float) -> float:
        return self.scale * float(self.schedule(progress_remaining))

    def __repr__(self) -> str:
        return f"ScaledSchedule({self.schedule!r}, scale={self.scale})"


# ------------------------------------------------------------------------------------- rollback


class RollbackToBest(BaseCallback):
    """Child of a collapse callback: restores its kept best model and scales the learning rate.

    The policy parameters *and* the optimizer state of the checkpoint are restored (Adam's
    moments accumulated during the drop belong to the collapsed parameters), and the
    training env's ``VecNormalize`` statistics go back to their values at the best. The
    scale applies to ``model.learning_rate`` (so to ``lr_schedule``) and to every optimizer
    at once, and persists through ``save``/``load``.

    :param lr_scale: factor in ``(0, 1]`` applied to the learning-rate schedule at each rollback.
    :param verbose: 1 reports each rollback.
    """

    def __init__(self, lr_scale: float = 0.5, verbose: int = 0):
        super().__init__(verbose=verbose)
        if not is_finite_number(lr_scale) or not 0.0 < lr_scale <= 1.0:
            raise ValueError(f"lr_scale must be a number in (0, 1], got {lr_scale!r}")
        self.lr_scale = float(lr_scale)
        self.n_rollbacks = 0
        self.learning_rate: float | None = None

    def _on_step(self) -> bool:
        parent = self.parent
        if not isinstance(parent, CollapseCallback):
            raise RuntimeError("RollbackToBest must be the callback_on_collapse of a collapse callback")
        self.roll_back(parent.best_model_path, parent.best_normalization)
        return True

    def roll_back(self, checkpoint: Path | None, normalization: tuple[Any, Any] | None) -> float:
        if checkpoint is None or not checkpoint.is_file():
            raise RuntimeError("no kept checkpoint to roll back to yet")
        _, params, pytorch_variables = load_from_zip_file(str(checkpoint), device=self.model.device, load_data=False)
        self.model.set_parameters(params, exact_match=True, device=self.model.device)
        # set_parameters leaves plain tensors alone (e.g. SAC's log_ent_coef).
        for name, value in (pytorch_variables or {}).items():
            if value is not None:
                recursive_setattr(self.model, f"{name}.data", value.data)
        vec_normalize = self.model.get_vec_normalize_env()
        if vec_normalize is not None and normalization is not None:
            vec_normalize.obs_rms, vec_normalize.ret_rms = copy.deepcopy(normalization)
        self.learning_rate = self._scale_learning_rate(self.lr_scale)
        self.n_rollbacks += 1
        if self.verbose >= 1:
            print(f"RollbackToBest: restored {checkpoint}, learning rate now {self.learning_rate:.3g}")
        return self.learning_rate

    def _scale_learning_rate(self, scale: float) -> float:
        learning_rate = self.model.learning_rate
        if callable(learning_rate):
            self.model.learning_rate = ScaledSchedule(learning_rate, scale)
        else:
            self.model.learning_rate = float(learning_rate) * scale
        # load() rebuilds lr_schedule from learning_rate, so scaling the latter persists.
        self.model._setup_lr_schedule()
        current = float(self.model.lr_schedule(self.model._current_progress_remaining))
        for name in self.model._get_torch_save_params()[0]:
            optimizer = recursive_getattr(self.model, name)
            if isinstance(optimizer, th.optim.Optimizer):
                for group in optimizer.param_groups:
                    group["lr"] = current
        return current


# ------------------------------------------------------------------------------------- health


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


# ------------------------------------------------------------------------------------- detection


class _DiagnosticsTap(KVWriter):
    """Logger output that hands every dump to a collapse callback.

    Needed only for a ``callback_after_eval``: such a child never sees ``on_rollout_start``,
    and the parent dumps the logger (clearing the ``train/`` values) right before calling it.
    """

    def __init__(self, owner: CollapseCallback):
        self.owner = owner

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0) -> None:
        self.owner.record_diagnostics(key_values, timesteps=step)

    def close(self) -> None:
        pass


class CollapseCallback(EventCallback):
    """What every collapse callback does with a followed return; subclasses say where the return comes from.

    Every new best return saves ``best_model.zip``. Each followed return also saves a
    checkpoint; the last ``keep_checkpoints + patience`` are kept in ``checkpoints/``. On a
    collapse (:class:`~sb3_ppo_variants.collapse.detector.DropRule`) the callback

    * copies those checkpoints (``keep_checkpoints`` before the drop, the drop itself) and the
      next ``keep_checkpoints`` ones into ``collapse_<k>/``, with the best model;
    * collects a probe batch of ``probe_size`` states with the best policy (in the evaluation
      env when there is one, else from the rollout kept at the best) into ``collapse_<k>/probe.npz``;
    * diagnoses the last good against the first bad checkpoint on that batch
      (:func:`sb3_ppo_variants.collapse.diagnosis.diagnose`) into ``collapse_<k>/``;
    * records a :class:`~sb3_ppo_variants.collapse.events.CollapseEvent` with the training
      diagnostics before and during the drop, and logs ``collapse/*`` keys;
    * calls ``callback_on_collapse`` (e.g. :class:`RollbackToBest`).

    Diagnostics are read from the logger after each update: entropy (minus
    ``train/entropy_loss``), ``pseudo_entropy``, ``approx_kl``, ``clip_fraction``,
    ``value_loss``, ``explained_variance``, ``grad_norm``, the learning rate, plus
    ``extra_keys``; a key the algorithm does not record is NaN. The row stamped
    ``timesteps=T`` is the update that trained on the rollout ending at ``T``.

    :param margin: see :class:`~sb3_ppo_variants.collapse.detector.DropRule`.
    :param relative: see ``DropRule``.
    :param patience: see ``DropRule``.
    :param min_best: see ``DropRule``.
    :param warmup_steps: see ``DropRule``.
    :param keep_checkpoints: ``K``, checkpoints kept before the drop and after its detection (0: none).
    :param probe_size: states in the probe batch (0: no probe batch, no diagnosis).
    :param diagnose: run the diagnosis at each collapse.
    :param diagnostics_window: updates before the last good return kept as the event's "before" context.
    :param extra_keys: further logger keys to record with the diagnostics.
    :param save_path: folder for everything; by default ``collapse_monitor/`` inside the
        evaluation's folder, else the logger's folder when it writes files, else the working directory.
    :param callback_on_collapse: called at each collapse (right away, or at the next rollout start
        when the callback sees rollout events, so the next rollout is collected after it).
    :param verbose: 0 silent, 1 reports collapses, 2 also new best returns.
    """

    source = "eval"

    def __init__(
        self,
        margin: float = 0.5,
        relative: bool = True,
        patience: int = 3,
        min_best: float | None = None,
        warmup_steps: int = 0,
        keep_checkpoints: int = 2,
        probe_size: int = 2000,
        diagnose: bool = True,
        diagnostics_window: int = 10,
        extra_keys: Sequence[str] = (),
        save_path: str | os.PathLike[str] | None = None,
        callback_on_collapse: BaseCallback | None = None,
        verbose: int = 0,
    ):
        super().__init__(callback=callback_on_collapse, verbose=verbose)
        self.rule = DropRule(margin, relative, patience, min_best, warmup_steps)
        if not is_non_negative_int(keep_checkpoints):
            raise ValueError(f"keep_checkpoints must be an integer >= 0, got {keep_checkpoints!r}")
        if not is_non_negative_int(probe_size):
            raise ValueError(f"probe_size must be an integer >= 0, got {probe_size!r}")
        if not isinstance(diagnose, bool):
            raise ValueError(f"diagnose must be True or False, got {diagnose!r}")
        if not is_non_negative_int(diagnostics_window):
            raise ValueError(f"diagnostics_window must be an integer >= 0, got {diagnostics_window!r}")
        if isinstance(extra_keys, str) or not all(isinstance(key, str) and key for key in extra_keys):
            raise ValueError(f"extra_keys must be a list of logger keys such as 'train/actor_loss', got {extra_keys!r}")
        if save_path is not None and not isinstance(save_path, (str, os.PathLike)):
            raise ValueError(f"save_path must be None or a path, got {save_path!r}")
        self.keep_checkpoints = int(keep_checkpoints)
        self.probe_size = int(probe_size)
        self.diagnose = diagnose
        self.diagnostics_window = int(diagnostics_window)
        self.extra_keys = tuple(extra_keys)
        self.save_path = save_path
        self.trigger_on_collapse = callback_on_collapse is not None

        self.detector = DropDetector(self.rule)
        self.save_dir: Path | None = None
        self.best_model_path: Path | None = None
        self.best_normalization: tuple[Any, Any] | None = None
        self._best_rollout: np.ndarray | None = None
        self.record = MonitorRecord()
        self.returns: list[dict[str, Any]] = []
        # Off-policy algorithms update every few steps: a bounded window in memory, all in the CSV.
        self.diagnostics: deque[dict[str, float]] = deque(maxlen=10_000)
        self._last_recorded_updates: int | None = None
        # K before the drop, the last good one, and the drop itself.
        self._checkpoints: deque[tuple[int, float, Path]] = deque(maxlen=self.keep_checkpoints + 1 + self.rule.patience)
        self._keep_after: list[tuple[int, int]] = []  # (event index, checkpoints still to keep)
        self._receives_rollout_events = False
        self._collapse_pending = False
        self._tap: _DiagnosticsTap | None = None
        self._training_end_done = False

    # --------------------------------------------------------------------------- public state

    @property
    def events(self) -> list[CollapseEvent]:
        return self.record.events

    @property
    def n_collapses(self) -> int:
        return len(self.record.events)

    @property
    def n_rollbacks(self) -> int:
        return self.record.n_rollbacks

    @property
    def best_return(self) -> float:
        return self.detector.best_return

    @best_return.setter
    def best_return(self, value: float) -> None:
        self.detector.best_return = float(value)

    @property
    def best_timesteps(self) -> int | None:
        return self.detector.best_timesteps

    @property
    def threshold(self) -> float:
        """Return below which an observation counts as a drop (``-inf`` before any best)."""
        return self.detector.threshold

    def settings(self) -> dict[str, Any]:
        return {
            **asdict(self.rule),
            "following": self.source,
            "keep_checkpoints": self.keep_checkpoints,
            "probe_size": self.probe_size,
        }

    # --------------------------------------------------------------------------- lifecycle

    def _on_training_start(self) -> None:
        super()._on_training_start()
        self._training_end_done = False
        if self.save_dir is None:
            self.save_dir = self._resolve_save_dir()
            self.save_dir.mkdir(parents=True, exist_ok=True)
            (self.save_dir / CHECKPOINT_FOLDER).mkdir(exist_ok=True)
            start_csv(self.save_dir / RETURNS_FILE, RETURNS_COLUMNS)
            start_csv(self.save_dir / DIAGNOSTICS_FILE, ("timesteps", "n_updates", *self._diagnostic_columns()))
            self._write_record()
            # A second learn() must not re-record the last update of the first.
            self._last_recorded_updates = self.model._n_updates

    def _on_rollout_start(self) -> None:
        self._receives_rollout_events = True
        self.record_diagnostics(self.logger.name_to_value, timesteps=self.model.num_timesteps)
        # Acting here (not where the collapse was seen) means the next rollout is collected
        # after a rollback, and the on-policy update never mixes data of both policies.
        if self._collapse_pending:
            self._collapse_pending = False
            self._call_on_collapse()

    def _on_training_end(self) -> None:
        # rl-zoo3 calls on_training_end of its first callback a second time.
        if self._training_end_done:
            return
        self._training_end_done = True
        if self._receives_rollout_events:
            # learn() ends with train(): no rollout start follows the last update.
            self.record_diagnostics(self.logger.name_to_value, timesteps=self.model.num_timesteps)
        self._write_record()

    def _on_step(self) -> bool:
        return True

    def _install_tap(self) -> None:
        if self._tap is None:
            self._tap = _DiagnosticsTap(self)
        if not any(output is self._tap for output in self.logger.output_formats):
            self.logger.output_formats.append(self._tap)

    # --------------------------------------------------------------------------- the return

    def observe_return(self, timesteps: int, value: float) -> None:
        """Feed one followed return: records it, keeps checkpoints, and acts on a collapse."""
        observation = self.detector.observe(timesteps, value)
        if observation is None:
            return
        if observation.new_best:
            self._keep_best(observation.timesteps, observation.value)
        self._save_checkpoint(observation.timesteps, observation.value)
        event_index = (
            self._declare_collapse(observation.timesteps, observation.value) if observation.collapsed else None
        )
        row = {
            "timesteps": observation.timesteps,
            "return": observation.value,
            "best_return": self.best_return,
            "threshold": self.threshold,
            "below_count": observation.below_count,
            "source": self.source,
            "event": event_index,
        }
        self.returns.append(row)
        if self.save_dir is not None:
            append_csv_row(self.save_dir / RETURNS_FILE, RETURNS_COLUMNS, row)
        self.logger.record("collapse/return", observation.value)
        self.logger.record("collapse/best_return", self.best_return)
        self.logger.record("collapse/threshold", self.threshold)
        self.logger.record("collapse/n_collapses", self.n_collapses)

    def _keep_best(self, timesteps: int, value: float) -> None:
        assert self.save_dir is not None
        self.best_model_path = self.save_dir / BEST_MODEL_FILE
        self.model.save(self.best_model_path)
        vec_normalize = self.model.get_vec_normalize_env()
        if vec_normalize is not None:
            self.best_normalization = copy.deepcopy((vec_normalize.obs_rms, vec_normalize.ret_rms))
            vec_normalize.save(str(self.save_dir / BEST_VECNORMALIZE_FILE))
        buffer = getattr(self.model, "rollout_buffer", None)
        if (
            self.probe_size
            and self._probe_env() is None
            and buffer is not None
            and not isinstance(buffer.observations, dict)
        ):
            self._best_rollout = buffer.observations.reshape(-1, *buffer.obs_shape).copy()
        if self.verbose >= 2:
            print(f"{type(self).__name__}: new best return {value:.2f} at step {timesteps}")

    def _save_checkpoint(self, timesteps: int, value: float) -> None:
        if self.save_dir is None or (self.keep_checkpoints == 0 and not self.diagnose):
            return
        path = self.save_dir / CHECKPOINT_FOLDER / f"{timesteps}.zip"
        self.model.save(path)
        if self._checkpoints.maxlen and len(self._checkpoints) == self._checkpoints.maxlen:
            oldest = self._checkpoints[0][2]
            if oldest != path:
                oldest.unlink(missing_ok=True)
        self._checkpoints.append((timesteps, value, path))
        still: list[tuple[int, int]] = []
        for index, remaining in self._keep_after:
            if remaining > 0:
                self._keep_checkpoint(index, timesteps, value, path)
            if remaining > 1:
                still.append((index, remaining - 1))
        self._keep_after = still

    def _keep_checkpoint(self, index: int, timesteps: int, value: float, path: Path) -> None:
        assert self.save_dir is not None
        folder = self.save_dir / collapse_folder(index)
        folder.mkdir(exist_ok=True)
        kept = folder / f"checkpoint_{timesteps}.zip"
        shutil.copyfile(path, kept)
        event = self.record.events[index - 1]
        if not any(item["timesteps"] == timesteps for item in event.checkpoints):
            event.checkpoints.append(
                {"timesteps": timesteps, "return": value, "path": str(kept.relative_to(self.save_dir))}
            )
            self._write_record()

    # --------------------------------------------------------------------------- a collapse

    def _declare_collapse(self, timesteps: int, value: float) -> int:
        assert self.save_dir is not None and self.best_model_path is not None
        index = self.n_collapses + 1
        folder = self.save_dir / collapse_folder(index)
        folder.mkdir(exist_ok=True)
        kept = self.save_dir / f"collapse_{index}_{BEST_MODEL_FILE}"
        shutil.copyfile(self.best_model_path, kept)

        # Updates at T < last good return shaped the good policy; updates with
        # last good <= T < detection are the ones that can have caused the drop.
        first_cause = self.detector.first_cause_timesteps()
        before = [row for row in self.diagnostics if row["timesteps"] < first_cause]
        before = before[len(before) - self.diagnostics_window :] if self.diagnostics_window else []
        during = [row for row in self.diagnostics if first_cause <= row["timesteps"] < timesteps]
        columns = self._diagnostic_columns()
        last_good = self.detector.last_good_timesteps
        event = CollapseEvent(
            index=index,
            source=self.source,
            detected_timesteps=int(timesteps),
            drop_start_timesteps=self.detector.drop_start_timesteps,
            last_good_timesteps=int(last_good if last_good is not None else self.best_timesteps or 0),
            best_timesteps=self.best_timesteps,
            best_return=self.best_return,
            threshold=self.threshold,
            return_at_detection=float(value),
            returns_below=list(self.detector.below_returns),
            checkpoint=kept.name,
            diagnostics_before={name: _summarise(before, name) for name in columns},
            diagnostics_during={name: _summarise(during, name) for name in columns},
            diagnostics_window=[dict(row) for row in before + during],
        )
        self.record.events.append(event)
        for checkpoint_timesteps, checkpoint_value, path in self._checkpoints:
            if checkpoint_timesteps >= 0:
                self._keep_checkpoint(index, checkpoint_timesteps, checkpoint_value, path)
        if self.keep_checkpoints:
            self._keep_after.append((index, self.keep_checkpoints))
        self._explain(event, folder)
        self._write_record()
        self.logger.record("collapse/n_collapses", self.n_collapses)
        if self.verbose >= 1:
            print(
                f"{type(self).__name__}: collapse at step {timesteps}: return {value:.2f} after a best of "
                f"{self.best_return:.2f} at step {self.best_timesteps}; kept in {folder}"
            )
        if self.trigger_on_collapse and self.callback is not None:
            if self._receives_rollout_events:
                self._collapse_pending = True
            else:
                # A callback_after_eval never sees a rollout start: act now.
                self._call_on_collapse()
        return index

    def _explain(self, event: CollapseEvent, folder: Path) -> None:
        """The probe batch and the diagnosis of the last good against the first bad checkpoint."""
        assert self.save_dir is not None
        if self.probe_size == 0:
            return
        observations = self._collect_probe()
        if observations is None:
            return
        diagnosis_module.save_probe(folder / PROBE_FILE, observations, best_timesteps=event.best_timesteps or -1)
        event.probe = str((folder / PROBE_FILE).relative_to(self.save_dir))
        if not self.diagnose:
            return
        by_step = {timesteps: path for timesteps, _, path in self._checkpoints}
        good = by_step.get(event.last_good_timesteps, self.best_model_path)
        bad = by_step.get(event.drop_start_timesteps) if event.drop_start_timesteps is not None else None
        if good is None or bad is None:
            return
        try:
            result = diagnosis_module.diagnose(
                good, bad, observations, checkpoints=[(step, path) for step, _, path in self._checkpoints]
            )
        except ValueError as error:  # e.g. not an actor-critic policy
            warnings.warn(f"no diagnosis of collapse {event.index}: {error}", stacklevel=2)
            return
        result.summary.update(good_timesteps=event.last_good_timesteps, bad_timesteps=event.drop_start_timesteps)
        event.diagnosis = str(result.save(folder).relative_to(self.save_dir))
        if self.verbose >= 1:
            print(diagnosis_module.describe(result), end="")

    def _collect_probe(self) -> np.ndarray | None:
        env = self._probe_env()
        if env is not None and self.best_model_path is not None:
            best: BasePolicy | BaseAlgorithm
            try:
                best = diagnosis_module.load_policy(self.best_model_path, device="cpu")
            except ValueError:
                best = type(self.model).load(self.best_model_path, device="cpu")
            return diagnosis_module.collect_probe(best, env, self.probe_size, seed=0)
        if self._best_rollout is not None:
            return self._best_rollout[: self.probe_size]
        return None

    def _probe_env(self) -> VecEnv | None:
        return None

    def _call_on_collapse(self) -> None:
        assert self.callback is not None
        self.callback.on_step()
        if isinstance(self.callback, RollbackToBest):
            self._after_rollback(self.callback)

    def _after_rollback(self, rollback: RollbackToBest) -> None:
        self.record.n_rollbacks += 1
        # The restored policy is the new reference: a later drop is measured from here.
        self.detector.restart_from(self.model.num_timesteps)
        event = self.record.events[-1] if self.record.events else None
        if event is not None and event.rollback_timesteps is None:
            event.rollback_timesteps = self.model.num_timesteps
            event.learning_rate_after = rollback.learning_rate
        self._write_record()
        self.logger.record("collapse/n_rollbacks", self.n_rollbacks)
        self.logger.record("collapse/learning_rate", rollback.learning_rate)

    # --------------------------------------------------------------------------- diagnostics

    def _diagnostic_columns(self) -> tuple[str, ...]:
        return (*DIAGNOSTIC_NAMES, *self.extra_keys)

    def record_diagnostics(self, values: Mapping[str, Any], timesteps: int) -> None:
        """Record the training diagnostics the logger holds, once per update."""
        tracked = (*DIAGNOSTIC_KEYS.values(), *self.extra_keys)
        if not any(key in values for key in tracked):
            return
        n_updates = int(self.model._n_updates)
        # The logger keeps values until the next dump: skip what was already read.
        if n_updates == self._last_recorded_updates and n_updates > 0:
            return
        self._last_recorded_updates = n_updates
        row: dict[str, float] = {"timesteps": int(timesteps), "n_updates": n_updates}
        for name, key in DIAGNOSTIC_KEYS.items():
            row[name] = _as_float(values.get(key, math.nan))
        # SB3 logs minus the mean entropy as the entropy loss.
        row["entropy"] = -row["entropy"]
        row["learning_rate"] = _as_float(values.get("train/learning_rate", math.nan))
        for key in self.extra_keys:
            row[key] = _as_float(values.get(key, math.nan))
        self.diagnostics.append(row)
        if self.save_dir is not None:
            append_csv_row(
                self.save_dir / DIAGNOSTICS_FILE, ("timesteps", "n_updates", *self._diagnostic_columns()), row
            )

    # --------------------------------------------------------------------------- files

    def _run_dir(self) -> str | None:
        return None

    def _resolve_save_dir(self) -> Path:
        if self.save_path is not None:
            return Path(self.save_path)
        run_dir = self._run_dir()
        if run_dir is None and self._logger_writes_files():
            run_dir = self.logger.get_dir()
        return Path(run_dir or ".") / MONITOR_FOLDER

    def _logger_writes_files(self) -> bool:
        # SB3 gives even a stdout-only logger a temporary folder; only a logger that
        # writes files there marks a run folder.
        for output in self.logger.output_formats:
            if isinstance(output, _DiagnosticsTap):
                continue
            if isinstance(output, HumanOutputFormat) and output.file in (sys.stdout, sys.stderr):
                continue
            return True
        return False

    def _write_record(self) -> None:
        if self.save_dir is None:
            return
        self.record.settings = self.settings()
        self.record.best_return = self.best_return
        self.record.best_timesteps = self.best_timesteps
        self.record.write(self.save_dir)


def _eval_run_dir(evaluation: EvalCallback | None) -> str | None:
    if evaluation is None:
        return None
    if evaluation.best_model_save_path is not None:
        return evaluation.best_model_save_path
    if evaluation.log_path is not None:
        return os.path.dirname(evaluation.log_path)
    return None


class CollapseOnEval(CollapseCallback):
    """Follows an ``EvalCallback``: use it as its ``callback_after_eval``.

    Reads ``parent.last_mean_reward`` after each evaluation, as SB3's
    ``StopTrainingOnNoModelImprovement`` reads ``parent.best_mean_reward``; the probe batch is
    collected in the parent's ``eval_env``. The parameters are those of :class:`CollapseCallback`.
    """

    source = "parent_eval"

    def _on_training_start(self) -> None:
        if not isinstance(self.parent, EvalCallback) or self.parent.callback is not self:
            raise ValueError(
                f"{type(self).__name__} must be the callback_after_eval of an EvalCallback "
                "(as callback_on_new_best it would only see improvements)"
            )
        super()._on_training_start()
        self._install_tap()

    def _run_dir(self) -> str | None:
        return _eval_run_dir(self.parent) if isinstance(self.parent, EvalCallback) else None

    def _probe_env(self) -> VecEnv | None:
        return self.parent.eval_env if isinstance(self.parent, EvalCallback) else None

    def _on_step(self) -> bool:
        parent = self.parent
        assert isinstance(parent, EvalCallback)
        self.observe_return(parent.num_timesteps, parent.last_mean_reward)
        return True


class CollapseOnRollout(CollapseCallback):
    """Follows the mean return of the last ``rollout_window`` training episodes.

    The return is read from the ``Monitor`` infos (the data behind ``rollout/ep_rew_mean``) at
    the end of every rollout in which an episode finished; after a rollback the window
    restarts empty. The probe batch is the rollout collected when the best return was seen.

    :param rollout_window: number of most recent training episodes averaged.
    :param kwargs: the parameters of :class:`CollapseCallback`.
    """

    source = "rollout"

    def __init__(self, rollout_window: int = 10, **kwargs: Any):
        super().__init__(**kwargs)
        if not is_positive_int(rollout_window):
            raise ValueError(f"rollout_window must be an integer >= 1, got {rollout_window!r}")
        self.rollout_window = int(rollout_window)
        self._episode_returns: deque[float] = deque(maxlen=self.rollout_window)
        self._new_episodes = 0

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", ()):
            episode = info.get("episode") if isinstance(info, dict) else None
            if episode is not None:
                self._episode_returns.append(float(episode["r"]))
                self._new_episodes += 1
        return True

    def _on_rollout_end(self) -> None:
        if self._new_episodes > 0:
            self._new_episodes = 0
            self.observe_return(self.model.num_timesteps, float(np.mean(self._episode_returns)))

    def _after_rollback(self, rollback: RollbackToBest) -> None:
        super()._after_rollback(rollback)
        # Episodes of the collapsed policy must not count against the restored one.
        self._episode_returns.clear()
        self._new_episodes = 0


class CollapseMonitor(CollapseOnRollout):
    """All of the above behind one set of keywords, for an rl-zoo3 yml ``callback:`` entry.

    It follows, in this order of preference (``return_source="auto"``):

    * ``parent_eval``: the ``EvalCallback`` it is the ``callback_after_eval`` of;
    * ``own_eval``: its own evaluation of ``eval_env`` every ``eval_freq`` calls;
    * ``sibling_eval``: an ``EvalCallback`` in the same callback tree (how it finds the one
      rl-zoo3 appends), read on its next step or at the end of the rollout;
    * ``rollout``: the training episodes (:class:`CollapseOnRollout`).

    With ``rollback=True`` a :class:`RollbackToBest` acts on each collapse; with
    ``health_every`` a :class:`HealthRecorder` logs ``health/*`` and writes ``health.csv``.
    New code can compose those parts directly::

        callback:
          - sb3_ppo_variants.callbacks.CollapseMonitor:
              margin: 0.5
              patience: 3

    :param margin: see :class:`~sb3_ppo_variants.collapse.detector.DropRule`.
    :param relative: see ``DropRule``.
    :param patience: see ``DropRule``.
    :param min_best: see ``DropRule``.
    :param warmup_steps: see ``DropRule``.
    :param return_source: ``"auto"``, ``"eval"`` (an evaluation is required) or ``"rollout"``.
    :param eval_env: environment the monitor evaluates itself every ``eval_freq`` calls.
    :param eval_freq: calls (one per ``env.step()`` of the vectorised env) between own evaluations.
    :param n_eval_episodes: episodes per own evaluation.
    :param deterministic: evaluate ``eval_env`` with deterministic actions.
    :param rollout_window: training episodes averaged into the rollout return.
    :param rollback: on a collapse, restore the kept policy (and its optimizer state) and scale
        the learning rate by ``lr_scale``.
    :param lr_scale: factor in ``(0, 1]`` applied to the learning-rate schedule at each rollback.
    :param diagnostics_window: updates before the last good return kept as "before" context.
    :param extra_keys: further logger keys to record with the diagnostics.
    :param save_path: folder for everything (see :class:`CollapseCallback`).
    :param keep_checkpoints: checkpoints kept before the drop and after its detection.
    :param probe_size: states in the probe batch (0: none, and no diagnosis).
    :param diagnose: diagnose each collapse on the probe batch.
    :param health_every: rollouts between two health measurements (``None``: no health recording).
    :param verbose: 0 silent, 1 reports collapses and rollbacks, 2 also new best returns.
    """

    def __init__(
        self,
        margin: float = 0.5,
        relative: bool = True,
        patience: int = 3,
        min_best: float | None = None,
        warmup_steps: int = 0,
        return_source: str = "auto",
        eval_env: gym.Env | VecEnv | None = None,
        eval_freq: int = 10_000,
        n_eval_episodes: int = 5,
        deterministic: bool = True,
        rollout_window: int = 10,
        rollback: bool = False,
        lr_scale: float = 0.5,
        diagnostics_window: int = 10,
        extra_keys: Sequence[str] = (),
        save_path: str | os.PathLike[str] | None = None,
        keep_checkpoints: int = 2,
        probe_size: int = 2000,
        diagnose: bool = True,
        health_every: int | None = 10,
        verbose: int = 0,
    ):
        if return_source not in RETURN_SOURCES:
            raise ValueError(f"return_source must be one of {RETURN_SOURCES}, got {return_source!r}")
        if eval_env is not None and not isinstance(eval_env, (gym.Env, VecEnv)):
            raise ValueError(f"eval_env must be None, a gymnasium.Env or a VecEnv, got {type(eval_env).__name__}")
        if eval_env is not None and return_source == "rollout":
            raise ValueError("eval_env is only used with return_source 'auto' or 'eval', got return_source='rollout'")
        if not is_positive_int(eval_freq):
            raise ValueError(f"eval_freq must be an integer >= 1, got {eval_freq!r}")
        if not is_positive_int(n_eval_episodes):
            raise ValueError(f"n_eval_episodes must be an integer >= 1, got {n_eval_episodes!r}")
        if not isinstance(deterministic, bool):
            raise ValueError(f"deterministic must be True or False, got {deterministic!r}")
        if not isinstance(rollback, bool):
            raise ValueError(f"rollback must be True or False, got {rollback!r}")
        if health_every is not None and not is_positive_int(health_every):
            raise ValueError(f"health_every must be None or an integer >= 1, got {health_every!r}")
        super().__init__(
            rollout_window=rollout_window,
            margin=margin,
            relative=relative,
            patience=patience,
            min_best=min_best,
            warmup_steps=warmup_steps,
            keep_checkpoints=keep_checkpoints,
            probe_size=probe_size,
            diagnose=diagnose,
            diagnostics_window=diagnostics_window,
            extra_keys=extra_keys,
            save_path=save_path,
            callback_on_collapse=RollbackToBest(lr_scale, verbose=verbose),
            verbose=verbose,
        )
        self.trigger_on_collapse = rollback
        self.rollback = rollback
        self.return_source = return_source
        if eval_env is not None and not isinstance(eval_env, VecEnv):
            eval_env = DummyVecEnv([lambda: eval_env])  # type: ignore[list-item, return-value]
        self.eval_env = eval_env
        self.eval_freq = int(eval_freq)
        self.n_eval_episodes = int(n_eval_episodes)
        self.deterministic = deterministic
        self.health = None if health_every is None else HealthRecorder(every=health_every, verbose=verbose)
        self.following: str | None = None
        self._eval_callback: EvalCallback | None = None
        self._evaluations_seen = 0

    # Read by rl-zoo3 users and the old API.
    @property
    def margin(self) -> float:
        return self.rule.margin

    @property
    def relative(self) -> bool:
        return self.rule.relative

    @property
    def patience(self) -> int:
        return self.rule.patience

    @property
    def lr_scale(self) -> float:
        assert isinstance(self.callback, RollbackToBest)
        return self.callback.lr_scale

    @property
    def source(self) -> str:  # type: ignore[override]
        return self.following or "rollout"

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "rollback": self.rollback, "lr_scale": self.lr_scale}

    def rollback_to_best(self) -> float:
        """Restore the kept best policy now and scale the learning rate by ``lr_scale``.

        :return: the learning rate now in effect.
        """
        rollback = self.callback
        assert isinstance(rollback, RollbackToBest)
        learning_rate = rollback.roll_back(self.best_model_path, self.best_normalization)
        self._after_rollback(rollback)
        return learning_rate

    # --------------------------------------------------------------------------- lifecycle

    def _init_callback(self) -> None:
        super()._init_callback()
        if self.health is not None:
            self.health.init_callback(self.model)

    def _on_training_start(self) -> None:
        # Resolved at every learn(): a later call may bring its own EvalCallback.
        self._resolve_return_source()
        super()._on_training_start()
        if self.following == "parent_eval":
            self._install_tap()
        if self.health is not None:
            assert self.save_dir is not None
            self.health.save_path = self.save_dir
            self.health.on_training_start(self.locals, self.globals)

    def _on_step(self) -> bool:
        if self.following == "parent_eval":
            parent = self.parent
            assert isinstance(parent, EvalCallback)
            self.observe_return(parent.num_timesteps, parent.last_mean_reward)
            if self.health is not None:
                self.health.record()
        elif self.following == "own_eval":
            if self.n_calls % self.eval_freq == 0:
                self.observe_return(self.model.num_timesteps, self._evaluate())
        elif self.following == "sibling_eval":
            self._poll_eval_callback()
        else:
            super()._on_step()
        return True

    def _on_rollout_end(self) -> None:
        if self.following == "sibling_eval":
            # Catches an evaluation made on the last step of the rollout, before train().
            self._poll_eval_callback()
        elif self.following == "rollout":
            super()._on_rollout_end()
        if self.health is not None:
            self.health.update_locals(self.locals)
            self.health.on_rollout_end()

    def _on_training_end(self) -> None:
        if not self._training_end_done and self.following == "sibling_eval":
            self._poll_eval_callback()
        super()._on_training_end()

    # --------------------------------------------------------------------------- return source

    def _resolve_return_source(self) -> None:
        self._eval_callback = None
        parent = self.parent
        if isinstance(parent, EvalCallback):
            if parent.callback is not self:
                raise ValueError(
                    "CollapseMonitor must be the callback_after_eval of an EvalCallback "
                    "(as callback_on_new_best it would only see improvements)"
                )
            self._eval_callback = parent
            self.following = "parent_eval"
        elif self.eval_env is not None:
            self.following = "own_eval"
        elif self.return_source != "rollout" and (sibling := self._find_eval_callback()) is not None:
            self._eval_callback = sibling
            self._evaluations_seen = sibling.n_calls // sibling.eval_freq
            self.following = "sibling_eval"
        elif self.return_source == "eval":
            raise ValueError(
                "return_source='eval' needs an eval_env, an EvalCallback parent (callback_after_eval) "
                "or an EvalCallback in the same callback list"
            )
        else:
            self.following = "rollout"
        if self.verbose >= 1:
            print(f"CollapseMonitor: following the {self.following.replace('_', ' ')} return")

    def _find_eval_callback(self) -> EvalCallback | None:
        def walk(callback: Any) -> Iterator[EvalCallback]:
            if isinstance(callback, EvalCallback):
                yield callback
            if isinstance(callback, CallbackList):
                for child in callback.callbacks:
                    yield from walk(child)
            elif isinstance(callback, EventCallback) and callback.callback is not None:
                yield from walk(callback.callback)

        # learn() hands its locals, which hold the whole callback tree, to on_training_start.
        for candidate in walk(self.locals.get("callback")):
            if candidate.eval_freq > 0:
                return candidate
        return None

    def _poll_eval_callback(self) -> None:
        evaluation = self._eval_callback
        assert evaluation is not None
        # EvalCallback evaluates when its n_calls is a multiple of eval_freq.
        evaluations = evaluation.n_calls // evaluation.eval_freq
        if evaluations > self._evaluations_seen:
            self._evaluations_seen = evaluations
            self.observe_return(evaluation.num_timesteps, evaluation.last_mean_reward)

    def _evaluate(self) -> float:
        assert self.eval_env is not None
        if self.model.get_vec_normalize_env() is not None:
            sync_envs_normalization(self.training_env, self.eval_env)
        episode_returns, _ = evaluate_policy(
            self.model,
            self.eval_env,
            n_eval_episodes=self.n_eval_episodes,
            deterministic=self.deterministic,
            return_episode_rewards=True,
        )
        return float(np.mean(episode_returns))

    def _run_dir(self) -> str | None:
        return _eval_run_dir(self._eval_callback)

    def _probe_env(self) -> VecEnv | None:
        if self._eval_callback is not None:
            return self._eval_callback.eval_env
        return self.eval_env
