"""A collapse forced on demand, shared by the CollapseMonitor and collapse-report tests.

The observation is a sign ``±1`` and the rewarded action is ``obs > 0``, until a switch
flips it to ``obs < 0``. A policy that learned the first rule then scores 0 per episode,
worse than the 5 of a random policy, from one step to the next.
"""

from __future__ import annotations

import os
from pathlib import Path

import gymnasium as gym
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

REPO_ROOT = Path(__file__).resolve().parents[1]
EPISODE_LENGTH = 10


class RewardSwitch:
    """Shared by the training and evaluation envs, flipped by :class:`FlipRewardAt`."""

    def __init__(self) -> None:
        self.flipped = False


class FlipEnv(gym.Env):
    """Reward 1 when the action is ``obs > 0`` (``obs < 0`` once flipped), 0 otherwise."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, switch: RewardSwitch):
        self.switch = switch
        self._t = 0
        self._obs = np.ones(1, np.float32)

    def _draw(self) -> np.ndarray:
        self._obs = np.array([self.np_random.choice([-1.0, 1.0])], np.float32)
        return self._obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return self._draw(), {}

    def step(self, action):
        self._t += 1
        rewarded = int(self._obs[0] > 0) ^ int(self.switch.flipped)
        reward = 1.0 if int(action) == rewarded else 0.0
        return self._draw(), reward, False, self._t >= EPISODE_LENGTH, {}


class FlipRewardAt(BaseCallback):
    """Flips the switch on the first step after ``timesteps``."""

    def __init__(self, switch: RewardSwitch, timesteps: int):
        super().__init__()
        self.switch = switch
        self.timesteps = timesteps

    def _on_step(self) -> bool:
        if self.num_timesteps > self.timesteps:
            self.switch.flipped = True
        return True


def make_env(switch: RewardSwitch, seed: int = 0, monitor_file: str | None = None) -> DummyVecEnv:
    def build() -> gym.Env:
        env = Monitor(FlipEnv(switch), filename=monitor_file)
        env.reset(seed=seed)
        return env

    return DummyVecEnv([build])


def checkout_environment() -> dict[str, str]:
    """The environment for a subprocess that imports the package from this checkout, installed or not."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
