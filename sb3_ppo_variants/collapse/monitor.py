"""``CollapseMonitor``: every collapse part behind one set of keywords, for an rl-zoo3 yml ``callback:``."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, EvalCallback, EventCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, sync_envs_normalization

from sb3_ppo_variants.collapse.detection import CollapseOnRollout, _eval_run_dir
from sb3_ppo_variants.collapse.detector import is_positive_int
from sb3_ppo_variants.collapse.health_recorder import HealthRecorder
from sb3_ppo_variants.collapse.rollback import RollbackToBest

__all__ = ["RETURN_SOURCES", "CollapseMonitor", "find_eval_callback"]

RETURN_SOURCES = ("auto", "eval", "rollout")


def find_eval_callback(tree: BaseCallback | None) -> EvalCallback | None:
    """The first ``EvalCallback`` that evaluates (``eval_freq > 0``) in a callback tree."""

    def walk(callback: Any) -> Iterator[EvalCallback]:
        if isinstance(callback, EvalCallback):
            yield callback
        if isinstance(callback, CallbackList):
            for child in callback.callbacks:
                yield from walk(child)
        elif isinstance(callback, EventCallback) and callback.callback is not None:
            yield from walk(callback.callback)

    return next((candidate for candidate in walk(tree) if candidate.eval_freq > 0), None)


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
        # learn() hands its locals, which hold the whole callback tree, to on_training_start.
        elif self.return_source != "rollout" and (sibling := find_eval_callback(self.locals.get("callback"))):
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
