"""Acrobot-v1 as one vectorised environment: every sub-environment stepped by the same NumPy operations.

The dynamics are gymnasium's ``AcrobotEnv`` (Sutton and Barto's book equations, fourth-order Runge–Kutta over
``dt = 0.2``, angles wrapped to ``[−π, π]``, velocities bounded at ``4π`` and ``9π``, reward −1 until the free
end is above the target height), written over arrays instead of one state; ``tests/test_batched_acrobot.py``
checks them step for step against ``AcrobotEnv``. Episodes are truncated after 500 steps, as ``Acrobot-v1``'s
``TimeLimit`` does.

The vector conventions are those of the batched engine's ``CartPoleAgents`` and SB3's ``VecEnv``
(``AutoresetMode.SAME_STEP``): a finished episode restarts within the same step, the returned observation is
the new episode's first and the last one is in ``info["final_observation"]``. Every sub-environment draws its
initial states from its own generator, seeded as ``gymnasium.make("Acrobot-v1").reset(seed=...)`` seeds one
environment, so a sub-environment's episodes do not depend on which others share the vector; that is what
lets many agents train in one batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

DT = 0.2
LINK_LENGTH_1 = 1.0
LINK_MASS_1 = 1.0
LINK_MASS_2 = 1.0
LINK_COM_POS_1 = 0.5
LINK_COM_POS_2 = 0.5
LINK_MOI = 1.0
MAX_VEL_1 = 4 * np.pi
MAX_VEL_2 = 9 * np.pi
GRAVITY = 9.8
TORQUES = np.array([-1.0, 0.0, 1.0])
MAX_EPISODE_STEPS = 500


def state_derivative(state: np.ndarray, torque: np.ndarray) -> np.ndarray:
    """``d/dt (θ1, θ2, θ̇1, θ̇2)`` of the book's equations for states of shape ``(4, n)`` and torques ``(n,)``."""
    theta1, theta2, dtheta1, dtheta2 = state
    m1, m2, l1, lc1, lc2 = LINK_MASS_1, LINK_MASS_2, LINK_LENGTH_1, LINK_COM_POS_1, LINK_COM_POS_2
    inertia_1 = inertia_2 = LINK_MOI
    d1 = m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * np.cos(theta2)) + inertia_1 + inertia_2
    d2 = m2 * (lc2**2 + l1 * lc2 * np.cos(theta2)) + inertia_2
    phi2 = m2 * lc2 * GRAVITY * np.cos(theta1 + theta2 - np.pi / 2.0)
    phi1 = (
        -m2 * l1 * lc2 * dtheta2**2 * np.sin(theta2)
        - 2 * m2 * l1 * lc2 * dtheta2 * dtheta1 * np.sin(theta2)
        + (m1 * lc1 + m2 * l1) * GRAVITY * np.cos(theta1 - np.pi / 2)
        + phi2
    )
    ddtheta2 = (torque + d2 / d1 * phi1 - m2 * l1 * lc2 * dtheta1**2 * np.sin(theta2) - phi2) / (
        m2 * lc2**2 + inertia_2 - d2**2 / d1
    )
    ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
    return np.stack((dtheta1, dtheta2, ddtheta1, ddtheta2))


def runge_kutta_step(state: np.ndarray, torque: np.ndarray, dt: float = DT) -> np.ndarray:
    """One fourth-order Runge–Kutta step of length ``dt`` (gymnasium's ``rk4`` over ``[0, dt]``)."""
    dt2 = dt / 2.0
    k1 = state_derivative(state, torque)
    k2 = state_derivative(state + dt2 * k1, torque)
    k3 = state_derivative(state + dt2 * k2, torque)
    k4 = state_derivative(state + dt * k3, torque)
    return state + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)


def wrap_angle(x: np.ndarray) -> np.ndarray:
    """Into ``[−π, π]`` by whole turns, as gymnasium's ``wrap`` does one value at a time."""
    x = x.copy()
    while (x > np.pi).any():
        x = np.where(x > np.pi, x - 2 * np.pi, x)
    while (x < -np.pi).any():
        x = np.where(x < -np.pi, x + 2 * np.pi, x)
    return x


def observation(state: np.ndarray) -> np.ndarray:
    """``(cos θ1, sin θ1, cos θ2, sin θ2, θ̇1, θ̇2)`` per sub-environment, float32, shape ``(n, 6)``."""
    theta1, theta2, dtheta1, dtheta2 = state
    return np.stack((np.cos(theta1), np.sin(theta1), np.cos(theta2), np.sin(theta2), dtheta1, dtheta2), axis=1).astype(
        np.float32
    )


class AcrobotVectorEnv(VectorEnv):
    """``num_envs`` Acrobot-v1 environments stepped together; see the module docstring for the semantics.

    :param num_envs: number of sub-environments
    :param max_episode_steps: steps before an episode is truncated (500 in Acrobot-v1)
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.SAME_STEP}  # noqa: RUF012 (VectorEnv's attribute)

    def __init__(self, num_envs: int = 1, max_episode_steps: int = MAX_EPISODE_STEPS) -> None:
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
        self.num_envs = num_envs
        self.max_episode_steps = max_episode_steps
        high = np.array([1.0, 1.0, 1.0, 1.0, MAX_VEL_1, MAX_VEL_2], dtype=np.float32)
        self.single_observation_space = spaces.Box(low=-high, high=high, dtype=np.float32)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.single_action_space = spaces.Discrete(3)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.state: np.ndarray | None = None  # (4, num_envs), float64
        self.steps = np.zeros(num_envs, dtype=np.int64)
        self.generators = [seeding.np_random(None)[0] for _ in range(num_envs)]

    def _initial_states(self, indices: np.ndarray) -> np.ndarray:
        # as AcrobotEnv.reset: four uniform draws in [−0.1, 0.1), stored as float32
        return np.stack(
            [self.generators[i].uniform(low=-0.1, high=0.1, size=(4,)).astype(np.float32) for i in indices], axis=1
        ).astype(np.float64)

    def reset(
        self, *, seed: int | Sequence[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset every sub-environment. ``seed``: an int seeds sub-environment ``i`` with ``seed + i`` (as
        gymnasium's ``SyncVectorEnv``), a sequence gives each its own seed; ``None`` keeps the generators."""
        if seed is not None:
            seeds = [seed + i for i in range(self.num_envs)] if isinstance(seed, int) else list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"seed must be an int or {self.num_envs} ints, got {len(seeds)}")
            self.generators = [seeding.np_random(int(s))[0] for s in seeds]
        self.state = self._initial_states(np.arange(self.num_envs))
        self.steps[:] = 0
        return observation(self.state), {}

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self.state is None:
            raise RuntimeError("call reset before step")
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,) or not np.isin(actions, (0, 1, 2)).all():
            raise ValueError(f"actions must be {self.num_envs} values in {{0, 1, 2}}, got {actions!r}")
        state = runge_kutta_step(self.state, TORQUES[actions])
        state[0] = wrap_angle(state[0])
        state[1] = wrap_angle(state[1])
        state[2] = np.clip(state[2], -MAX_VEL_1, MAX_VEL_1)
        state[3] = np.clip(state[3], -MAX_VEL_2, MAX_VEL_2)
        terminated = -np.cos(state[0]) - np.cos(state[1] + state[0]) > 1.0
        reward = np.where(terminated, 0.0, -1.0)
        self.steps += 1
        truncated = self.steps >= self.max_episode_steps

        final_observation = observation(state)
        # AutoresetMode.SAME_STEP: the sub-environments whose episode ended start the next one now
        ended = np.flatnonzero(terminated | truncated)
        if ended.size:
            state[:, ended] = self._initial_states(ended)
            self.steps[ended] = 0
        self.state = state
        return observation(state), reward, terminated, truncated, {"final_observation": final_observation}
