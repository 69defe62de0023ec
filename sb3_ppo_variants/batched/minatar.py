"""MinAtar games for many agents: MinAtar's own environments, one per sub-environment, stepped in turn.

MinAtar's dynamics (Young & Tian 2019) are the ``minatar`` package's own, sticky actions and difficulty ramping
included; this module only gathers many of its gymnasium environments (``MinAtar/<Game>-v0`` and ``-v1``, the
latter with the game's minimal action set) into one vector, with the conventions of the batched engine's
``CartPoleAgents`` and SB3's ``VecEnv``: a finished episode restarts within the same step, the returned
observation is the new episode's first and the last one is in ``info["final_observation"]``. Sub-environment
``i`` is seeded once, at its first reset, with ``seeds[i]``, as SB3's ``make_vec_env`` seeds the SB3 runner's;
its episodes then depend on its own random stream only, whatever shares the vector. Observations are the
channel-last ``(10, 10, C)`` grids as float32 (0 or 1), the values ``policies.MinAtarCNN`` computes with.
MinAtar registers no time limit, and none is added unless ``max_episode_steps`` asks for one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

MINATAR_GAMES = ("Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders")
MINATAR_IDS = tuple(f"MinAtar/{game}-{version}" for game in MINATAR_GAMES for version in ("v0", "v1"))
"""The gymnasium ids of ``minatar.gym.register_envs``."""


class MinAtarAgents(VectorEnv):
    """One MinAtar game per seed, for many agents; see the module docstring for the semantics.

    :param env_id: one of ``MINATAR_IDS``.
    :param seeds: one seed per sub-environment.
    :param max_episode_steps: steps before an episode is truncated; ``None`` (MinAtar's registration): never.
    :raises ValueError: for another id, or when the ``minatar`` package (the ``bench`` extra) is missing.
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.SAME_STEP}  # noqa: RUF012 (VectorEnv's attribute)

    def __init__(self, env_id: str, seeds: Sequence[int], max_episode_steps: int | None = None) -> None:
        if env_id not in MINATAR_IDS:
            raise ValueError(f"env_id must be one of {', '.join(MINATAR_IDS)}, got {env_id!r}")
        if max_episode_steps is not None and max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be None or an int >= 1, got {max_episode_steps!r}")
        from sb3_ppo_variants.benchmark.runs import register_minatar

        register_minatar()
        if env_id not in gym.registry:
            raise ValueError(f"{env_id} needs the minatar package: pip install 'sb3-ppo-variants[bench]'")
        self.envs = [gym.make(env_id, disable_env_checker=True).unwrapped for _ in seeds]
        self.seeds: list[int | None] = [int(seed) for seed in seeds]
        self.num_envs = len(self.envs)
        self.max_episode_steps = max_episode_steps
        first = self.envs[0]
        shape = first.observation_space.shape
        assert shape is not None
        self.single_observation_space = spaces.Box(0.0, 1.0, shape=shape, dtype=np.float32)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.single_action_space = first.action_space
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.steps = np.zeros(self.num_envs, dtype=np.int64)

    def _reset(self, index: int) -> np.ndarray:
        seed, self.seeds[index] = self.seeds[index], None  # seeded once, then the environment's own stream
        self.steps[index] = 0
        return np.asarray(self.envs[index].reset(seed=seed)[0])

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start every sub-environment's episode (the first reset seeds each with its own seed)."""
        if seed is not None:
            self.seeds = [seed + index for index in range(self.num_envs)]
        return np.stack([self._reset(index) for index in range(self.num_envs)]).astype(np.float32), {}

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        actions = np.asarray(actions)
        n_actions = int(self.single_action_space.n)  # type: ignore[attr-defined]
        if actions.shape != (self.num_envs,) or ((actions < 0) | (actions >= n_actions)).any():
            raise ValueError(f"actions must be {self.num_envs} values in [0, {n_actions}), got {actions!r}")
        shape = self.single_observation_space.shape
        assert shape is not None
        observations = np.empty((self.num_envs, *shape), dtype=np.float32)
        final = np.empty_like(observations)
        rewards = np.empty(self.num_envs)
        terminated = np.empty(self.num_envs, dtype=bool)
        self.steps += 1
        truncated = np.zeros(self.num_envs, dtype=bool)
        if self.max_episode_steps is not None:
            truncated = self.steps >= self.max_episode_steps
        for index, (env, action) in enumerate(zip(self.envs, actions.tolist(), strict=True)):
            observation, rewards[index], terminated[index], _, _ = env.step(action)
            final[index] = observation
            if terminated[index] or truncated[index]:
                observation = self._reset(index)
            observations[index] = observation
        return observations, rewards, terminated, truncated, {"final_observation": final}
