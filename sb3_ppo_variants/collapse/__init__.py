"""Catch a policy collapse while training, and explain it.

* :mod:`~sb3_ppo_variants.collapse.detector`: the drop rule, pure;
* :mod:`~sb3_ppo_variants.collapse.events`: the on-disk format;
* :mod:`~sb3_ppo_variants.collapse.callbacks`: SB3 callbacks (detection, rollback, health);
* :mod:`~sb3_ppo_variants.collapse.health`: feature rank, dead units, shared-gradient norms;
* :mod:`~sb3_ppo_variants.collapse.diagnosis`: good vs bad checkpoint on a probe batch;
* :mod:`~sb3_ppo_variants.collapse.report`: the one-page report.
"""

from sb3_ppo_variants.collapse.detector import DropDetector, DropRule
from sb3_ppo_variants.collapse.events import CollapseEvent, MonitorRecord

__all__ = ["CollapseEvent", "DropDetector", "DropRule", "MonitorRecord"]
