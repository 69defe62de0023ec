"""Experimental PPO variants against policy collapse, as stable-baselines3 algorithms.

``VariantPPO`` holds every option; the presets only change its defaults.
"""

from sb3_ppo_variants.callbacks import CollapseMonitor
from sb3_ppo_variants.variant_ppo import (
    SPOPPO,
    KLPenaltyPPO,
    LogitPPO,
    PeakedPPO,
    RescaledPPO,
    VariantPPO,
)

__version__ = "0.1.0"

__all__ = [
    "SPOPPO",
    "CollapseMonitor",
    "KLPenaltyPPO",
    "LogitPPO",
    "PeakedPPO",
    "RescaledPPO",
    "VariantPPO",
    "__version__",
]
