"""Experimental PPO variants against policy collapse, as stable-baselines3 algorithms.

``VariantPPO`` holds every option; the presets only change its defaults. ``MaskableVariantPPO`` and
``RecurrentVariantPPO`` bring the same options to sb3-contrib's MaskablePPO and RecurrentPPO.
``registry.ZOO_VARIANTS`` names them all.
"""

from sb3_ppo_variants.callbacks import CollapseMonitor
from sb3_ppo_variants.contrib import MaskableVariantPPO, RecurrentVariantPPO
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

# the classes of registry.ZOO_VARIANTS (tests/test_registry.py holds the two lists equal)
__all__ = [
    "SPOPPO",
    "TRPPO",
    "CollapseMonitor",
    "DualClipPPO",
    "KLPenaltyPPO",
    "LogitPPO",
    "MaskableVariantPPO",
    "PeakedPPO",
    "RecurrentVariantPPO",
    "RescaledPPO",
    "TrulyPPO",
    "VariantPPO",
    "__version__",
]
