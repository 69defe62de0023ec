"""The callbacks that follow a return, detect a collapse and keep what explains it.

:class:`CollapseCallback` does what every one of them does with a followed return;
:class:`CollapseOnEval` follows an ``EvalCallback`` (as its ``callback_after_eval``) and
:class:`CollapseOnRollout` the training episodes. The work is done by small parts: the pure
:class:`~sb3_ppo_variants.collapse.detector.DropDetector`, the
:class:`~sb3_ppo_variants.collapse.checkpoints.CheckpointRing`, the
:class:`~sb3_ppo_variants.collapse.probe.ProbeSource`,
:func:`~sb3_ppo_variants.collapse.explain.explain_collapse` and
:class:`~sb3_ppo_variants.collapse.training_diagnostics.TrainingDiagnostics`.
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback, EventCallback
from stable_baselines3.common.logger import HumanOutputFormat, Logger
from stable_baselines3.common.vec_env import VecEnv

from sb3_ppo_variants.collapse.checkpoints import CheckpointRing
from sb3_ppo_variants.collapse.detector import DropDetector, DropRule, is_non_negative_int, is_positive_int
from sb3_ppo_variants.collapse.events import (
    BEST_MODEL_FILE,
    BEST_VECNORMALIZE_FILE,
    DIAGNOSTICS_FILE,
    MONITOR_FOLDER,
    RETURNS_COLUMNS,
    RETURNS_FILE,
    CollapseEvent,
    MonitorRecord,
    append_csv_row,
    collapse_folder,
    start_csv,
)
from sb3_ppo_variants.collapse.probe import ProbeSource
from sb3_ppo_variants.collapse.rollback import RollbackToBest
from sb3_ppo_variants.collapse.training_diagnostics import DiagnosticsTap, TrainingDiagnostics

__all__ = ["CollapseCallback", "CollapseOnEval", "CollapseOnRollout", "default_save_dir", "describe_collapse"]


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

    Diagnostics are read from the logger after each update
    (:class:`~sb3_ppo_variants.collapse.training_diagnostics.TrainingDiagnostics`): entropy,
    ``pseudo_entropy``, ``approx_kl``, ``clip_fraction``, ``value_loss``,
    ``explained_variance``, ``grad_norm``, the learning rate, plus ``extra_keys``; a key the
    algorithm does not record is NaN.

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
        self.probe = ProbeSource(self.probe_size)
        self.training_diagnostics = TrainingDiagnostics(self.extra_keys)
        self.record = MonitorRecord()
        self.returns: list[dict[str, Any]] = []
        self.save_dir: Path | None = None
        self.ring: CheckpointRing | None = None
        self.best_model_path: Path | None = None
        self.best_normalization: tuple[Any, Any] | None = None
        self._receives_rollout_events = False
        self._collapse_pending = False
        self._tap: DiagnosticsTap | None = None
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

    @property
    def diagnostics(self) -> deque[dict[str, float]]:
        """The training diagnostics of the last updates, one row each."""
        return self.training_diagnostics.rows

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
            self.save_dir = Path(self.save_path) if self.save_path is not None else self._default_save_dir()
            self.save_dir.mkdir(parents=True, exist_ok=True)
            # K before the drop, the last good one, and the `patience` drops.
            size = self.keep_checkpoints + 1 + self.rule.patience
            if self.keep_checkpoints or self.diagnose:
                self.ring = CheckpointRing(self.save_dir, size=size, keep_after=self.keep_checkpoints)
            start_csv(self.save_dir / RETURNS_FILE, RETURNS_COLUMNS)
            self.training_diagnostics.start_csv(self.save_dir / DIAGNOSTICS_FILE)
            self._write_record()
            # A second learn() must not re-record the last update of the first.
            self.training_diagnostics.last_recorded_updates = self.model._n_updates

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
            self._tap = DiagnosticsTap(self.record_diagnostics)
        if not any(output is self._tap for output in self.logger.output_formats):
            self.logger.output_formats.append(self._tap)

    def record_diagnostics(self, values: Mapping[str, Any], timesteps: int) -> None:
        """Record the training diagnostics the logger holds, once per update."""
        self.training_diagnostics.record(values, timesteps, n_updates=int(self.model._n_updates))

    # --------------------------------------------------------------------------- the return

    def observe_return(self, timesteps: int, value: float) -> None:
        """Feed one followed return: records it, keeps checkpoints, and acts on a collapse."""
        observation = self.detector.observe(timesteps, value)
        if observation is None:
            return
        if observation.new_best:
            self._keep_best(observation.timesteps, observation.value)
        if self.ring is not None and self.ring.save(self.model, observation.timesteps, observation.value):
            self._write_record()
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
        if self._probe_env() is None:
            self.probe.remember_rollout(self.model)
        if self.verbose >= 2:
            print(f"{type(self).__name__}: new best return {value:.2f} at step {timesteps}")

    # --------------------------------------------------------------------------- a collapse

    def _declare_collapse(self, timesteps: int, value: float) -> int:
        assert self.save_dir is not None and self.best_model_path is not None
        index = self.n_collapses + 1
        folder = self.save_dir / collapse_folder(index)
        folder.mkdir(exist_ok=True)
        kept = self.save_dir / f"collapse_{index}_{BEST_MODEL_FILE}"
        shutil.copyfile(self.best_model_path, kept)

        event = describe_collapse(
            index,
            self.source,
            self.detector,
            timesteps,
            value,
            kept.name,
            self.training_diagnostics,
            self.diagnostics_window,
        )
        self.record.events.append(event)
        if self.ring is not None:
            self.ring.keep(event)
        # Loading a checkpoint initialises a fresh network and the probe samples actions, both
        # from torch's global generator: a forked one leaves training as it would be unwatched.
        with th.random.fork_rng():
            if self.probe_size and (observations := self._collect_probe()) is not None:
                # imported here: its tables need pandas, which the callbacks do not load until a collapse
                from sb3_ppo_variants.collapse.explain import explain_collapse

                explain_collapse(
                    event, self.save_dir, observations, self.ring, self.best_model_path, self.diagnose, self.verbose
                )
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

    def _collect_probe(self) -> np.ndarray | None:
        return self.probe.collect(self.best_model_path, type(self.model), self._probe_env())

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

    # --------------------------------------------------------------------------- files

    def _run_dir(self) -> str | None:
        return None

    def _default_save_dir(self) -> Path:
        return default_save_dir(self.logger, self._run_dir())

    def _write_record(self) -> None:
        if self.save_dir is None:
            return
        self.record.settings = self.settings()
        self.record.best_return = self.best_return
        self.record.best_timesteps = self.best_timesteps
        self.record.write(self.save_dir)


def describe_collapse(
    index: int,
    source: str,
    detector: DropDetector,
    timesteps: int,
    value: float,
    checkpoint: str,
    diagnostics: TrainingDiagnostics,
    window: int,
) -> CollapseEvent:
    """The event of collapse ``index``, detected at ``timesteps``: the detector's account of the
    drop, and the last ``window`` updates before it and those during it.
    """
    # Updates at T < last good return shaped the good policy; updates with
    # last good <= T < detection are the ones that can have caused the drop.
    before, during = diagnostics.around(detector.first_cause_timesteps(), timesteps, window)
    last_good = detector.last_good_timesteps
    return CollapseEvent(
        index=index,
        source=source,
        detected_timesteps=int(timesteps),
        drop_start_timesteps=detector.drop_start_timesteps,
        last_good_timesteps=int(last_good if last_good is not None else detector.best_timesteps or 0),
        best_timesteps=detector.best_timesteps,
        best_return=detector.best_return,
        threshold=detector.threshold,
        return_at_detection=float(value),
        returns_below=list(detector.below_returns),
        checkpoint=checkpoint,
        diagnostics_before=diagnostics.summarise(before),
        diagnostics_during=diagnostics.summarise(during),
        diagnostics_window=[dict(row) for row in before + during],
    )


def default_save_dir(logger: Logger, run_dir: str | None) -> Path:
    """``collapse_monitor/`` in ``run_dir``, else in the logger's folder when it writes files, else here."""
    if run_dir is None and _writes_files(logger):
        run_dir = logger.get_dir()
    return Path(run_dir or ".") / MONITOR_FOLDER


def _writes_files(logger: Logger) -> bool:
    # SB3 gives even a stdout-only logger a temporary folder; only a logger that
    # writes files there marks a run folder.
    for output in logger.output_formats:
        if isinstance(output, DiagnosticsTap):
            continue
        if isinstance(output, HumanOutputFormat) and output.file in (sys.stdout, sys.stderr):
            continue
        return True
    return False


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
