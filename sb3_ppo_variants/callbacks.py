"""Backward-compatible home of :class:`CollapseMonitor`, now in :mod:`sb3_ppo_variants.collapse.callbacks`.

rl-zoo3 ymls name ``sb3_ppo_variants.callbacks.CollapseMonitor`` and models saved after a
rollback pickle ``ScaledSchedule``: both keep loading from here.
"""

from sb3_ppo_variants.collapse.callbacks import (
    DIAGNOSTIC_KEYS,
    DIAGNOSTIC_NAMES,
    CollapseMonitor,
    CollapseOnEval,
    CollapseOnRollout,
    HealthRecorder,
    RollbackToBest,
    ScaledSchedule,
)
from sb3_ppo_variants.collapse.events import DIAGNOSTICS_FILE, EVENTS_FILE, RETURNS_FILE

__all__ = [
    "DIAGNOSTICS_FILE",
    "DIAGNOSTIC_KEYS",
    "DIAGNOSTIC_NAMES",
    "EVENTS_FILE",
    "RETURNS_FILE",
    "CollapseMonitor",
    "CollapseOnEval",
    "CollapseOnRollout",
    "HealthRecorder",
    "RollbackToBest",
    "ScaledSchedule",
]
