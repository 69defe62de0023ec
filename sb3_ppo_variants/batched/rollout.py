"""All agents' environments in one vector env, and GAE over stacked rollouts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv
from gymnasium.vector import VectorEnv

from sb3_ppo_variants.batched.acrobot import AcrobotAgents
from sb3_ppo_variants.batched.minatar import MINATAR_IDS, MinAtarAgents


class CartPoleAgents(CartPoleVectorEnv):
    """gymnasium's ``CartPoleVectorEnv`` for many agents, with SB3's ``VecEnv`` conventions.

    A finished episode restarts within the same step, as in SB3's ``DummyVecEnv``: the returned observation
    is the new episode's first, and the last one is in ``info["final_observation"]``. Each environment draws
    its initial states from its own generator, seeded from its agent's seed, so that an agent's episodes do
    not depend on which agents share the vector env. The physics is gymnasium's.

    :param seeds: one seed per environment.
    :param max_episode_steps: truncation, as ``CartPole-v1``'s ``TimeLimit``.
    """

    def __init__(self, seeds: Sequence[int], max_episode_steps: int = 500) -> None:
        super().__init__(num_envs=len(seeds), max_episode_steps=max_episode_steps)
        self.generators = [np.random.default_rng(seed) for seed in seeds]

    def _initial_states(self, environments: np.ndarray) -> None:
        assert self.state is not None
        for index in environments:
            self.state[:, index] = self.generators[index].uniform(low=self.low, high=self.high, size=4)
        self.steps[environments] = 0

    def _observations(self) -> np.ndarray:
        assert self.state is not None
        return self.state.T.astype(np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed, options=options)
        self._initial_states(np.arange(self.num_envs))
        return self._observations(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        observations, rewards, terminated, truncated, _ = super().step(action)
        done = terminated | truncated
        self.prev_done[:] = False  # the restart happens here, not at the next step
        self._initial_states(np.flatnonzero(done))
        return (
            self._observations(),
            rewards,
            terminated,
            truncated,
            {"final_observation": observations},
        )  # type: ignore[union-attr]


def agents_environment(env_id: str, seeds: Sequence[int], max_episode_steps: int | None = None) -> VectorEnv:
    """The vectorised environment of ``env_id`` with one sub-environment per seed, in SB3's ``VecEnv``
    conventions: ``CartPoleAgents``, ``acrobot.AcrobotAgents`` or ``minatar.MinAtarAgents``.

    :param max_episode_steps: truncation; ``None``: the gymnasium registration's (500 for ``CartPole-v1`` and
        ``Acrobot-v1``, none for MinAtar).
    :raises ValueError: for an id without a vectorised environment here (``AGENT_ENVIRONMENTS``).
    """
    if env_id in MINATAR_IDS:
        return MinAtarAgents(env_id, seeds, max_episode_steps)
    environments: dict[str, type[CartPoleAgents] | type[AcrobotAgents]] = {
        "CartPole-v1": CartPoleAgents,
        "Acrobot-v1": AcrobotAgents,
    }
    if env_id not in environments:
        raise ValueError(f"no vectorised {env_id} for the batched engine; it has {', '.join(AGENT_ENVIRONMENTS)}")
    if max_episode_steps is None:
        max_episode_steps = gym.spec(env_id).max_episode_steps
        assert max_episode_steps is not None
    return environments[env_id](seeds, max_episode_steps=max_episode_steps)


AGENT_ENVIRONMENTS = ("CartPole-v1", "Acrobot-v1", *MINATAR_IDS)
"""The gymnasium ids ``agents_environment`` builds (MinAtar's with the ``bench`` extra)."""


def generalized_advantages(
    rewards: th.Tensor,
    values: th.Tensor,
    episode_starts: th.Tensor,
    last_values: th.Tensor,
    last_dones: th.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[th.Tensor, th.Tensor]:
    """GAE(γ, λ) (Schulman et al. 2016) as SB3's ``RolloutBuffer.compute_returns_and_advantage`` computes it.

    Steps on the first axis, any batch shape after it. A truncated episode's bootstrap ``γ V(s_T)`` is
    already in its last reward (SB3's ``collect_rollouts``), so a done step cuts the sum.

    :param rewards: ``(T, ...)``.
    :param values: ``V(s_t)`` at collection, ``(T, ...)``.
    :param episode_starts: 1 where ``s_t`` starts an episode, ``(T, ...)``.
    :param last_values: ``V(s_T)`` after the last step.
    :param last_dones: 1 where the last step ended an episode.
    :param gamma: ``γ``.
    :param gae_lambda: ``λ``.
    :return: advantages and returns (``A + V``), ``(T, ...)``.
    """
    advantages = th.zeros_like(rewards)
    last_gae_lam = th.zeros_like(rewards[0])
    for step in reversed(range(len(rewards))):
        if step == len(rewards) - 1:
            next_non_terminal = 1.0 - last_dones
            next_values = last_values
        else:
            next_non_terminal = 1.0 - episode_starts[step + 1]
            next_values = values[step + 1]
        delta = rewards[step] + gamma * next_values * next_non_terminal - values[step]
        last_gae_lam = delta + gamma * gae_lambda * next_non_terminal * last_gae_lam
        advantages[step] = last_gae_lam
    return advantages, advantages + values
