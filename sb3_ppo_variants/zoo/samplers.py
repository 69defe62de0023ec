"""Optuna search spaces for ``rl_zoo3.train -optimize``.

Each sampler has rl-zoo3's signature ``(trial, n_actions, n_envs, additional_args) -> dict`` and returns
constructor arguments. The shared part of the space is rl-zoo3's own PPO sampler, called unchanged;
each algorithm adds only its own options. Each converter turns a finished trial's ``params`` back into
constructor arguments (the zoo uses it for ``--trial-id``), so that ``sampler(trial) ==
converter(trial.params)``.

``n_actions`` is 0 unless the action space is a ``Box`` (the zoo only sets it for ``Box``), which is how
the samplers keep the pseudo-entropy and logit-target options away from continuous actions.

rl-zoo3's PPO sampler and converter are imported when a sampler or converter runs, not with this module:
the registration imports this module from inside ``rl_zoo3.hyperparams_opt``'s import, and a module-level
import of that module here would make ``import sb3_ppo_variants.zoo.samplers`` (before rl_zoo3) circular.
"""

from collections.abc import Callable
from typing import Any

import optuna

from sb3_ppo_variants.registry import ZOO_VARIANTS

Sampler = Callable[[optuna.Trial, int, int, dict], dict[str, Any]]
Converter = Callable[[dict[str, Any]], dict[str, Any]]

VALUE_GRAD_RESCALINGS = (None, "per_state", "per_batch", "smoothed")
SURROGATES = ("clipped", "spo", "unclipped")

_NOT_TUNED = object()


class _TrialWithOverrides:
    """A trial whose named suggestions are answered by other distributions (or left untuned).

    Lets the zoo's PPO sampler run unchanged when one algorithm needs a different range for one of its
    hyperparameters, e.g. SPO's ε.
    """

    def __init__(self, trial: optuna.Trial, overrides: dict[str, Callable[[optuna.Trial], Any]]) -> None:
        self._trial = trial
        self._overrides = overrides

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trial, name)

    def _suggest(self, kind: str, name: str, *args: Any, **kwargs: Any) -> Any:
        if name in self._overrides:
            return self._overrides[name](self._trial)
        return getattr(self._trial, kind)(name, *args, **kwargs)

    def suggest_categorical(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self._suggest("suggest_categorical", name, *args, **kwargs)

    def suggest_float(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self._suggest("suggest_float", name, *args, **kwargs)

    def suggest_int(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self._suggest("suggest_int", name, *args, **kwargs)


def _ppo_space(
    trial: optuna.Trial,
    n_actions: int,
    n_envs: int,
    additional_args: dict,
    overrides: dict[str, Callable[[optuna.Trial], Any]] | None = None,
) -> dict[str, Any]:
    from rl_zoo3.hyperparams_opt import sample_ppo_params

    proxy = _TrialWithOverrides(trial, overrides or {})
    hyperparams = sample_ppo_params(proxy, n_actions, n_envs, additional_args)  # type: ignore[arg-type]
    return {key: value for key, value in hyperparams.items() if value is not _NOT_TUNED}


# --- the variants' own options ---------------------------------------------------------------------
# Sampled under the names below; ``convert_variant_options`` maps them to constructor arguments.
#   one_minus_pseudo_entropy_smoothing -> pseudo_entropy_smoothing = 1 - x  (log scale near 1)
#   peaked_policy_loss (bool) + restoring_slope α -> peaked_policy_loss = α, or False
#   kl_penalty (bool) -> kl_coef = 0 when off
#   kl_rollback α (with the KL trust region) -> peaked_policy_loss = α
#   trust_region, clip_higher, dual_clipped, espo, pfo: switches, dropped


def _suggest_smoothing(trial: optuna.Trial) -> dict[str, Any]:
    name = "one_minus_pseudo_entropy_smoothing"
    return {name: trial.suggest_float(name, 1e-3, 0.1, log=True)}


def _suggest_restoring_slope(trial: optuna.Trial) -> dict[str, Any]:
    return {"restoring_slope": trial.suggest_float("restoring_slope", 0.01, 1.0, log=True)}


def _suggest_kl_penalty(trial: optuna.Trial) -> dict[str, Any]:
    return {
        "kl_coef": trial.suggest_float("kl_coef", 0.1, 10.0, log=True),
        "kl_penalty_target": trial.suggest_float("kl_penalty_target", 0.002, 0.05, log=True),
    }


def _suggest_kl_trust_region(trial: optuna.Trial, rollback: bool = True) -> dict[str, Any]:
    # δ down to the reference's Atari values (8e-4 for Truly PPO, 1e-3 for TR-PPO), α up to its Atari 20
    options = {"kl_trust_region": trial.suggest_float("kl_trust_region", 5e-4, 0.1, log=True)}
    if rollback:
        options["kl_rollback"] = trial.suggest_float("kl_rollback", 0.1, 20.0, log=True)
    return options


def _suggest_dual_clip(trial: optuna.Trial) -> dict[str, Any]:
    return {"dual_clip": trial.suggest_float("dual_clip", 1.5, 10.0, log=True)}


def convert_variant_options(params: dict[str, Any]) -> dict[str, Any]:
    """Map the variants' sampled names to constructor arguments; other keys pass through unchanged."""
    hyperparams = dict(params)
    if "one_minus_pseudo_entropy_smoothing" in hyperparams:
        hyperparams["pseudo_entropy_smoothing"] = 1.0 - hyperparams.pop("one_minus_pseudo_entropy_smoothing")
    restoring_slope = hyperparams.pop("restoring_slope", None)
    if restoring_slope is not None:
        hyperparams["peaked_policy_loss"] = restoring_slope if hyperparams.get("peaked_policy_loss", True) else False
    if hyperparams.pop("kl_penalty", True) is False:
        hyperparams["kl_coef"] = 0.0
    kl_rollback = hyperparams.pop("kl_rollback", None)
    if kl_rollback is not None:
        hyperparams["peaked_policy_loss"] = kl_rollback
    # switches whose only effect is which of the options above were sampled
    for switch in ("trust_region", "clip_higher", "dual_clipped", "espo", "pfo"):
        hyperparams.pop(switch, None)
    return hyperparams


def _convert(params: dict[str, Any]) -> dict[str, Any]:
    from rl_zoo3.hyperparams_opt import convert_onpolicy_params

    return convert_variant_options(convert_onpolicy_params(params))


def _variant_options(trial: optuna.Trial, discrete_actions: bool) -> dict[str, Any]:
    """Which modifications of ``VariantPPO`` to combine, with their own parameters, as constructor arguments."""
    options: dict[str, Any] = {}
    if discrete_actions:
        rescaling = trial.suggest_categorical("value_grad_rescaling", VALUE_GRAD_RESCALINGS)
        options["value_grad_rescaling"] = rescaling
        if rescaling == "smoothed":
            options.update(_suggest_smoothing(trial))
        options["delta_target_policy"] = trial.suggest_categorical("delta_target_policy", ["absolute", "logit"])
    surrogate = trial.suggest_categorical("surrogate", SURROGATES)
    options["surrogate"] = surrogate
    if surrogate == "clipped":
        # the KL bound replaces the ratio target, so it excludes the logit target and Clip-Higher
        trust_region = "ratio"
        if options.get("delta_target_policy", "absolute") == "absolute":
            trust_region = trial.suggest_categorical("trust_region", ["ratio", "kl"])
        if trust_region == "kl":
            options.update(_suggest_kl_trust_region(trial))
        else:
            options["peaked_policy_loss"] = trial.suggest_categorical("peaked_policy_loss", [False, True])
            if options["peaked_policy_loss"]:
                options.update(_suggest_restoring_slope(trial))
            if trial.suggest_categorical("clip_higher", [False, True]):
                options["clip_range_high"] = trial.suggest_float("clip_range_high", 0.1, 0.4)
        if trial.suggest_categorical("dual_clipped", [False, True]):
            options.update(_suggest_dual_clip(trial))
    # Without clipping, the adaptive KL penalty is the only trust region, so it is always on.
    kl_penalty = True if surrogate == "unclipped" else trial.suggest_categorical("kl_penalty", [False, True])
    if surrogate != "unclipped":
        options["kl_penalty"] = kl_penalty
    if kl_penalty:
        options.update(_suggest_kl_penalty(trial))
    if trial.suggest_categorical("espo", [False, True]):
        options["ratio_change_limit"] = trial.suggest_float("ratio_change_limit", 0.05, 0.5, log=True)
    if trial.suggest_categorical("pfo", [False, True]):
        options["feature_drift_coef"] = trial.suggest_float("feature_drift_coef", 0.01, 10.0, log=True)
    return convert_variant_options(options)


def sample_variant_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """VariantPPO: the PPO space plus which modifications to combine, the restoring slope and the smoothing."""
    hyperparams = _ppo_space(trial, n_actions, n_envs, additional_args)
    return {**hyperparams, **_variant_options(trial, discrete_actions=n_actions == 0)}


def sample_mask_variant_params(
    trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict
) -> dict[str, Any]:
    """MaskableVariantPPO: the PPO space (rl-zoo3 has no MaskablePPO sampler) plus ``VariantPPO``'s options.

    MaskablePPO's actions are always Discrete, MultiDiscrete or MultiBinary.
    """
    hyperparams = _ppo_space(trial, n_actions, n_envs, additional_args)
    return {**hyperparams, **_variant_options(trial, discrete_actions=True)}


def sample_lstm_variant_params(
    trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict
) -> dict[str, Any]:
    """RecurrentVariantPPO: rl-zoo3's RecurrentPPO space (``sample_ppo_lstm_params``) plus ``VariantPPO``'s options."""
    from rl_zoo3.hyperparams_opt import sample_ppo_lstm_params

    hyperparams = sample_ppo_lstm_params(trial, n_actions, n_envs, additional_args)
    return {**hyperparams, **_variant_options(trial, discrete_actions=n_actions == 0)}


def sample_logit_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """LogitPPO: the PPO space; ``clip_range`` is the target's distance in logit space."""
    return _ppo_space(trial, n_actions, n_envs, additional_args)


def sample_peaked_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """PeakedPPO: the PPO space plus the restoring slope α beyond the target."""
    hyperparams = _ppo_space(trial, n_actions, n_envs, additional_args)
    return {**hyperparams, **convert_variant_options(_suggest_restoring_slope(trial))}


def sample_rescaled_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """RescaledPPO: the PPO space plus the smoothing of the batch pseudo-entropy."""
    hyperparams = _ppo_space(trial, n_actions, n_envs, additional_args)
    return {**hyperparams, **convert_variant_options(_suggest_smoothing(trial))}


def sample_spo_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """SPOPPO: the PPO space with a continuous, wider range for ε (``clip_range``)."""
    overrides = {"clip_range": lambda t: t.suggest_float("clip_range", 0.05, 0.6, log=True)}
    return _ppo_space(trial, n_actions, n_envs, additional_args, overrides)


def sample_kl_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """KLPenaltyPPO: the PPO space without ``clip_range`` (no clipping) plus the target KL and initial β."""
    overrides = {"clip_range": lambda t: _NOT_TUNED}
    hyperparams = _ppo_space(trial, n_actions, n_envs, additional_args, overrides)
    return {**hyperparams, **_suggest_kl_penalty(trial)}


def sample_truly_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """TrulyPPO: the PPO space without ``clip_range`` (the KL bound replaces it), plus ``δ`` and the rollback ``α``."""
    overrides = {"clip_range": lambda t: _NOT_TUNED}
    hyperparams = _ppo_space(trial, n_actions, n_envs, additional_args, overrides)
    return {**hyperparams, **convert_variant_options(_suggest_kl_trust_region(trial))}


def sample_tr_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """TRPPO: the PPO space without ``clip_range`` (the KL bound replaces it), plus ``δ``; no rollback."""
    overrides = {"clip_range": lambda t: _NOT_TUNED}
    hyperparams = _ppo_space(trial, n_actions, n_envs, additional_args, overrides)
    return {**hyperparams, "kl_trust_region": _suggest_kl_trust_region(trial, rollback=False)["kl_trust_region"]}


def sample_dual_clip_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """DualClipPPO: the PPO space plus the dual-clip bound ``c``."""
    hyperparams = _ppo_space(trial, n_actions, n_envs, additional_args)
    return {**hyperparams, **_suggest_dual_clip(trial)}


SAMPLERS: dict[str, Sampler] = {variant.zoo_id: globals()[variant.sampler] for variant in ZOO_VARIANTS}

CONVERTERS: dict[str, Converter] = {algo: _convert for algo in SAMPLERS}
