"""The rl-zoo3 algorithm ids of this package, their classes and their shipped hyperparameter files."""

from pathlib import Path

from stable_baselines3.common.base_class import BaseAlgorithm

# id -> class name in sb3_ppo_variants
ALGORITHM_CLASS_NAMES: dict[str, str] = {
    "ppo_variant": "VariantPPO",
    "ppo_logit": "LogitPPO",
    "ppo_peaked": "PeakedPPO",
    "ppo_rescaled": "RescaledPPO",
    "ppo_spo": "SPOPPO",
    "ppo_kl": "KLPenaltyPPO",
}

_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def hyperparams_dir() -> Path:
    """``sb3_ppo_variants/hyperparams`` in an installed wheel, the repository's ``hyperparams/`` in a checkout."""
    installed = _PACKAGE_DIR / "hyperparams"
    if installed.is_dir():
        return installed
    return _PACKAGE_DIR.parent / "hyperparams"


def hyperparams_file(algo_id: str) -> Path:
    """The shipped ``<algo_id>.yml``."""
    if algo_id not in ALGORITHM_CLASS_NAMES:
        raise KeyError(f"unknown algorithm id {algo_id!r}; known: {', '.join(ALGORITHM_CLASS_NAMES)}")
    return hyperparams_dir() / f"{algo_id}.yml"


def algorithm_class(algo_id: str) -> type[BaseAlgorithm]:
    import sb3_ppo_variants

    return getattr(sb3_ppo_variants, ALGORITHM_CLASS_NAMES[algo_id])
