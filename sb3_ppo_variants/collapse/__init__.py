"""Catch a policy collapse while training, and explain it.

* :mod:`~sb3_ppo_variants.collapse.detector`: the drop rule, pure;
* :mod:`~sb3_ppo_variants.collapse.events`: the on-disk format;
* :mod:`~sb3_ppo_variants.collapse.callbacks`: every SB3 callback below, under one import path;
* :mod:`~sb3_ppo_variants.collapse.detection`: ``CollapseOnEval``, ``CollapseOnRollout``;
* :mod:`~sb3_ppo_variants.collapse.checkpoints`: the ring of the last checkpoints, and those around each drop;
* :mod:`~sb3_ppo_variants.collapse.probe`: the probe batch, played by the best policy;
* :mod:`~sb3_ppo_variants.collapse.explain`: the probe batch and diagnosis written beside a collapse;
* :mod:`~sb3_ppo_variants.collapse.training_diagnostics`: ``train/*`` values of every update;
* :mod:`~sb3_ppo_variants.collapse.rollback`: ``RollbackToBest``;
* :mod:`~sb3_ppo_variants.collapse.health_recorder`: ``HealthRecorder``, logging ``health/*``;
* :mod:`~sb3_ppo_variants.collapse.monitor`: ``CollapseMonitor``, all of it for an rl-zoo3 yml;
* :mod:`~sb3_ppo_variants.collapse.health`: feature rank, dead units, shared-gradient norms;
* :mod:`~sb3_ppo_variants.collapse.diagnosis`: good vs bad checkpoint on a probe batch;
* :mod:`~sb3_ppo_variants.collapse.report`: the one-page report.
"""

from sb3_ppo_variants.collapse.detector import DropDetector, DropRule
from sb3_ppo_variants.collapse.events import CollapseEvent, MonitorRecord

__all__ = ["CollapseEvent", "DropDetector", "DropRule", "MonitorRecord"]
