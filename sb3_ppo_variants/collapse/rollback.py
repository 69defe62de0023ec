"""Undo a collapse: restore the kept best policy, its optimizer and ``VecNormalize``, and slow down.

:class:`RollbackToBest` is a collapse callback's ``callback_on_collapse``, as SB3's
``StopTrainingOnRewardThreshold`` is an ``EvalCallback``'s ``callback_on_new_best``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.save_util import load_from_zip_file, recursive_getattr, recursive_setattr
from stable_baselines3.common.type_aliases import Schedule

from sb3_ppo_variants.collapse.detector import is_finite_number

__all__ = ["KeepsBest", "RollbackToBest", "ScaledSchedule"]


@runtime_checkable
class KeepsBest(Protocol):
    """What a rollback reads from its parent: the kept best model and its ``VecNormalize`` statistics."""

    best_model_path: Path | None
    best_normalization: tuple[Any, Any] | None


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
        if not isinstance(parent, KeepsBest):
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
