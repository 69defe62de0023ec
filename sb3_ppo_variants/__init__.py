"""Experimental PPO variants against policy collapse, as stable-baselines3 algorithms.

``VariantPPO`` holds every option; the presets only change its defaults. ``registry.VARIANTS`` names them.
"""

from sb3_ppo_variants.callbacks import CollapseMonitor
from sb3_ppo_variants.variant_ppo import (
    SPOPPO,
    TRPPO,
    DualClipPPO,
    KLPenaltyPPO,
    LogitPPO,
    PeakedPPO,
    RescaledPPO,
    TrulyPPO,
    VariantPPO,
)

__version__ = "0.1.0"

# the classes of registry.VARIANTS (tests/test_registry.py holds the two lists equal)
__all__ = [
    "SPOPPO",
    "TRPPO",
    "CollapseMonitor",
    "DualClipPPO",
    "KLPenaltyPPO",
    "LogitPPO",
    "PeakedPPO",
    "RescaledPPO",
    "TrulyPPO",
    "VariantPPO",
    "__version__",
]
