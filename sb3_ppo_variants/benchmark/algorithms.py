"""The algorithms compared by the benchmarks: SB3's ``PPO`` and every variant, by short name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stable_baselines3 import PPO
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

from sb3_ppo_variants import SPOPPO, KLPenaltyPPO, LogitPPO, PeakedPPO, RescaledPPO, VariantPPO


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
        return self.algorithm_class(policy, env, **hyperparameters, **self.options)


ALGORITHMS: dict[str, Algorithm] = {
    algorithm.name: algorithm
    for algorithm in (
        Algorithm("ppo", PPO, zoo_id="ppo"),
        Algorithm("variant", VariantPPO, zoo_id="ppo_variant"),
        Algorithm("logit", LogitPPO, zoo_id="ppo_logit"),
        Algorithm("peaked", PeakedPPO, zoo_id="ppo_peaked"),
        Algorithm("rescaled", RescaledPPO, zoo_id="ppo_rescaled"),
        Algorithm("spo", SPOPPO, zoo_id="ppo_spo"),
        Algorithm("kl", KLPenaltyPPO, zoo_id="ppo_kl"),
        Algorithm("per_state", VariantPPO, {"value_grad_rescaling": "per_state"}),
    )
}

# ``variant`` with every option off is SB3's PPO (the parity test pins it), so the learning
# benchmarks leave it out; the cost benchmark keeps it to measure the loop's own overhead.
COST_ALGORITHMS = ("variant", "logit", "peaked", "rescaled", "spo", "kl", "per_state")
LEARNING_ALGORITHMS = ("ppo", "logit", "peaked", "rescaled", "spo", "kl", "per_state")


def parse_algorithms(names: list[str] | None, default: tuple[str, ...]) -> list[str]:
    """Validate algorithm names given on the command line (``None`` gives ``default``)."""
    chosen = list(default) if not names else names
    unknown = [name for name in chosen if name not in ALGORITHMS]
    if unknown:
        raise SystemExit(f"unknown algorithm(s) {unknown}; choose from {sorted(ALGORITHMS)}")
    return chosen
