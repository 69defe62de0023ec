"""Every variant named once: its class, rl-zoo3 id, label and sampler.

The package's exports, the zoo's ids, samplers and shipped files, and the benchmark's algorithm list
are all read from ``VARIANTS`` (``VariantPPO`` and its presets). ``CONTRIB_VARIANTS`` holds the same options
over sb3-contrib's MaskablePPO and RecurrentPPO; they need masked or recurrent tasks, so the exports and the
zoo read them (``ZOO_VARIANTS``) and the benchmark's PPO tasks do not. Benchmark-only configurations (an
option of ``VariantPPO`` without a preset of its own, or an SB3 recipe) are in ``CONFIGURATIONS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
    VariantAlgorithm,
    VariantPPO,
)


@dataclass(frozen=True)
class Variant:
    """One algorithm of this package.

    :param name: short name in benchmark tables, plots and file names
    :param algorithm_class: the class (``VariantPPO``, a preset or an sb3-contrib class with the options)
    :param zoo_id: its rl-zoo3 algorithm id (``hyperparams/<zoo_id>.yml``)
    :param label: how plots and tables name it
    :param sampler: name of its Optuna sampler in ``sb3_ppo_variants.zoo.samplers``
    """

    name: str
    algorithm_class: type[VariantAlgorithm]
    zoo_id: str
    label: str
    sampler: str


@dataclass(frozen=True)
class Configuration:
    """A benchmark entry without a zoo id: a class with options on top of its defaults.

    :param name: short name in benchmark tables
    :param algorithm_class: ``VariantPPO``, or ``None`` for SB3's ``PPO``
    :param label: how plots and tables name it
    :param options: keyword arguments added to the shared hyperparameters
    """

    name: str
    algorithm_class: type[VariantPPO] | None
    label: str
    options: dict[str, Any] = field(default_factory=dict)


VARIANTS: tuple[Variant, ...] = (
    Variant("variant", VariantPPO, "ppo_variant", "VariantPPO (defaults)", "sample_variant_params"),
    Variant("logit", LogitPPO, "ppo_logit", "LogitPPO", "sample_logit_params"),
    Variant("peaked", PeakedPPO, "ppo_peaked", "PeakedPPO", "sample_peaked_params"),
    Variant("rescaled", RescaledPPO, "ppo_rescaled", "RescaledPPO", "sample_rescaled_params"),
    Variant("spo", SPOPPO, "ppo_spo", "SPOPPO", "sample_spo_params"),
    Variant("kl", KLPenaltyPPO, "ppo_kl", "KLPenaltyPPO", "sample_kl_params"),
    Variant("truly", TrulyPPO, "ppo_truly", "TrulyPPO", "sample_truly_params"),
    Variant("dual_clip", DualClipPPO, "ppo_dual_clip", "DualClipPPO", "sample_dual_clip_params"),
    Variant("tr_ppo", TRPPO, "ppo_tr", "TRPPO", "sample_tr_params"),
)

CONTRIB_VARIANTS: tuple[Variant, ...] = (
    Variant("mask", MaskableVariantPPO, "ppo_mask_variant", "MaskableVariantPPO", "sample_mask_variant_params"),
    Variant("lstm", RecurrentVariantPPO, "ppo_lstm_variant", "RecurrentVariantPPO", "sample_lstm_variant_params"),
)

ZOO_VARIANTS: tuple[Variant, ...] = VARIANTS + CONTRIB_VARIANTS
"""Every class of the package, as the exports and rl-zoo3 list them."""

ADAM_EQUAL_BETAS = {"optimizer_kwargs": {"betas": (0.99, 0.99)}}
"""Adam with ``β1 = β2`` (Dohare et al. 2023, "Overcoming Policy Collapse in Deep RL"), as SB3 ``policy_kwargs``."""

CONFIGURATIONS: tuple[Configuration, ...] = (
    Configuration("per_state", VariantPPO, "VariantPPO per_state", {"value_grad_rescaling": "per_state"}),
    Configuration("per_batch", VariantPPO, "VariantPPO per_batch", {"value_grad_rescaling": "per_batch"}),
    # the restoring slope α of the Truly PPO repository's PPO-RB (``ratio_rollback``, MuJoCo: slope 0.3)
    Configuration("rollback", VariantPPO, "VariantPPO α = 0.3", {"peaked_policy_loss": 0.3}),
    Configuration("clip_higher", VariantPPO, "VariantPPO Clip-Higher", {"clip_range_high": 0.28}),
    Configuration("espo", VariantPPO, "VariantPPO ESPO", {"ratio_change_limit": 0.2}),
    Configuration("pfo", VariantPPO, "VariantPPO PFO", {"feature_drift_coef": 1.0}),
    Configuration("adam_equal_betas", None, "PPO, Adam β1 = β2", {"policy_kwargs": ADAM_EQUAL_BETAS}),
)

BY_ZOO_ID: dict[str, Variant] = {variant.zoo_id: variant for variant in ZOO_VARIANTS}
