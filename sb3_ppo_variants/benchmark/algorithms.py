"""The algorithms compared by the benchmarks: SB3's ``PPO``, every variant of the registry and its configurations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sb3_contrib import MaskablePPO, RecurrentPPO
from stable_baselines3 import PPO
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

from sb3_ppo_variants.contrib import MaskableVariantPPO, RecurrentVariantPPO
from sb3_ppo_variants.registry import CONFIGURATIONS, VARIANTS


@dataclass(frozen=True)
class Algorithm:
    """A class and the options that make it one of the compared algorithms.

    :param name: short name used in tables, plots and file names
    :param algorithm_class: the SB3 algorithm class
    :param options: keyword arguments added to the shared hyperparameters
    :param zoo_id: the rl-zoo3 algorithm id of the preset, if any
    """

    name: str
    algorithm_class: type[OnPolicyAlgorithm]
    options: dict[str, Any] = field(default_factory=dict)
    zoo_id: str | None = None

    def build(self, policy: str, env: Any, **hyperparameters: Any) -> OnPolicyAlgorithm:
        options = dict(self.options)
        if "policy_kwargs" in options:  # merged with the task's, e.g. the Adam β recipe on a shared trunk
            shared = hyperparameters.pop("policy_kwargs", None) or {}
            options["policy_kwargs"] = {**shared, **options["policy_kwargs"]}
        return self.algorithm_class(policy, env, **hyperparameters, **options)


ALGORITHMS: dict[str, Algorithm] = {
    "ppo": Algorithm("ppo", PPO, zoo_id="ppo"),
    **{variant.name: Algorithm(variant.name, variant.algorithm_class, zoo_id=variant.zoo_id) for variant in VARIANTS},
    **{
        entry.name: Algorithm(entry.name, entry.algorithm_class or PPO, dict(entry.options)) for entry in CONFIGURATIONS
    },
}
LABELS: dict[str, str] = {
    "ppo": "PPO (SB3)",
    **{variant.name: variant.label for variant in VARIANTS},
    **{entry.name: entry.label for entry in CONFIGURATIONS},
}

# sb3-contrib's classes and the variant classes over them: the cost benchmark's masked and recurrent settings
CONTRIB_ALGORITHMS: dict[str, Algorithm] = {
    "maskable_ppo": Algorithm("maskable_ppo", MaskablePPO),
    "maskable_variant": Algorithm("maskable_variant", MaskableVariantPPO),
    "maskable_logit": Algorithm("maskable_logit", MaskableVariantPPO, {"delta_target_policy": "logit"}),
    "recurrent_ppo": Algorithm("recurrent_ppo", RecurrentPPO),
    "recurrent_variant": Algorithm("recurrent_variant", RecurrentVariantPPO),
    "recurrent_logit": Algorithm("recurrent_logit", RecurrentVariantPPO, {"delta_target_policy": "logit"}),
}
CONTRIB_LABELS: dict[str, str] = {
    "maskable_ppo": "MaskablePPO (sb3-contrib)",
    "maskable_variant": "MaskableVariantPPO()",
    "maskable_logit": "MaskableVariantPPO logit",
    "recurrent_ppo": "RecurrentPPO (sb3-contrib)",
    "recurrent_variant": "RecurrentVariantPPO()",
    "recurrent_logit": "RecurrentVariantPPO logit",
}

# ``variant`` with every option off is SB3's PPO (the parity test pins it), so the learning
# benchmarks leave it out; the cost benchmark keeps it to measure the loop's own overhead.
COST_ALGORITHMS = tuple(name for name in ALGORITHMS if name != "ppo")
LEARNING_ALGORITHMS = ("ppo", "logit", "peaked", "rescaled", "spo", "kl", "per_state")


def parse_algorithms(names: list[str] | None, default: tuple[str, ...]) -> list[str]:
    """Validate algorithm names given on the command line (``None`` gives ``default``)."""
    chosen = list(default) if not names else names
    unknown = [name for name in chosen if name not in ALGORITHMS]
    if unknown:
        raise SystemExit(f"unknown algorithm(s) {unknown}; choose from {sorted(ALGORITHMS)}")
    return chosen
