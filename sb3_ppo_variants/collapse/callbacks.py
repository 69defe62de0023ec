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

Each lives in its own module (``detection``, ``rollback``, ``health_recorder``, ``monitor``);
this one gathers them under the import path the documentation uses.

A collapse is PPO's catastrophic drop from a good policy to one worse than random
(Schulman et al. 2017, arXiv:1707.06347; the seeds' "Experimental modifications").
"""

from __future__ import annotations

from sb3_ppo_variants.collapse.detection import CollapseCallback, CollapseOnEval, CollapseOnRollout
from sb3_ppo_variants.collapse.health_recorder import HEALTH_COLUMNS, HealthRecorder
from sb3_ppo_variants.collapse.monitor import RETURN_SOURCES, CollapseMonitor
from sb3_ppo_variants.collapse.rollback import RollbackToBest, ScaledSchedule
from sb3_ppo_variants.collapse.training_diagnostics import DIAGNOSTIC_KEYS, DIAGNOSTIC_NAMES

__all__ = [
    "DIAGNOSTIC_KEYS",
    "DIAGNOSTIC_NAMES",
    "HEALTH_COLUMNS",
    "RETURN_SOURCES",
    "CollapseCallback",
    "CollapseMonitor",
    "CollapseOnEval",
    "CollapseOnRollout",
    "HealthRecorder",
    "RollbackToBest",
    "ScaledSchedule",
]
