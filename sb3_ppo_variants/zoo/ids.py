"""The rl-zoo3 algorithm ids of this package, their classes and their shipped hyperparameter files."""

from pathlib import Path

from stable_baselines3.common.base_class import BaseAlgorithm

from sb3_ppo_variants.registry import BY_ZOO_ID

# id -> class name in sb3_ppo_variants, from the registry
ALGORITHM_CLASS_NAMES: dict[str, str] = {
    zoo_id: variant.algorithm_class.__name__ for zoo_id, variant in BY_ZOO_ID.items()
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
    return BY_ZOO_ID[algo_id].algorithm_class
