"""What changed between a good and a bad policy, measured on a fixed probe batch of states.

The analysis the seed's author made by hand on a Pong collapse, automated:

* on the probe batch, how entropy, value and action probabilities moved from good to bad;
* per-layer weight deltas;
* each layer alone interpolated from its good to its bad weights (all others kept good), and each
  layer alone restored to good in the bad policy: the layers whose change alone reproduces the
  collapse *flip the policy*. For convolutions the same is done filter by filter.

The effect of a change is measured against the good policy on the probe batch: the mean
``KL(π_good ‖ π)`` and the action disagreement (fraction of states whose most likely action
differs; NaN for continuous actions, where the KL is used to name layers instead).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.save_util import load_from_zip_file
from stable_baselines3.common.vec_env import VecEnv

from sb3_ppo_variants.collapse.events import DIAGNOSIS_FILE, json_safe, write_json

__all__ = [
    "Diagnosis",
    "collect_probe",
    "compare_on_probe",
    "diagnose",
    "filter_interpolation",
    "layer_interpolation",
    "layers_of",
    "load_policy",
    "load_probe",
    "save_probe",
    "weight_deltas",
]

LAYERS_FILE = "layers.csv"
FILTERS_FILE = "filters.csv"
TRAJECTORY_FILE = "probe_trajectory.csv"
ALPHAS = (0.25, 0.5, 0.75, 1.0)

StateDict = Mapping[str, th.Tensor]


# ------------------------------------------------------------------------------ policies and probes


def load_policy(path: str | Path, device: str = "cpu") -> ActorCriticPolicy:
    """The policy of any saved SB3 on-policy model (PPO, A2C, VariantPPO, ...), without its algorithm class."""
    data, params, _ = load_from_zip_file(str(path), device=device)
    if data is None or "policy" not in params:
        raise ValueError(f"{path} holds no policy parameters")
    policy_class = data["policy_class"]
    if not issubclass(policy_class, ActorCriticPolicy):
        raise ValueError(f"{path}: diagnosis needs an actor-critic policy, got {policy_class.__name__}")
    policy = policy_class(
        data["observation_space"], data["action_space"], lambda _: 0.0, **(data.get("policy_kwargs") or {})
    )
    policy.load_state_dict(params["policy"])
    return policy.to(device).eval()


def save_probe(path: str | Path, observations: np.ndarray, **metadata: Any) -> Path:
    """Write a probe batch: the observations as the policy sees them (after any VecNormalize)."""
    path = Path(path)
    arrays = {"observations": observations, **{key: np.asarray(value) for key, value in metadata.items()}}
    np.savez_compressed(path, allow_pickle=True, **arrays)
    return path


def load_probe(path: str | Path) -> np.ndarray:
    with np.load(path) as data:
        if "observations" not in data:
            raise ValueError(f"{path} has no 'observations' array")
        return np.asarray(data["observations"])


def collect_probe(
    policy: Any, env: VecEnv, n_states: int = 2000, deterministic: bool = False, seed: int | None = 0
) -> np.ndarray:
    """Observations met by ``policy`` (a model or a policy with ``predict``) playing ``env``.

    Stochastic actions by default, so that the batch covers the states the policy visits
    rather than one deterministic trajectory.
    """
    if n_states < 1:
        raise ValueError(f"n_states must be >= 1, got {n_states!r}")
    if seed is not None:
        env.seed(seed)
    observations = env.reset()
    if isinstance(observations, dict):
        raise ValueError("probe batches of Dict observations are not supported")
    kept: list[np.ndarray] = []
    count = 0
    while count < n_states:
        kept.append(np.array(observations))
        count += len(observations)
        actions, _ = policy.predict(observations, deterministic=deterministic)
        observations, _, _, _ = env.step(actions)
    return np.concatenate(kept)[:n_states]


@dataclass
class PolicyOutputs:
    """The action distribution and values of a policy on a batch.

    ``distribution`` is the torch distribution itself: SB3's ``Distribution`` wrapper is
    reused (and overwritten) by the policy's next forward pass.
    """

    distribution: th.distributions.Distribution
    values: th.Tensor

    @property
    def discrete(self) -> bool:
        return isinstance(self.distribution, th.distributions.Categorical)

    def entropy(self) -> th.Tensor:
        entropy = self.distribution.entropy()
        return entropy.sum(dim=1) if entropy.dim() > 1 else entropy

    def greedy_actions(self) -> th.Tensor:
        return self.distribution.probs.argmax(dim=-1)  # type: ignore[attr-defined]


def policy_outputs(policy: ActorCriticPolicy, observations: th.Tensor) -> PolicyOutputs:
    with th.no_grad():
        distribution: Distribution = policy.get_distribution(observations)
        values = policy.predict_values(observations).flatten()
    return PolicyOutputs(distribution.distribution, values)  # type: ignore[arg-type]


def mean_kl(reference: PolicyOutputs, other: PolicyOutputs) -> float:
    """Mean over the batch of ``KL(reference ‖ other)``."""
    kl = th.distributions.kl_divergence(reference.distribution, other.distribution)
    if kl.dim() > 1:  # a diagonal Gaussian: independent action dimensions
        kl = kl.sum(dim=1)
    return float(kl.mean())


def disagreement(reference: PolicyOutputs, other: PolicyOutputs) -> float:
    """Fraction of states whose most likely action differs (NaN for continuous actions)."""
    if not reference.discrete:
        return float("nan")
    return float((reference.greedy_actions() != other.greedy_actions()).double().mean())


def as_tensor(policy: ActorCriticPolicy, observations: np.ndarray) -> th.Tensor:
    tensor, _ = policy.obs_to_tensor(observations)
    return tensor  # type: ignore[return-value]


def compare_on_probe(good: ActorCriticPolicy, bad: ActorCriticPolicy, observations: th.Tensor) -> dict[str, Any]:
    """How entropy, value and action probabilities moved from ``good`` to ``bad`` on the probe batch."""
    before, after = policy_outputs(good, observations), policy_outputs(bad, observations)
    summary: dict[str, Any] = {
        "n_states": int(observations.shape[0]),
        "entropy_good": float(before.entropy().mean()),
        "entropy_bad": float(after.entropy().mean()),
        "value_good": float(before.values.mean()),
        "value_bad": float(after.values.mean()),
        "kl_good_bad": mean_kl(before, after),
        "disagreement": disagreement(before, after),
    }
    if before.discrete:
        for label, outputs in (("good", before), ("bad", after)):
            probs = outputs.distribution.probs  # type: ignore[attr-defined]
            summary[f"action_probs_{label}"] = probs.mean(0).tolist()
            summary[f"action_freq_{label}"] = np.bincount(
                outputs.greedy_actions().numpy(), minlength=probs.shape[-1]
            ).tolist()
    return summary


# ------------------------------------------------------------------------------ layers


def layers_of(policy: th.nn.Module) -> dict[str, list[str]]:
    """Parameters grouped by the module that holds them: ``features_extractor.trunk.1`` → its weight and bias.

    A module reached under several names (SB3's ``pi_features_extractor`` and
    ``vf_features_extractor`` are the shared ``features_extractor``) is listed once, under its first name.
    """
    layers: dict[str, list[str]] = {}
    for name, _ in policy.named_parameters():
        layer = name.rsplit(".", 1)[0] if "." in name else name
        layers.setdefault(layer, []).append(name)
    return layers


def weight_deltas(layers: Mapping[str, Sequence[str]], good: StateDict, bad: StateDict) -> pd.DataFrame:
    """Per layer: the norm of the good weights, of the change, and their ratio."""
    rows = []
    for layer, names in layers.items():
        zero = th.zeros((), dtype=th.float64)
        good_norm = float(th.sqrt(sum((good[name].double().pow(2).sum() for name in names), zero)))
        delta_norm = float(th.sqrt(sum(((bad[name] - good[name]).double().pow(2).sum() for name in names), zero)))
        n_params = sum(good[name].numel() for name in names)
        rows.append(
            {
                "layer": layer,
                "n_params": n_params,
                "weight_norm_good": good_norm,
                "delta_norm": delta_norm,
                "relative_delta": delta_norm / good_norm if good_norm > 0 else float("nan"),
            }
        )
    return pd.DataFrame(rows)


class _Swapped:
    """Loads a state into a policy for one measurement, then puts the reference state back."""

    def __init__(self, policy: ActorCriticPolicy, reference: StateDict):
        self.policy, self.reference = policy, reference

    def measure(
        self, changes: Mapping[str, th.Tensor], observations: th.Tensor, baseline: PolicyOutputs
    ) -> tuple[float, float]:
        params = dict(self.policy.named_parameters())
        with th.no_grad():
            for name, value in changes.items():
                params[name].copy_(value)
            outputs = policy_outputs(self.policy, observations)
            for name in changes:
                params[name].copy_(self.reference[name])
        return mean_kl(baseline, outputs), disagreement(baseline, outputs)


def layer_interpolation(
    good: ActorCriticPolicy, bad_state: StateDict, observations: th.Tensor, alphas: Sequence[float] = ALPHAS
) -> pd.DataFrame:
    """Each layer alone moved a fraction ``α`` of the way from good to bad, and each layer alone restored in bad.

    Columns ``kl_<α>``/``disagreement_<α>``: the good policy with only this layer at
    ``good + α·(bad − good)``; ``kl_restored``/``disagreement_restored``: the bad policy with only
    this layer back at its good weights (all measured against the good policy).
    """
    good_state = {name: tensor.detach().clone() for name, tensor in good.state_dict().items()}
    baseline = policy_outputs(good, observations)
    into_good = _Swapped(good, good_state)
    rows = []
    layers = layers_of(good)
    for layer, names in layers.items():
        row: dict[str, Any] = {"layer": layer}
        for alpha in alphas:
            changes = {name: good_state[name] + alpha * (bad_state[name] - good_state[name]) for name in names}
            row[f"kl_{alpha:g}"], row[f"disagreement_{alpha:g}"] = into_good.measure(changes, observations, baseline)
        rows.append(row)
    # The bad policy, restoring one layer at a time.
    good.load_state_dict(bad_state)
    into_bad = _Swapped(good, bad_state)
    try:
        for row in rows:
            changes = {name: good_state[name] for name in layers[row["layer"]]}
            row["kl_restored"], row["disagreement_restored"] = into_bad.measure(changes, observations, baseline)
    finally:
        good.load_state_dict(good_state)
    return pd.DataFrame(rows)


def filter_interpolation(
    good: ActorCriticPolicy, bad_state: StateDict, observations: th.Tensor, layer: str
) -> pd.DataFrame:
    """Each output filter of convolution ``layer`` alone changed from good to bad (weight slice and bias)."""
    good_state = {name: tensor.detach().clone() for name, tensor in good.state_dict().items()}
    baseline = policy_outputs(good, observations)
    weight, bias = f"{layer}.weight", f"{layer}.bias"
    into_good = _Swapped(good, good_state)
    rows = []
    for index in range(good_state[weight].shape[0]):
        changes = {weight: good_state[weight].clone()}
        changes[weight][index] = bad_state[weight][index]
        if bias in good_state:
            changes[bias] = good_state[bias].clone()
            changes[bias][index] = bad_state[bias][index]
        delta = float((bad_state[weight][index] - good_state[weight][index]).double().norm())
        kl, disagree = into_good.measure(changes, observations, baseline)
        rows.append({"layer": layer, "filter": index, "delta_norm": delta, "kl_1": kl, "disagreement_1": disagree})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------ the diagnosis


@dataclass
class Diagnosis:
    """The diagnosis between a good and a bad policy on a probe batch.

    :param summary: entropy, value, KL, disagreement and action probabilities, good vs bad.
    :param layers: one row per layer: weight deltas and the interpolation columns.
    :param filters: one row per convolution filter.
    :param flipping_layers: layers whose change alone reproduces at least ``flip_share`` of the full effect.
    :param flipping_filters: ``"layer[filter]"`` names, likewise.
    :param effect: the measure used to name them, ``disagreement`` (discrete actions) or ``kl``.
    :param flip_share: the share of the full good→bad effect a single change must reach.
    """

    summary: dict[str, Any]
    layers: pd.DataFrame
    filters: pd.DataFrame
    flipping_layers: list[str] = field(default_factory=list)
    flipping_filters: list[str] = field(default_factory=list)
    effect: str = "disagreement"
    flip_share: float = 0.5
    trajectory: pd.DataFrame | None = None

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.layers.to_csv(folder / LAYERS_FILE, index=False)
        self.filters.to_csv(folder / FILTERS_FILE, index=False)
        if self.trajectory is not None:
            self.trajectory.to_csv(folder / TRAJECTORY_FILE, index=False)
        record = {
            "summary": self.summary,
            "effect": self.effect,
            "flip_share": self.flip_share,
            "flipping_layers": self.flipping_layers,
            "flipping_filters": self.flipping_filters,
            "layers": self.layers.to_dict(orient="records"),
        }
        write_json(folder / DIAGNOSIS_FILE, json_safe(record))
        return folder / DIAGNOSIS_FILE

    @classmethod
    def load(cls, folder: str | Path) -> Diagnosis:
        import json

        folder = Path(folder)
        record = json.loads((folder / DIAGNOSIS_FILE).read_text())
        filters = pd.read_csv(folder / FILTERS_FILE) if (folder / FILTERS_FILE).stat().st_size > 1 else pd.DataFrame()
        trajectory = pd.read_csv(folder / TRAJECTORY_FILE) if (folder / TRAJECTORY_FILE).is_file() else None
        return cls(
            summary=record["summary"],
            layers=pd.read_csv(folder / LAYERS_FILE),
            filters=filters,
            flipping_layers=record["flipping_layers"],
            flipping_filters=record["flipping_filters"],
            effect=record["effect"],
            flip_share=record["flip_share"],
            trajectory=trajectory,
        )


def probe_trajectory(
    good: ActorCriticPolicy, checkpoints: Sequence[tuple[int, str | Path]], observations: th.Tensor
) -> pd.DataFrame:
    """Entropy, value, KL and disagreement against ``good`` of each checkpoint on the probe batch."""
    baseline = policy_outputs(good, observations)
    rows = []
    for timesteps, path in checkpoints:
        outputs = policy_outputs(load_policy(path), observations)
        row = {
            "timesteps": int(timesteps),
            "entropy": float(outputs.entropy().mean()),
            "value": float(outputs.values.mean()),
            "kl_from_good": mean_kl(baseline, outputs),
            "disagreement": disagreement(baseline, outputs),
        }
        if outputs.discrete:
            for action, prob in enumerate(outputs.distribution.probs.mean(0).tolist()):  # type: ignore[attr-defined]
                row[f"prob_{action}"] = prob
        rows.append(row)
    return pd.DataFrame(rows)


def diagnose(
    good_path: str | Path,
    bad_path: str | Path,
    observations: np.ndarray,
    flip_share: float = 0.5,
    filters: bool = True,
    checkpoints: Sequence[tuple[int, str | Path]] = (),
) -> Diagnosis:
    """Diagnose the change from the model saved at ``good_path`` to the one at ``bad_path``.

    :param good_path: the last good checkpoint (an SB3 ``.zip``).
    :param bad_path: the first bad checkpoint.
    :param observations: the probe batch, as the policy sees them.
    :param flip_share: a layer (filter) *flips the policy* when its change alone reaches this
        share of the full good→bad effect.
    :param filters: also interpolate the filters of every convolution one by one.
    :param checkpoints: ``(timesteps, path)`` of further checkpoints to evaluate on the probe batch.
    """
    if not 0.0 < flip_share <= 1.0:
        raise ValueError(f"flip_share must be in (0, 1], got {flip_share!r}")
    good, bad = load_policy(good_path), load_policy(bad_path)
    if good.state_dict().keys() != bad.state_dict().keys():
        raise ValueError(f"{good_path} and {bad_path} are not the same network")
    probe = as_tensor(good, observations)
    summary = compare_on_probe(good, bad, probe)
    bad_state = {name: tensor.detach().clone() for name, tensor in bad.state_dict().items()}
    good_state = {name: tensor.detach().clone() for name, tensor in good.state_dict().items()}
    layers = weight_deltas(layers_of(good), good_state, bad_state).merge(
        layer_interpolation(good, bad_state, probe), on="layer"
    )

    discrete = isinstance(good.action_space, spaces.Discrete)
    effect = "disagreement" if discrete else "kl"
    full = summary["disagreement"] if discrete else summary["kl_good_bad"]
    column = f"{effect}_1"
    flips = layers[column] >= flip_share * full if full > 0 else layers[column] > np.inf
    layers["flips_policy"] = flips.to_numpy()

    filter_tables = []
    if filters:
        for module_name, module in good.named_modules():
            if isinstance(module, th.nn.Conv2d | th.nn.Conv1d):
                filter_tables.append(filter_interpolation(good, bad_state, probe, module_name))
    filter_table = pd.concat(filter_tables, ignore_index=True) if filter_tables else pd.DataFrame()
    flipping_filters: list[str] = []
    if not filter_table.empty:
        filter_table["flips_policy"] = (filter_table[column] >= flip_share * full).to_numpy() if full > 0 else False
        flipping_filters = [f"{row.layer}[{row.filter}]" for row in filter_table.itertuples() if row.flips_policy]
    del good_state
    return Diagnosis(
        summary=summary,
        layers=layers,
        filters=filter_table,
        flipping_layers=layers.loc[layers["flips_policy"], "layer"].tolist(),
        flipping_filters=flipping_filters,
        effect=effect,
        flip_share=flip_share,
        trajectory=probe_trajectory(good, checkpoints, probe) if checkpoints else None,
    )


def describe(diagnosis: Diagnosis) -> str:
    """One paragraph a person can read."""
    summary = diagnosis.summary
    buffer = io.StringIO()
    buffer.write(
        f"On {summary['n_states']} probe states: entropy {summary['entropy_good']:.3g} → {summary['entropy_bad']:.3g}, "
        f"value {summary['value_good']:.3g} → {summary['value_bad']:.3g}, KL(good‖bad) {summary['kl_good_bad']:.3g}, "
        f"action disagreement {summary['disagreement']:.3g}.\n"
    )
    if diagnosis.flipping_layers:
        buffer.write(f"Changing only {', '.join(diagnosis.flipping_layers)} flips the policy")
    else:
        buffer.write("No single layer's change alone flips the policy")
    buffer.write(f" ({diagnosis.effect} ≥ {diagnosis.flip_share:g} of the full change).\n")
    if diagnosis.flipping_filters:
        buffer.write(f"Filters whose change alone flips it: {', '.join(diagnosis.flipping_filters)}.\n")
    return buffer.getvalue()
