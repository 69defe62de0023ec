"""Cost of each variant against its reference class, measured as ratios in one process.

Each setting names its reference: SB3's PPO for the ``mlp`` and ``cnn`` settings (against every variant of
the registry), sb3-contrib's MaskablePPO and RecurrentPPO for the ``masked`` and ``recurrent`` settings
(against ``MaskableVariantPPO`` and ``RecurrentVariantPPO``). Two measures, each taken in pairs (the
reference and one algorithm back to back, the order alternating between repeats) and summarised by the
median of the per-pair ratios:

- ``train``: one ``train()`` call on the same rollout. Every algorithm collects it itself from the
  same seed and the same initial weights (checked to be identical, action masks and LSTM states
  included), and before each timed call the policy, the optimizer, the adaptive state (``kl_coef``, the
  smoothed pseudo-entropy) and the NumPy/torch random state (the minibatch permutation, or the recurrent
  buffer's split point) are restored, so every call repeats exactly the same computation.
- ``learn``: the wall-clock of ``learn()`` for a fixed number of environment steps from a freshly
  built model (rollout collection included), reported as a time ratio, the inverse of the FPS ratio.
"""

from __future__ import annotations

import copy
import csv
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.env_util import make_atari_env, make_vec_env
from stable_baselines3.common.logger import configure
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecFrameStack

from sb3_ppo_variants.benchmark.algorithms import ALGORITHMS, CONTRIB_ALGORITHMS, COST_ALGORITHMS, Algorithm
from sb3_ppo_variants.benchmark.plots import plot_cost
from sb3_ppo_variants.benchmark.provenance import provenance

SEED = 0
ROLLOUT_FIELDS = (
    "observations",
    "actions",
    "rewards",
    "returns",
    "episode_starts",
    "values",
    "log_probs",
    "advantages",
)
# compared too where the buffer has them: MaskablePPO's masks, RecurrentPPO's LSTM states at each step
EXTRA_ROLLOUT_FIELDS = ("action_masks", "hidden_states_pi", "cell_states_pi", "hidden_states_vf", "cell_states_vf")


@dataclass(frozen=True)
class CostSetting:
    """An environment, a policy and the shared hyperparameters of one cost measurement.

    ``reference`` is the class every other algorithm is timed against; ``algorithms`` the ones the setting
    can measure (empty: the registry's PPO variants and configurations, ``ALGORITHMS`` without ``ppo``) and
    ``default_algorithms`` those measured when none are named (empty: all of ``algorithms``, or
    ``COST_ALGORITHMS`` for the PPO settings).
    """

    name: str
    description: str
    make_env: Callable[[], VecEnv]
    policy: str
    hyperparameters: dict[str, Any]
    default_threads: int
    fps_timesteps: int
    train_repeats_scale: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)
    reference: Algorithm = ALGORITHMS["ppo"]
    algorithms: dict[str, Algorithm] = field(default_factory=dict)
    default_algorithms: tuple[str, ...] = ()

    def available(self) -> dict[str, Algorithm]:
        """The algorithms this setting can time against its reference, by name."""
        if self.algorithms:
            return dict(self.algorithms)
        return {name: algorithm for name, algorithm in ALGORITHMS.items() if name != self.reference.name}

    def defaults(self) -> list[str]:
        """The algorithms measured when none are named."""
        if self.default_algorithms:
            return list(self.default_algorithms)
        return list(self.algorithms) if self.algorithms else list(COST_ALGORITHMS)


def _cartpole() -> VecEnv:
    return make_vec_env("CartPole-v1", n_envs=1, seed=SEED)


def _invalid_actions() -> VecEnv:
    from sb3_contrib.common.envs import InvalidActionEnvDiscrete

    return make_vec_env(InvalidActionEnvDiscrete, n_envs=1, seed=SEED, env_kwargs={"dim": 20, "n_invalid_actions": 10})


def _cartpole_8() -> VecEnv:
    return make_vec_env("CartPole-v1", n_envs=8, seed=SEED)


def _pong() -> VecEnv:
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    return VecFrameStack(make_atari_env("PongNoFrameskip-v4", n_envs=8, seed=SEED), n_stack=4)


COST_SETTINGS = {
    "mlp": CostSetting(
        name="mlp",
        description="CartPole-v1, MlpPolicy, SB3's default PPO hyperparameters (n_steps=2048, batch_size=64, "
        "n_epochs=10: 320 minibatches per train())",
        make_env=_cartpole,
        policy="MlpPolicy",
        hyperparameters={},
        default_threads=1,
        fps_timesteps=2048,
    ),
    "cnn": CostSetting(
        name="cnn",
        description="PongNoFrameskip-v4 (AtariWrapper, 4 stacked 84×84 frames), CnnPolicy, rl-zoo3's atari "
        "hyperparameters with a constant clip range (8 envs × 128 steps, batch_size=256, n_epochs=4: "
        "16 minibatches per train())",
        make_env=_pong,
        policy="CnnPolicy",
        hyperparameters=dict(
            n_steps=128, n_epochs=4, batch_size=256, learning_rate=2.5e-4, clip_range=0.1, vf_coef=0.5, ent_coef=0.01
        ),
        default_threads=2,
        fps_timesteps=1024,
    ),
    "masked": CostSetting(
        name="masked",
        description="sb3-contrib's InvalidActionEnvDiscrete (dim=20, n_invalid_actions=10, 1 env), MlpPolicy, "
        "MaskablePPO's default hyperparameters (n_steps=2048, batch_size=64, n_epochs=10: 320 minibatches per "
        "train()), against MaskablePPO",
        make_env=_invalid_actions,
        policy="MlpPolicy",
        hyperparameters={},
        default_threads=1,
        fps_timesteps=2048,
        reference=CONTRIB_ALGORITHMS["maskable_ppo"],
        algorithms={name: CONTRIB_ALGORITHMS[name] for name in ("maskable_variant", "maskable_logit")},
    ),
    "recurrent": CostSetting(
        name="recurrent",
        description="CartPole-v1, MlpLstmPolicy (RecurrentPPO's defaults: one LSTM of 256 for the actor, one for "
        "the critic), rl-zoo3's CartPoleNoVel rollout (8 envs × n_steps=32, batch_size=256), n_epochs=10: "
        "10 minibatches of 256 steps per train(), against RecurrentPPO",
        make_env=_cartpole_8,
        policy="MlpLstmPolicy",
        hyperparameters=dict(n_steps=32, batch_size=256, n_epochs=10),
        default_threads=1,
        fps_timesteps=512,
        reference=CONTRIB_ALGORITHMS["recurrent_ppo"],
        algorithms={name: CONTRIB_ALGORITHMS[name] for name in ("recurrent_variant", "recurrent_logit")},
    ),
}


def algorithms_for(setting: CostSetting, names: list[str] | None) -> list[str]:
    """The algorithms to time on ``setting``: ``names``, or the setting's defaults when ``None``.

    A name the setting cannot measure (a PPO variant on a contrib setting, or the reverse) is an error that
    lists the setting's algorithms; the reference itself is left out.
    """
    if names is None:
        return setting.defaults()
    available = setting.available()
    unknown = [name for name in names if name not in available and name != setting.reference.name]
    if unknown:
        raise ValueError(
            f"setting {setting.name!r} times against {setting.reference.algorithm_class.__name__} and measures "
            f"{sorted(available)}; not {unknown}"
        )
    return [name for name in names if name != setting.reference.name]


def _build(name: str, setting: CostSetting, env: VecEnv) -> OnPolicyAlgorithm:
    algorithm = setting.reference if name == setting.reference.name else setting.available()[name]
    model = algorithm.build(setting.policy, env, seed=SEED, device="cpu", **setting.hyperparameters)
    model.set_logger(configure(folder=None, format_strings=[]))
    return model


class TrainSnapshot:
    """Everything one ``train()`` call reads or changes, so the call can be repeated identically."""

    def __init__(self, model: OnPolicyAlgorithm):
        self.model = model
        self.policy_state = copy.deepcopy(model.policy.state_dict())
        self.optimizer_state = copy.deepcopy(model.policy.optimizer.state_dict())
        self.attributes = {
            name: copy.deepcopy(getattr(model, name))
            for name in ("kl_coef", "_pseudo_entropy_average", "_n_updates")
            if hasattr(model, name)
        }

    def restore(self) -> None:
        self.model.policy.load_state_dict(self.policy_state)
        self.model.policy.optimizer.load_state_dict(self.optimizer_state)
        for name, value in self.attributes.items():
            setattr(self.model, name, copy.deepcopy(value))
        # the buffers draw their minibatch permutation (RecurrentPPO's: its split point) from NumPy's global state
        np.random.seed(SEED)  # noqa: NPY002
        th.manual_seed(SEED)


def _timed(function: Callable[[], Any]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def collect_rollout(model: OnPolicyAlgorithm) -> None:
    """Fill the model's buffer with one rollout from the seeded environment and torch random state.

    Models built from the same seed have the same weights, so every algorithm collects the same
    rollout, through its own collection code (a variant may record extra data while collecting;
    MaskablePPO's collects with the environment's action masks, RecurrentPPO's carries the LSTM states).
    """
    env = model.get_env()
    assert env is not None
    env.seed(SEED)
    th.manual_seed(SEED)
    np.random.seed(SEED)  # noqa: NPY002  # InvalidActionEnvDiscrete draws its invalid actions from it
    _, callback = model._setup_learn(model.n_steps * model.n_envs, callback=None)
    model.collect_rollouts(env, callback, model.rollout_buffer, n_rollout_steps=model.n_steps)


def check_same_rollouts(models: dict[str, OnPolicyAlgorithm], reference: str) -> list[str]:
    """Raise unless every model's buffer holds the reference's rollout; return the fields compared.

    The common fields always; the action masks and LSTM states where the reference's buffer has them.
    """
    expected = models[reference].rollout_buffer
    fields = [*ROLLOUT_FIELDS, *(name for name in EXTRA_ROLLOUT_FIELDS if hasattr(expected, name))]
    for name, model in models.items():
        for field_name in fields:
            value = getattr(model.rollout_buffer, field_name, None)
            if value is None or not np.array_equal(value, getattr(expected, field_name)):
                raise RuntimeError(
                    f"{name} collected a different rollout from {reference} ({field_name}); "
                    "the timings would not compare"
                )
    return fields


def measure_train(setting: CostSetting, algorithms: list[str], repeats: int) -> list[dict[str, Any]]:
    """Paired ``train()`` timings on one shared rollout; one row per timed pair."""
    reference = setting.reference.name
    # a fresh environment each: Atari's EpisodicLifeEnv ignores the reset seed in the middle of an episode
    models = {name: _build(name, setting, setting.make_env()) for name in [reference, *algorithms]}
    for model in models.values():
        collect_rollout(model)
    check_same_rollouts(models, reference)
    snapshots = {}
    for name, model in models.items():
        snapshot = TrainSnapshot(model)
        model.train()  # warm-up: flattens the buffer, allocates optimizer state and autograd caches
        snapshot.restore()
        snapshots[name] = snapshot

    def time_train(name: str) -> float:
        snapshots[name].restore()
        return _timed(models[name].train)

    rows = []
    for repeat in range(repeats):
        for name in algorithms:
            order = [reference, name] if (repeat + algorithms.index(name)) % 2 == 0 else [name, reference]
            seconds = {label: time_train(label) for label in order}
            rows.append(_row(setting, "train", repeat, name, seconds[reference], seconds[name]))
    for model in models.values():
        env = model.get_env()
        if env is not None:
            env.close()
    return rows


def measure_learn(
    setting: CostSetting, algorithms: list[str], repeats: int, timesteps: int, env: VecEnv
) -> list[dict[str, Any]]:
    """Paired ``learn()`` timings from freshly built models; one row per timed pair."""

    def time_learn(name: str) -> float:
        model = _build(name, setting, env)
        return _timed(lambda: model.learn(total_timesteps=timesteps))

    reference = setting.reference.name
    time_learn(reference)  # warm-up: environment and allocator caches
    rows = []
    for repeat in range(repeats):
        for name in algorithms:
            order = [reference, name] if (repeat + algorithms.index(name)) % 2 == 0 else [name, reference]
            seconds = {label: time_learn(label) for label in order}
            rows.append(_row(setting, "learn", repeat, name, seconds[reference], seconds[name], timesteps))
    return rows


def _row(
    setting: CostSetting, measure: str, repeat: int, name: str, reference: float, variant: float, timesteps: int = 0
) -> dict[str, Any]:
    return {
        "setting": setting.name,
        "measure": measure,
        "repeat": repeat,
        "algorithm": name,
        "reference": setting.reference.name,
        "reference_seconds": round(reference, 5),
        "variant_seconds": round(variant, 5),
        "ratio": round(variant / reference, 5),
        "timesteps": timesteps,
        "threads": th.get_num_threads(),
    }


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median ratio and its interquartile range per setting, measure and algorithm."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["setting"], row["measure"], row["algorithm"]), []).append(row)
    summary = []
    for (setting, measure, name), group in groups.items():
        ratios = [row["ratio"] for row in group]
        quartiles = np.percentile(ratios, [25, 75])
        reference = statistics.median(row["reference_seconds"] for row in group)
        variant = statistics.median(row["variant_seconds"] for row in group)
        entry = {
            "setting": setting,
            "measure": measure,
            "algorithm": name,
            "reference": group[0]["reference"],
            "median_ratio": round(statistics.median(ratios), 4),
            "ratio_q25": round(float(quartiles[0]), 4),
            "ratio_q75": round(float(quartiles[1]), 4),
            "pairs": len(group),
            "reference_median_seconds": round(reference, 4),
            "variant_median_seconds": round(variant, 4),
            "threads": group[0]["threads"],
        }
        if measure == "learn":
            timesteps = group[0]["timesteps"]
            entry["reference_fps"] = round(timesteps / reference, 1)
            entry["variant_fps"] = round(timesteps / variant, 1)
        summary.append(entry)
    return summary


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def write_results(
    output: Path,
    plots_directory: Path,
    rows: list[dict[str, Any]],
    settings_used: dict[str, Any],
    plot_name: str = "cost",
) -> list[dict[str, Any]]:
    """Write ``cost_raw.csv``, ``cost.csv``, ``cost_provenance.json`` and ``<plot_name>.png``; return the summary."""
    summary = summarise(rows)
    (output / "cost_provenance.json").write_text(json.dumps({**provenance(), "settings": settings_used}, indent=2))
    _write_csv(output / "cost_raw.csv", rows)
    _write_csv(output / "cost.csv", summary)
    plot_cost(summary, plots_directory / f"{plot_name}.png")
    return summary


def run_cost_benchmark(
    output: Path,
    settings: list[str],
    algorithms: list[str] | None,
    repeats: list[int],
    fps_repeats: list[int],
    fps_timesteps: int | None = None,
    threads: list[int] | None = None,
    plots_directory: Path | None = None,
    plot_name: str = "cost",
) -> list[dict[str, Any]]:
    """Measure every setting; write ``cost_raw.csv`` and ``cost.csv`` into ``output``, ``<plot_name>.png`` into
    ``plots_directory`` (default ``output``). The files are rewritten after each setting.

    ``algorithms`` (``None``: each setting's defaults) must all be measurable on every setting (``algorithms_for``).
    ``repeats``, ``fps_repeats`` and ``threads`` give one value per setting, in order (the last one is reused).
    """

    def for_setting(values: list[int], index: int) -> int:
        return values[min(index, len(values) - 1)]

    plots_directory = plots_directory or output
    output.mkdir(parents=True, exist_ok=True)
    plots_directory.mkdir(parents=True, exist_ok=True)
    chosen = {name: algorithms_for(COST_SETTINGS[name], algorithms) for name in settings}  # every error first
    rows: list[dict[str, Any]] = []
    settings_used: dict[str, Any] = {}
    summary: list[dict[str, Any]] = []
    for index, name in enumerate(settings):
        setting = COST_SETTINGS[name]
        th.set_num_threads(for_setting(threads, index) if threads else setting.default_threads)
        start = time.perf_counter()
        rows += measure_train(setting, chosen[name], for_setting(repeats, index))
        if for_setting(fps_repeats, index) > 0:
            env = setting.make_env()
            timesteps = fps_timesteps or setting.fps_timesteps
            rows += measure_learn(setting, chosen[name], for_setting(fps_repeats, index), timesteps, env)
            env.close()
        settings_used[name] = {
            "description": setting.description,
            "reference": setting.reference.algorithm_class.__name__,
            "torch_threads": th.get_num_threads(),
        }
        print(f"cost {name}: {time.perf_counter() - start:.0f} s with {th.get_num_threads()} torch threads", flush=True)
        summary = write_results(output, plots_directory, rows, settings_used, plot_name)
    for entry in summary:
        print(
            f"{entry['setting']:>9} {entry['measure']:>5} {entry['algorithm']:>17} / {entry['reference']}: "
            f"×{entry['median_ratio']:.3f} [{entry['ratio_q25']:.3f}, {entry['ratio_q75']:.3f}]",
            flush=True,
        )
    return summary
