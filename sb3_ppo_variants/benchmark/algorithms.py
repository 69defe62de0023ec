"""The algorithms compared by the benchmarks: SB3's ``PPO``, every variant of the registry and its configurations."""

from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass, field, replace
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
        """The algorithm on ``env`` with the task's ``hyperparameters``; its own options take precedence (an arm
        of a sweep may set the task's ``clip_range``), and its ``policy_kwargs`` are merged into the task's."""
        options = dict(self.options)
        if "policy_kwargs" in options:  # merged with the task's, e.g. the Adam β recipe on a shared trunk
            shared = hyperparameters.pop("policy_kwargs", None) or {}
            options["policy_kwargs"] = {**shared, **options["policy_kwargs"]}
        return self.algorithm_class(policy, env, **{**hyperparameters, **options})


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


OPTIONS_SEPARATOR = "@"
"""``NAME@KEY=VALUE,KEY=VALUE``: the algorithm ``NAME`` with these keyword arguments (``algorithm``)."""
GRID_ARGUMENTS = ("policy", "env", "learning_rate", "seed", "device", "verbose", "tensorboard_log")
"""Keyword arguments that the grid itself sets (``--lr-scales``, ``--seeds``, ``--device``), never an arm's."""


def _keyword_arguments(algorithm_class: type) -> set[str]:
    """The keyword arguments the class accepts: its ``__init__``'s and, through ``**kwargs``, its bases'."""
    names: set[str] = set()
    for klass in algorithm_class.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(vars(klass)["__init__"]).parameters.values()
        names |= {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return names - {"self"}


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def algorithm(name: str) -> Algorithm:
    """The compared algorithm called ``name``: one of ``ALGORITHMS``, or ``BASE@KEY=VALUE[,KEY=VALUE...]``, the
    algorithm ``BASE`` with these keyword arguments on top of its own options and the task's hyperparameters:
    ``rollback@peaked_policy_loss=0.2``, ``ppo@clip_range=0.1``. A value is a Python literal without a comma
    (``0.2``, ``1e-3``, ``None``, ``True``) or else a string (``per_state``). The name, as written, names the
    arm's files.

    :raises ValueError: naming the algorithm, when ``BASE`` is unknown, a pair is not ``KEY=VALUE``, a key is
        given twice, is set by the grid (``GRID_ARGUMENTS``) or is not an argument of ``BASE``'s class (listing
        those it accepts). The values are checked by the class when the arm is built (``check_arms``).
    """
    if name in ALGORITHMS:
        return ALGORITHMS[name]
    base, separator, spec = name.partition(OPTIONS_SEPARATOR)
    if base not in ALGORITHMS:
        raise ValueError(
            f"unknown algorithm {name!r}; choose from {sorted(ALGORITHMS)}, each optionally followed by "
            f"{OPTIONS_SEPARATOR}KEY=VALUE,KEY=VALUE"
        )
    if not separator or not spec:
        raise ValueError(f"{name!r}: give the options after {OPTIONS_SEPARATOR!r} as KEY=VALUE,KEY=VALUE")
    registered = ALGORITHMS[base]
    accepted = _keyword_arguments(registered.algorithm_class) - set(GRID_ARGUMENTS)
    options: dict[str, Any] = {}
    for pair in spec.split(","):
        key, equals, value = pair.partition("=")
        if not equals or not key:
            raise ValueError(f"{name!r}: {pair!r} is not KEY=VALUE")
        if key in options:
            raise ValueError(f"{name!r}: {key} is given twice")
        if key in GRID_ARGUMENTS:
            raise ValueError(f"{name!r}: {key} is set by the grid ({', '.join(GRID_ARGUMENTS)}), not by an arm")
        if key not in accepted:
            raise ValueError(
                f"{name!r}: {registered.algorithm_class.__name__} has no argument {key!r}; it accepts "
                f"{', '.join(sorted(accepted))}"
            )
        options[key] = _literal(value)
    return replace(registered, name=name, options={**registered.options, **options}, zoo_id=None)


def parse_algorithms(names: list[str] | None, default: tuple[str, ...]) -> list[str]:
    """Validate algorithm names given on the command line (``None`` gives ``default``): the names of
    ``ALGORITHMS``, or an algorithm with options (``algorithm``)."""
    chosen = list(default) if not names else names
    errors = []
    for name in chosen:
        try:
            algorithm(name)
        except ValueError as error:
            errors.append(str(error))
    if errors:
        raise SystemExit("--algorithms: " + "; ".join(errors))
    return chosen
