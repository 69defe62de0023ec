"""The benchmark tasks: environment, shared hyperparameters, budget and reference scores.

Hyperparameters are rl-zoo3's ``ppo.yml`` entries for each environment (its ``atari`` entry,
with an MLP, for MinAtar), so every algorithm trains with the same, independently tuned values,
with one change: the clip range is constant. The zoo's ``lin_`` clip range reaches 0 at the end
of training, which the logit-space target (``0 < ε < 1``) and SPO (``ε > 0``) reject.
Budgets are far below the zoo's ``n_timesteps``: they are what a 2-core CPU can afford
for 7 algorithms × 5 seeds, and the results say so.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from stable_baselines3.common.utils import LinearSchedule

from sb3_ppo_variants.policies import MinAtarCNN, MlpTrunk


def linear(initial_value: float) -> LinearSchedule:
    """rl-zoo3's ``lin_<value>``: decays linearly from ``initial_value`` to 0 over training."""
    return LinearSchedule(initial_value, 0.0, 1.0)


@dataclass(frozen=True)
class Task:
    """One benchmark environment.

    :param env_id: gymnasium id
    :param hyperparameters: constructor arguments shared by every algorithm; ``learning_rate`` is a float
        (its schedule is set by ``linear_learning_rate``) so a step-size sweep can scale it
    :param linear_learning_rate: whether the learning rate decays linearly to 0 (the zoo's ``lin_``)
    :param timesteps: environment steps per run
    :param eval_every: environment steps between evaluations
    :param random_score: mean return of the uniform random policy over 100 episodes (reset seeds 0–99)
    :param max_score: best achievable (or a good reference) return, for normalised scores
    :param threshold: return that counts as solved for the time-to-threshold table
    :param n_envs: parallel training environments
    :param normalize: wrap the training environments in ``VecNormalize`` (the zoo's ``normalize: true``)
    :param policy: SB3 policy name
    """

    env_id: str
    hyperparameters: dict[str, Any]
    linear_learning_rate: bool
    timesteps: int
    eval_every: int
    random_score: float
    max_score: float
    threshold: float
    n_envs: int
    normalize: bool = False
    policy: str = "MlpPolicy"
    env_kwargs: dict[str, Any] = field(default_factory=dict)

    def algorithm_hyperparameters(self, learning_rate_scale: float = 1.0) -> dict[str, Any]:
        """Constructor arguments with the learning rate multiplied by ``learning_rate_scale``."""
        hyperparameters = dict(self.hyperparameters)
        learning_rate = hyperparameters["learning_rate"] * learning_rate_scale
        hyperparameters["learning_rate"] = linear(learning_rate) if self.linear_learning_rate else learning_rate
        return hyperparameters


TASKS: dict[str, Task] = {
    "CartPole-v1": Task(
        env_id="CartPole-v1",
        n_envs=8,
        hyperparameters=dict(
            n_steps=32,
            batch_size=256,
            gae_lambda=0.8,
            gamma=0.98,
            n_epochs=20,
            ent_coef=0.0,
            learning_rate=1e-3,
            clip_range=0.2,
        ),
        # constant, not the zoo's lin_1e-3: a schedule that decays to 0 hides the step-size effect the sweep measures
        linear_learning_rate=False,
        timesteps=40_000,
        eval_every=2_500,
        random_score=23.7,
        max_score=500.0,
        threshold=475.0,
    ),
    "Acrobot-v1": Task(
        env_id="Acrobot-v1",
        n_envs=16,
        normalize=True,
        hyperparameters=dict(
            n_steps=256, gae_lambda=0.94, gamma=0.99, n_epochs=4, ent_coef=0.0, learning_rate=3e-4, clip_range=0.2
        ),
        linear_learning_rate=False,
        timesteps=49_152,
        eval_every=4_096,
        random_score=-497.1,
        max_score=-60.0,
        threshold=-100.0,
    ),
    "LunarLander-v3": Task(
        env_id="LunarLander-v3",
        n_envs=16,
        hyperparameters=dict(
            n_steps=1024,
            batch_size=64,
            gae_lambda=0.98,
            gamma=0.999,
            n_epochs=4,
            ent_coef=0.01,
            learning_rate=3e-4,
            clip_range=0.2,
        ),
        linear_learning_rate=False,
        timesteps=65_536,
        eval_every=16_384,
        random_score=-192.0,
        max_score=250.0,
        threshold=0.0,
    ),
    "MinAtar/Breakout-v1": Task(
        env_id="MinAtar/Breakout-v1",
        n_envs=8,
        hyperparameters=dict(
            n_steps=128,
            n_epochs=4,
            batch_size=256,
            learning_rate=2.5e-4,
            clip_range=0.1,
            vf_coef=0.5,
            ent_coef=0.01,
        ),
        linear_learning_rate=True,
        timesteps=102_400,
        eval_every=10_240,
        random_score=0.4,
        max_score=30.0,
        threshold=5.0,
    ),
}


LEARNING_TASKS: tuple[str, ...] = tuple(TASKS)
"""The learning benchmark's tasks, ``learn``'s default."""


# MinAtar Breakout with the shared CNN of the MinAtar paper (policies.MinAtarCNN, linear heads), the batched
# engine's image task; otherwise the MLP task's values
TASKS["MinAtar/Breakout-v1-cnn"] = replace(
    TASKS["MinAtar/Breakout-v1"],
    hyperparameters={
        **TASKS["MinAtar/Breakout-v1"].hyperparameters,
        "policy_kwargs": dict(features_extractor_class=MinAtarCNN, net_arch=[]),
    },
)


# The collapse pilot (docs/benchmarks.md): classic control at large constant step sizes, several epochs of
# small minibatches, long budgets, with separate actor and critic (SB3's MlpPolicy) or a shared 64-64 trunk.
# The learning rate is a base of 1e-3 that ``--lr-scales`` multiplies (3 → 3e-3, 10 → 1e-2).
PILOT_HYPERPARAMETERS: dict[str, Any] = dict(
    n_steps=128,
    batch_size=64,
    n_epochs=10,
    gamma=0.99,
    gae_lambda=0.95,
    ent_coef=0.0,
    learning_rate=1e-3,
    clip_range=0.2,
)
SHARED_TRUNK: dict[str, Any] = dict(
    features_extractor_class=MlpTrunk, features_extractor_kwargs=dict(hidden_sizes=(64, 64)), net_arch=[]
)


# rl-zoo3's CartPole-v1 rollout shape (8 envs × 32 steps, one minibatch of 256, 20 epochs), the pilot's second shape
ZOO_ROLLOUT_SHAPE: dict[str, Any] = dict(n_steps=32, batch_size=256, n_epochs=20)


def _pilot(
    env_id: str,
    shared: bool,
    random_score: float,
    max_score: float,
    threshold: float,
    shape: dict[str, Any] | None = None,
    n_envs: int = 8,
) -> Task:
    hyperparameters = {**PILOT_HYPERPARAMETERS, **(shape or {})}
    if shared:
        hyperparameters["policy_kwargs"] = SHARED_TRUNK
    return Task(
        env_id=env_id,
        n_envs=n_envs,
        hyperparameters=hyperparameters,
        linear_learning_rate=False,
        timesteps=300_000,
        eval_every=10_000,
        random_score=random_score,
        max_score=max_score,
        threshold=threshold,
    )


_CARTPOLE_SCORES = (23.7, 500.0, 475.0)
_ACROBOT_SCORES = (-497.1, -60.0, -100.0)
TASKS.update(
    {
        "pilot/CartPole-v1-separate": _pilot("CartPole-v1", False, *_CARTPOLE_SCORES),
        "pilot/CartPole-v1-shared": _pilot("CartPole-v1", True, *_CARTPOLE_SCORES),
        "pilot/Acrobot-v1-separate": _pilot("Acrobot-v1", False, *_ACROBOT_SCORES),
        "pilot/Acrobot-v1-shared": _pilot("Acrobot-v1", True, *_ACROBOT_SCORES),
        # the extension's pilot (docs/benchmarks.md, 2026-12-01): the same four in rl-zoo3's CartPole shape
        "pilot/CartPole-v1-separate-zoo": _pilot("CartPole-v1", False, *_CARTPOLE_SCORES, shape=ZOO_ROLLOUT_SHAPE),
        "pilot/CartPole-v1-shared-zoo": _pilot("CartPole-v1", True, *_CARTPOLE_SCORES, shape=ZOO_ROLLOUT_SHAPE),
        "pilot/Acrobot-v1-separate-zoo": _pilot("Acrobot-v1", False, *_ACROBOT_SCORES, shape=ZOO_ROLLOUT_SHAPE),
        "pilot/Acrobot-v1-shared-zoo": _pilot("Acrobot-v1", True, *_ACROBOT_SCORES, shape=ZOO_ROLLOUT_SHAPE),
    }
)

# SB3's own PPO rollout shape (one env × 2048 steps, minibatches of 64, 10 epochs: ``PPO("MlpPolicy", env)``'s
# defaults), the pilot's third shape (docs/benchmarks.md, third amendment of 2026-12-07)
SB3_ROLLOUT_SHAPE: dict[str, Any] = dict(n_steps=2048, batch_size=64, n_epochs=10)
TASKS.update(
    {
        f"pilot/{env_id}-{trunk}-2048": _pilot(env_id, trunk == "shared", *scores, shape=SB3_ROLLOUT_SHAPE, n_envs=1)
        for env_id, scores in (("CartPole-v1", _CARTPOLE_SCORES), ("Acrobot-v1", _ACROBOT_SCORES))
        for trunk in ("separate", "shared")
    }
)


# the extension's image candidate (docs/benchmarks.md, 2026-12-06): MinAtar Breakout with the shared CNN of
# ``MinAtar/Breakout-v1-cnn`` and its normalisation, in the pilot's two rollout shapes and its other values
_MINATAR_SCORES = (
    TASKS["MinAtar/Breakout-v1"].random_score,
    TASKS["MinAtar/Breakout-v1"].max_score,
    TASKS["MinAtar/Breakout-v1"].threshold,
)
_MINATAR_CNN: dict[str, Any] = dict(policy_kwargs=TASKS["MinAtar/Breakout-v1-cnn"].hyperparameters["policy_kwargs"])
TASKS.update(
    {
        "pilot/MinAtar-Breakout-v1-cnn": _pilot("MinAtar/Breakout-v1", False, *_MINATAR_SCORES, shape=_MINATAR_CNN),
        "pilot/MinAtar-Breakout-v1-cnn-zoo": _pilot(
            "MinAtar/Breakout-v1", False, *_MINATAR_SCORES, shape={**_MINATAR_CNN, **ZOO_ROLLOUT_SHAPE}
        ),
    }
)
