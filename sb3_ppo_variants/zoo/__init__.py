"""rl-zoo3 integration: ``python -m rl_zoo3.train --algo ppo_logit ...`` with the zoo's own commands.

Ids: one per entry of :data:`sb3_ppo_variants.registry.VARIANTS` (``ppo_variant``: VariantPPO, every option
tunable; ``ppo_logit``: LogitPPO; ...). The installed ``sb3_ppo_variants_zoo.pth`` registers them whenever rl_zoo3 is
imported (see :mod:`.import_hook`; ``SB3_PPO_VARIANTS_NO_ZOO_HOOK=1`` turns that off). Scripts can call
:func:`register` instead. ``docs/zoo.md`` describes the whole mechanism.
"""

import importlib

from sb3_ppo_variants.zoo.ids import ALGORITHM_CLASS_NAMES, algorithm_class, hyperparams_dir, hyperparams_file
from sb3_ppo_variants.zoo.registration import REGISTRARS, ZooRegistrationError, register_module

__all__ = [
    "ALGORITHM_CLASS_NAMES",
    "ZooRegistrationError",
    "algorithm_class",
    "hyperparams_dir",
    "hyperparams_file",
    "register",
]


def register() -> None:
    """Add the variants to rl-zoo3's algorithms, samplers and experiment manager.

    Safe to call more than once and together with the automatic hook. Raises
    :class:`ZooRegistrationError` if this rl_zoo3 lacks what the registration extends (the automatic hook
    turns the same error into a warning).
    """
    for module_name in REGISTRARS:
        register_module(importlib.import_module(module_name))
