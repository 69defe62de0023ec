"""Check the zoo's merged hyperparameters against the algorithm before rl-zoo3 creates its run folder.

rl-zoo3 reads ``hyperparams/<algo>.yml``, applies ``--hyperparams``, creates ``logs/<algo>/<env>_<n>/`` and
only then constructs the model, so a bad option value would end in a long traceback from inside the zoo
and a half-written run folder. The registration wraps ``ExperimentManager._preprocess_hyperparams`` (the
step that turns the merged yml + command line into constructor arguments, just before the folder is made)
and calls :func:`check_constructor_arguments` on its result. The algorithm is constructed exactly as the
zoo will construct it, but on a stand-in environment with the real environment's spaces and without
building its networks (``_init_setup_model=False``), so the check costs one ``gym.make``.
"""

import warnings
from collections.abc import Callable
from typing import Any

import gymnasium as gym
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import DummyVecEnv


class InvalidHyperparameters(SystemExit):
    """Ends the zoo command with the algorithm's own message and exit status 1, without a traceback."""


class _SpacesOnlyEnv(gym.Env):
    """Has the spaces of the real environment and nothing else; never stepped."""

    def __init__(self, observation_space: gym.Space, action_space: gym.Space) -> None:
        self.observation_space = observation_space
        self.action_space = action_space

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # pragma: no cover - never called
        raise RuntimeError("the stand-in environment only carries spaces")

    def step(self, action):  # pragma: no cover - never called
        raise RuntimeError("the stand-in environment only carries spaces")


def environment_spaces(
    env_id: str, env_kwargs: dict[str, Any] | None = None, env_wrapper: Callable[[gym.Env], gym.Env] | None = None
) -> tuple[gym.Space, gym.Space]:
    """Observation and action space of ``env_id`` as the zoo builds it (before vectorisation)."""
    env = gym.make(env_id, **(env_kwargs or {}))
    try:
        if env_wrapper is not None:
            env = env_wrapper(env)
        return env.observation_space, env.action_space
    finally:
        env.close()


def check_constructor_arguments(
    algorithm: type[BaseAlgorithm],
    hyperparams: dict[str, Any],
    observation_space: gym.Space,
    action_space: gym.Space,
    n_envs: int = 1,
) -> None:
    """Construct ``algorithm`` with ``hyperparams`` (policy included) without building its networks.

    Raises what the constructor raises: ``ValueError`` for a value that is not allowed, ``TypeError`` for an
    unknown argument, ``AssertionError`` for SB3's own checks.
    """
    kwargs = dict(hyperparams)
    policy = kwargs.pop("policy", None)
    if policy is None:
        raise TypeError(f"{algorithm.__name__} needs a 'policy' entry (e.g. 'MlpPolicy')")
    env = DummyVecEnv([lambda: _SpacesOnlyEnv(observation_space, action_space)] * max(int(n_envs), 1))
    with warnings.catch_warnings():
        # the zoo constructs the real model right after and shows its warnings then
        warnings.simplefilter("ignore")
        algorithm(policy, env, **kwargs, _init_setup_model=False)  # type: ignore[call-arg]


def validate_or_exit(
    algorithm: type[BaseAlgorithm],
    hyperparams: dict[str, Any],
    *,
    algo_id: str,
    env_id: str,
    source: str,
    env_kwargs: dict[str, Any] | None = None,
    env_wrapper: Callable[[gym.Env], gym.Env] | None = None,
    n_envs: int = 1,
) -> None:
    """Run :func:`check_constructor_arguments`; on a rejected value, exit with the algorithm's message."""
    try:
        observation_space, action_space = environment_spaces(env_id, env_kwargs, env_wrapper)
    except Exception:
        # the zoo will fail on this environment in its own words
        return
    try:
        check_constructor_arguments(algorithm, hyperparams, observation_space, action_space, n_envs)
    except (ValueError, TypeError, AssertionError) as exc:
        raise InvalidHyperparameters(
            f"Invalid hyperparameters for {algo_id} ({algorithm.__name__}) on {env_id}, from {source}:\n{exc}"
        ) from None
