"""Callbacks that watch a training run for a policy collapse.

A policy collapse is the catastrophic drop the seeds describe: PPO reaches a good
policy and then, within a few updates, falls to one that scores worse than random
(Schulman et al. 2017, arXiv:1707.06347, and the seeds' "Experimental
modifications"). :class:`CollapseMonitor` notices the drop while training runs,
keeps the best policy, records what the training diagnostics did around the drop
and can roll the model back to the kept policy with a smaller learning rate.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import shutil
import sys
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, EvalCallback, EventCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import HumanOutputFormat, KVWriter
from stable_baselines3.common.save_util import load_from_zip_file, recursive_getattr, recursive_setattr
from stable_baselines3.common.type_aliases import Schedule
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, sync_envs_normalization

__all__ = ["DIAGNOSTIC_KEYS", "CollapseMonitor", "ScaledSchedule"]

# Diagnostic name -> logger key written by ``train()``. SB3's PPO and A2C record
# the first five; ``VariantPPO`` adds the pseudo-entropy and the pre-clipping
# gradient norm. A key an algorithm does not record is kept as NaN.
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

EVENTS_FILE = "collapse_events.json"
RETURNS_FILE = "collapse_returns.csv"
DIAGNOSTICS_FILE = "collapse_diagnostics.csv"
BEST_MODEL_FILE = "best_model.zip"
BEST_VECNORMALIZE_FILE = "best_vecnormalize.pkl"
RETURNS_COLUMNS = ("timesteps", "return", "best_return", "threshold", "below_count", "source", "event")


class ScaledSchedule:
    """A learning-rate schedule multiplied by a constant factor.

    A module-level class rather than a closure so that a model saved after a
    rollback still pickles and loads with its reduced learning rate.

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


class _DiagnosticsTap(KVWriter):
    """Logger output that hands every dump to a :class:`CollapseMonitor`.

    Needed only when the monitor is the ``callback_after_eval`` of an
    ``EvalCallback``: such a child never sees ``on_rollout_start``, and the
    parent dumps the logger (clearing the ``train/`` values) right before calling it.
    """

    def __init__(self, monitor: CollapseMonitor):
        self.monitor = monitor

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0) -> None:
        self.monitor._record_diagnostics(key_values, timesteps=step)

    def close(self) -> None:
        pass


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _json_safe(value: Any) -> Any:
    """NaN and infinities become ``null`` so the event file is strict JSON."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _summarise(rows: Sequence[Mapping[str, float]], name: str) -> dict[str, float]:
    values = np.array([row[name] for row in rows], dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"mean": math.nan, "min": math.nan, "max": math.nan}
    return {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max())}


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and bool(value >= 1)


def _is_non_negative_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and bool(value >= 0)


def _is_finite_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


class CollapseMonitor(BaseCallback):
    """Detect a policy collapse during training, keep the best policy and optionally roll back to it.

    The motivation is the catastrophic drop from a good policy to a worse-than-random
    one that the clipped objective of PPO (Schulman et al. 2017, arXiv:1707.06347)
    does not prevent. The monitor follows one return signal:

    * ``"eval"``: the mean return of an evaluation. It reads it from the
      ``EvalCallback`` it is the ``callback_after_eval`` of, or from an
      ``EvalCallback`` in the same callback list (this is how it finds the one
      rl-zoo3 creates), or evaluates ``eval_env`` itself every ``eval_freq`` calls;
    * ``"rollout"``: the mean return of the last ``rollout_window`` training
      episodes (the ``Monitor`` infos that also fill ``model.ep_info_buffer``),
      checked at the end of every rollout in which an episode finished.

    Every new best return saves the model to ``best_model.zip``. A *collapse* is
    ``patience`` consecutive returns below ``best − margin`` (``best − margin·|best|``
    when ``relative``). On a collapse the monitor copies the kept checkpoint to
    ``collapse_<k>_best_model.zip``, writes an event with the diagnostics of the
    updates before and during the drop to ``collapse_events.json``, logs
    ``collapse/*`` keys and, with ``rollback=True``, restores the kept policy and
    multiplies the learning rate by ``lr_scale`` for the rest of training.
    A collapse stays one event until the return comes back above the threshold.

    Diagnostics are read from the model's logger after each update: entropy
    (minus ``train/entropy_loss``), ``pseudo_entropy``, ``approx_kl``,
    ``clip_fraction``, ``value_loss``, ``explained_variance``, ``grad_norm`` and
    the learning rate, plus ``extra_keys``; a key the algorithm does not record
    is NaN. They are read in ``on_rollout_start``, right after the previous
    ``train()`` and before an ``EvalCallback`` can dump (and clear) the logger, so
    the row stamped ``timesteps=T`` is the update that trained on the rollout
    ending at ``T``; its effect shows in returns observed after ``T``.

    Works with any stable-baselines3 algorithm and from an rl-zoo3 yml::

        callback:
          - sb3_ppo_variants.callbacks.CollapseMonitor:
              margin: 0.5
              patience: 3

    :param margin: how far below the running best a return must fall to count as
        a drop: a fraction of ``|best|`` when ``relative``, else in return units. Must be positive.
    :param relative: read ``margin`` as a fraction of the magnitude of the best return.
        With returns that hover around zero prefer an absolute margin.
    :param patience: number of consecutive returns below the threshold that make a collapse (at least 1).
    :param min_best: the running best must reach this return before a drop counts,
        so a policy that never was good cannot "collapse". ``None`` disables the check.
    :param warmup_steps: timesteps during which returns are recorded but neither set the
        best nor count as drops, to skip the noisy start of training.
    :param return_source: ``"auto"`` follows an evaluation when one is available and the
        rollout return otherwise; ``"eval"`` requires an evaluation; ``"rollout"`` always
        follows the training episodes.
    :param eval_env: environment the monitor evaluates itself every ``eval_freq`` calls.
        Not needed with an ``EvalCallback`` or for the rollout return.
    :param eval_freq: evaluate ``eval_env`` every ``eval_freq`` calls of the callback
        (one call per ``env.step()`` of the vectorised training env).
    :param n_eval_episodes: episodes per evaluation of ``eval_env``.
    :param deterministic: evaluate ``eval_env`` with deterministic actions.
    :param rollout_window: number of most recent training episodes averaged into the rollout return.
    :param rollback: on a collapse, restore the kept policy (and its optimizer state)
        and scale the learning rate by ``lr_scale``.
    :param lr_scale: factor in ``(0, 1]`` applied to the learning-rate schedule at each rollback.
    :param diagnostics_window: number of updates before the last good return that the
        event keeps as the "before" context.
    :param extra_keys: further logger keys to record with the diagnostics, e.g.
        ``["train/actor_loss"]`` for SAC.
    :param save_path: folder for the checkpoints and records. By default
        ``collapse_monitor/`` inside the evaluation's folder (rl-zoo3's run folder),
        else inside the logger's folder when it writes files, else in the working directory.
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
        verbose: int = 0,
    ):
        super().__init__(verbose=verbose)
        if not _is_finite_number(margin) or margin <= 0:
            raise ValueError(
                f"margin must be a positive finite number (a fraction of |best| when relative=True, "
                f"return units otherwise), got {margin!r}"
            )
        if not isinstance(relative, bool):
            raise ValueError(f"relative must be True or False, got {relative!r}")
        if not _is_positive_int(patience):
            raise ValueError(f"patience must be an integer >= 1, got {patience!r}")
        if min_best is not None and not _is_finite_number(min_best):
            raise ValueError(f"min_best must be None or a finite number, got {min_best!r}")
        if not _is_non_negative_int(warmup_steps):
            raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
        if return_source not in RETURN_SOURCES:
            raise ValueError(f"return_source must be one of {RETURN_SOURCES}, got {return_source!r}")
        if eval_env is not None and not isinstance(eval_env, (gym.Env, VecEnv)):
            raise ValueError(f"eval_env must be None, a gymnasium.Env or a VecEnv, got {type(eval_env).__name__}")
        if eval_env is not None and return_source == "rollout":
            raise ValueError("eval_env is only used with return_source 'auto' or 'eval', got return_source='rollout'")
        if not _is_positive_int(eval_freq):
            raise ValueError(f"eval_freq must be an integer >= 1, got {eval_freq!r}")
        if not _is_positive_int(n_eval_episodes):
            raise ValueError(f"n_eval_episodes must be an integer >= 1, got {n_eval_episodes!r}")
        if not isinstance(deterministic, bool):
            raise ValueError(f"deterministic must be True or False, got {deterministic!r}")
        if not _is_positive_int(rollout_window):
            raise ValueError(f"rollout_window must be an integer >= 1, got {rollout_window!r}")
        if not isinstance(rollback, bool):
            raise ValueError(f"rollback must be True or False, got {rollback!r}")
        if not _is_finite_number(lr_scale) or not 0.0 < lr_scale <= 1.0:
            raise ValueError(f"lr_scale must be a number in (0, 1], got {lr_scale!r}")
        if not _is_non_negative_int(diagnostics_window):
            raise ValueError(f"diagnostics_window must be an integer >= 0, got {diagnostics_window!r}")
        if isinstance(extra_keys, str) or not all(isinstance(key, str) and key for key in extra_keys):
            raise ValueError(f"extra_keys must be a list of logger keys such as 'train/actor_loss', got {extra_keys!r}")
        if save_path is not None and not isinstance(save_path, (str, os.PathLike)):
            raise ValueError(f"save_path must be None or a path, got {save_path!r}")

        self.margin = float(margin)
        self.relative = relative
        self.patience = int(patience)
        self.min_best = None if min_best is None else float(min_best)
        self.warmup_steps = int(warmup_steps)
        self.return_source = return_source
        if eval_env is not None and not isinstance(eval_env, VecEnv):
            eval_env = DummyVecEnv([lambda: eval_env])  # type: ignore[list-item, return-value]
        self.eval_env = eval_env
        self.eval_freq = int(eval_freq)
        self.n_eval_episodes = int(n_eval_episodes)
        self.deterministic = deterministic
        self.rollout_window = int(rollout_window)
        self.rollback = rollback
        self.lr_scale = float(lr_scale)
        self.diagnostics_window = int(diagnostics_window)
        self.extra_keys = tuple(extra_keys)
        self.save_path = save_path

        # Resolved at the first training start (needs the model and the callback tree).
        self.save_dir: Path | None = None
        self.following: str | None = None
        self._eval_callback: EvalCallback | None = None
        self._evaluations_seen = 0
        self._tap: _DiagnosticsTap | None = None

        # Running best and the drop being tracked.
        self.best_return = -math.inf
        self.best_timesteps: int | None = None
        self.best_model_path: Path | None = None
        self._best_normalization: tuple[Any, Any] | None = None
        self._last_good_timesteps: int | None = None
        self._reference_is_rollback = False
        self._drop_start_timesteps: int | None = None
        self._below_returns: list[float] = []
        self._collapse_open = False
        self._rollback_pending = False
        self._receives_rollout_events = False

        self.events: list[dict[str, Any]] = []
        self.n_rollbacks = 0
        self.returns: list[dict[str, Any]] = []
        # Off-policy algorithms update every few steps: keep a bounded window in
        # memory, the full history is in the CSV file.
        self.diagnostics: deque[dict[str, float]] = deque(maxlen=10_000)
        self._last_recorded_updates: int | None = None
        self._episode_returns: deque[float] = deque(maxlen=self.rollout_window)
        self._new_episodes = 0
        self._training_end_done = False

    # ------------------------------------------------------------------ public

    @property
    def n_collapses(self) -> int:
        """Number of collapses detected so far."""
        return len(self.events)

    @property
    def threshold(self) -> float:
        """Return below which an observation counts as a drop (``-inf`` before any best)."""
        if not math.isfinite(self.best_return):
            return -math.inf
        margin = self.margin * abs(self.best_return) if self.relative else self.margin
        return self.best_return - margin

    def rollback_to_best(self) -> float:
        """Restore the kept best policy and scale the learning rate by ``lr_scale``.

        The policy parameters *and* the optimizer state of the checkpoint are
        restored: Adam's moments accumulated during the drop belong to the
        collapsed parameters. ``VecNormalize`` statistics of the training env go
        back to their values at the best. The scale is applied to
        ``model.learning_rate`` (and so to ``model.lr_schedule``) and to every
        optimizer at once, and persists through ``save``/``load``.

        :return: the learning rate now in effect.
        """
        if self.best_model_path is None or not self.best_model_path.is_file():
            raise RuntimeError("CollapseMonitor has no kept checkpoint to roll back to yet")
        _, params, pytorch_variables = load_from_zip_file(
            str(self.best_model_path), device=self.model.device, load_data=False
        )
        self.model.set_parameters(params, exact_match=True, device=self.model.device)
        # set_parameters leaves plain tensors alone (e.g. SAC's log_ent_coef).
        for name, value in (pytorch_variables or {}).items():
            if value is not None:
                recursive_setattr(self.model, f"{name}.data", value.data)
        vec_normalize = self.model.get_vec_normalize_env()
        if vec_normalize is not None and self._best_normalization is not None:
            vec_normalize.obs_rms, vec_normalize.ret_rms = copy.deepcopy(self._best_normalization)
        learning_rate = self._scale_learning_rate(self.lr_scale)

        self.n_rollbacks += 1
        self._rollback_pending = False
        self._reset_drop()
        self._collapse_open = False
        # The restored policy is the new reference: a later drop is measured from here.
        self._last_good_timesteps = self.model.num_timesteps
        self._reference_is_rollback = True
        # Episodes of the collapsed policy must not count against the restored one.
        self._episode_returns.clear()
        self._new_episodes = 0
        if self.events and "rollback_timesteps" not in self.events[-1]:
            self.events[-1].update(rollback_timesteps=self.model.num_timesteps, learning_rate_after=learning_rate)
            self._write_events()
        self.logger.record("collapse/n_rollbacks", self.n_rollbacks)
        self.logger.record("collapse/learning_rate", learning_rate)
        if self.verbose >= 1:
            print(
                f"CollapseMonitor: rolled back to the best policy of step {self.best_timesteps} "
                f"(return {self.best_return:.2f}), learning rate now {learning_rate:.3g}"
            )
        return learning_rate

    # ------------------------------------------------------------- lifecycle

    def _on_training_start(self) -> None:
        self._training_end_done = False
        # Resolved at every learn(): a later call may bring its own EvalCallback.
        self._resolve_return_source()
        if self.save_dir is None:
            self._resolve_save_dir()
            self._start_files()
            # A second learn() must not re-record the last update of the first.
            self._last_recorded_updates = self.model._n_updates
        if self.following == "parent_eval":
            self._install_tap()

    def _on_rollout_start(self) -> None:
        self._receives_rollout_events = True
        self._record_diagnostics(self.logger.name_to_value, timesteps=self.model.num_timesteps)
        # Rolling back here (not where the collapse was seen) means the next
        # rollout is collected by the restored policy and the on-policy update
        # never mixes data of the collapsed policy with the restored parameters.
        if self._rollback_pending:
            self.rollback_to_best()

    def _on_step(self) -> bool:
        if self.following == "parent_eval":
            parent = self.parent
            assert isinstance(parent, EvalCallback)
            self._observe_return(parent.num_timesteps, parent.last_mean_reward)
        elif self.following == "own_eval":
            if self.n_calls % self.eval_freq == 0:
                self._observe_return(self.model.num_timesteps, self._evaluate())
        elif self.following == "sibling_eval":
            self._poll_eval_callback()
        else:
            for info in self.locals.get("infos", ()):
                episode = info.get("episode") if isinstance(info, dict) else None
                if episode is not None:
                    self._episode_returns.append(float(episode["r"]))
                    self._new_episodes += 1
        return True

    def _on_rollout_end(self) -> None:
        if self.following == "sibling_eval":
            # Catches an evaluation made on the last step of the rollout, before train().
            self._poll_eval_callback()
        elif self.following == "rollout" and self._new_episodes > 0:
            self._new_episodes = 0
            self._observe_return(self.model.num_timesteps, float(np.mean(self._episode_returns)))

    def _on_training_end(self) -> None:
        # rl-zoo3 calls on_training_end of its first callback a second time.
        if self._training_end_done:
            return
        self._training_end_done = True
        if self._receives_rollout_events:
            # learn() ends with train(): no rollout start follows the last update.
            self._record_diagnostics(self.logger.name_to_value, timesteps=self.model.num_timesteps)
        if self.following == "sibling_eval":
            self._poll_eval_callback()
        self._write_events()

    # ---------------------------------------------------------- return source

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
        eval_callback = self._eval_callback
        assert eval_callback is not None
        # EvalCallback evaluates when its n_calls is a multiple of eval_freq.
        evaluations = eval_callback.n_calls // eval_callback.eval_freq
        if evaluations > self._evaluations_seen:
            self._evaluations_seen = evaluations
            self._observe_return(eval_callback.num_timesteps, eval_callback.last_mean_reward)

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

    # -------------------------------------------------------------- detection

    def _observe_return(self, timesteps: int, value: float) -> None:
        value = float(value)
        if not math.isfinite(value):
            return
        event_index: int | None = None
        if timesteps >= self.warmup_steps:
            if value > self.best_return:
                self._keep_best(timesteps, value)
            if value < self.threshold:
                if not self._below_returns:
                    self._drop_start_timesteps = timesteps
                self._below_returns.append(value)
                good_enough = self.min_best is None or self.best_return >= self.min_best
                if len(self._below_returns) >= self.patience and not self._collapse_open and good_enough:
                    event_index = self._declare_collapse(timesteps, value)
            else:
                self._last_good_timesteps = timesteps
                self._reference_is_rollback = False
                self._reset_drop()
                self._collapse_open = False

        row = {
            "timesteps": int(timesteps),
            "return": value,
            "best_return": self.best_return,
            "threshold": self.threshold,
            "below_count": len(self._below_returns),
            "source": self.following,
            "event": event_index,
        }
        self.returns.append(row)
        self._append_csv(RETURNS_FILE, RETURNS_COLUMNS, row)
        self.logger.record("collapse/return", value)
        self.logger.record("collapse/best_return", self.best_return)
        self.logger.record("collapse/threshold", self.threshold)
        self.logger.record("collapse/n_collapses", self.n_collapses)

    def _reset_drop(self) -> None:
        self._below_returns = []
        self._drop_start_timesteps = None

    def _keep_best(self, timesteps: int, value: float) -> None:
        assert self.save_dir is not None
        self.best_return = value
        self.best_timesteps = int(timesteps)
        self.best_model_path = self.save_dir / BEST_MODEL_FILE
        self.model.save(self.best_model_path)
        vec_normalize = self.model.get_vec_normalize_env()
        if vec_normalize is not None:
            self._best_normalization = copy.deepcopy((vec_normalize.obs_rms, vec_normalize.ret_rms))
            vec_normalize.save(str(self.save_dir / BEST_VECNORMALIZE_FILE))
        if self.verbose >= 2:
            print(f"CollapseMonitor: new best return {value:.2f} at step {timesteps}")

    def _declare_collapse(self, timesteps: int, value: float) -> int:
        assert self.save_dir is not None and self.best_model_path is not None
        self._collapse_open = True
        index = self.n_collapses + 1
        kept = self.save_dir / f"collapse_{index}_{BEST_MODEL_FILE}"
        shutil.copyfile(self.best_model_path, kept)

        # Updates at T < last good return shaped the good policy; updates with
        # last good <= T < detection are the ones that can have caused the drop.
        # After a rollback at R the update stamped R was made before it and discarded.
        last_good = self._last_good_timesteps if self._last_good_timesteps is not None else self.best_timesteps
        assert last_good is not None
        first_cause = last_good + 1 if self._reference_is_rollback else last_good
        before = [row for row in self.diagnostics if row["timesteps"] < first_cause]
        before = before[len(before) - self.diagnostics_window :] if self.diagnostics_window else []
        during = [row for row in self.diagnostics if first_cause <= row["timesteps"] < timesteps]
        event = {
            "index": index,
            "source": self.following,
            "detected_timesteps": int(timesteps),
            "drop_start_timesteps": self._drop_start_timesteps,
            "last_good_timesteps": int(last_good),
            "best_timesteps": self.best_timesteps,
            "best_return": self.best_return,
            "threshold": self.threshold,
            "return_at_detection": value,
            "returns_below": list(self._below_returns),
            "checkpoint": kept.name,
            "diagnostics_before": {name: _summarise(before, name) for name in self._diagnostic_columns()},
            "diagnostics_during": {name: _summarise(during, name) for name in self._diagnostic_columns()},
            "diagnostics_window": [dict(row) for row in before + during],
        }
        self.events.append(event)
        self._write_events()
        if self.verbose >= 1:
            print(
                f"CollapseMonitor: collapse at step {timesteps}: return {value:.2f} after a best of "
                f"{self.best_return:.2f} at step {self.best_timesteps}; best policy kept in {kept}"
            )
        if self.rollback:
            if self._receives_rollout_events:
                self._rollback_pending = True
            else:
                # A callback_after_eval never sees a rollout start: roll back now.
                self.rollback_to_best()
        return index

    # ------------------------------------------------------------ diagnostics

    def _diagnostic_columns(self) -> tuple[str, ...]:
        return (*DIAGNOSTIC_NAMES, *self.extra_keys)

    def _record_diagnostics(self, values: Mapping[str, Any], timesteps: int) -> None:
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
        self._append_csv(DIAGNOSTICS_FILE, ("timesteps", "n_updates", *self._diagnostic_columns()), row)

    def _install_tap(self) -> None:
        if self._tap is None:
            self._tap = _DiagnosticsTap(self)
        if not any(output is self._tap for output in self.logger.output_formats):
            self.logger.output_formats.append(self._tap)

    # ---------------------------------------------------------- learning rate

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

    # ------------------------------------------------------------------ files

    def _resolve_save_dir(self) -> None:
        if self.save_path is not None:
            folder = Path(self.save_path)
        else:
            run_dir: str | None = None
            if self._eval_callback is not None:
                if self._eval_callback.best_model_save_path is not None:
                    run_dir = self._eval_callback.best_model_save_path
                elif self._eval_callback.log_path is not None:
                    run_dir = os.path.dirname(self._eval_callback.log_path)
            if run_dir is None and self._logger_writes_files():
                run_dir = self.logger.get_dir()
            folder = Path(run_dir or ".") / "collapse_monitor"
        folder.mkdir(parents=True, exist_ok=True)
        self.save_dir = folder

    def _logger_writes_files(self) -> bool:
        # SB3 gives even a stdout-only logger a temporary folder; only a logger
        # that writes files there marks a run folder.
        for output in self.logger.output_formats:
            if isinstance(output, _DiagnosticsTap):
                continue
            if isinstance(output, HumanOutputFormat) and output.file in (sys.stdout, sys.stderr):
                continue
            return True
        return False

    def _start_files(self) -> None:
        assert self.save_dir is not None
        diagnostics_columns = ("timesteps", "n_updates", *self._diagnostic_columns())
        for name, columns in ((RETURNS_FILE, RETURNS_COLUMNS), (DIAGNOSTICS_FILE, diagnostics_columns)):
            with open(self.save_dir / name, "w", newline="") as file:
                csv.writer(file).writerow(columns)
        self._write_events()

    def _append_csv(self, name: str, columns: Sequence[str], row: Mapping[str, Any]) -> None:
        if self.save_dir is None:
            return
        with open(self.save_dir / name, "a", newline="") as file:
            csv.writer(file).writerow(["" if row[column] is None else row[column] for column in columns])

    def _write_events(self) -> None:
        if self.save_dir is None:
            return
        record = {
            "margin": self.margin,
            "relative": self.relative,
            "patience": self.patience,
            "min_best": self.min_best,
            "warmup_steps": self.warmup_steps,
            "following": self.following,
            "rollback": self.rollback,
            "lr_scale": self.lr_scale,
            "best_return": self.best_return,
            "best_timesteps": self.best_timesteps,
            "n_rollbacks": self.n_rollbacks,
            "events": self.events,
        }
        # Write then rename, so a reader never sees a half-written file.
        path = self.save_dir / EVENTS_FILE
        tmp = path.with_suffix(".json.tmp")
        with open(tmp, "w") as file:
            json.dump(_json_safe(record), file, indent=2, allow_nan=False)
        os.replace(tmp, path)
