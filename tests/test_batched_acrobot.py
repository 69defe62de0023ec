"""The vectorised Acrobot against gymnasium's own ``AcrobotEnv``, step for step."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.classic_control.acrobot import AcrobotEnv

from sb3_ppo_variants.batched.acrobot import MAX_VEL_1, MAX_VEL_2, AcrobotVectorEnv


def test_one_step_from_any_state_is_gymnasiums():
    """Same states and actions, anywhere in the state space: same observations, rewards and terminations."""
    rng = np.random.default_rng(0)
    n = 2000
    states = np.stack(
        [
            rng.uniform(-np.pi, np.pi, n),
            rng.uniform(-np.pi, np.pi, n),
            rng.uniform(-MAX_VEL_1, MAX_VEL_1, n),
            rng.uniform(-MAX_VEL_2, MAX_VEL_2, n),
        ]
    )
    actions = rng.integers(0, 3, n)
    vector = AcrobotVectorEnv(n)
    vector.reset(seed=0)
    vector.state = states.copy()
    _, rewards, terminated, truncated, info = vector.step(actions)
    observations = info["final_observation"]
    single = AcrobotEnv()
    single.reset(seed=0)
    for i in range(n):
        single.state = states[:, i].copy()
        observation, reward, done, cut, _ = single.step(int(actions[i]))
        np.testing.assert_allclose(observations[i], observation, rtol=0, atol=1e-9)
        if not done:  # a finished episode has restarted within the step
            np.testing.assert_allclose(vector.state[:, i], single.state, rtol=0, atol=1e-9)
        assert rewards[i] == reward and terminated[i] == done and truncated[i] == cut
    assert terminated.any() and not terminated.all()  # both outcomes were compared


def test_episodes_from_the_same_seeds_are_gymnasiums_acrobot_v1():
    """Whole episodes, same-step restarts and the 500-step truncation of Acrobot-v1, under a policy that often
    reaches the goal (torque with the second joint's velocity) and a random one."""
    n, steps, seed = 6, 1300, 11
    vector = AcrobotVectorEnv(n)
    observations, _ = vector.reset(seed=seed)
    envs = [gym.make("Acrobot-v1") for _ in range(n)]
    expected = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])
    np.testing.assert_allclose(observations, expected, rtol=0, atol=1e-9)
    rng = np.random.default_rng(1)
    ends = {"terminated": 0, "truncated": 0}
    for _ in range(steps):
        swinging = np.where(observations[:, 5] > 0, 2, 0)
        actions = np.where(np.arange(n) < n // 2, swinging, rng.integers(0, 3, n))
        observations, rewards, terminated, truncated, info = vector.step(actions)
        for i, env in enumerate(envs):
            observation, reward, done, cut, _ = env.step(int(actions[i]))
            np.testing.assert_allclose(info["final_observation"][i], observation, rtol=0, atol=1e-9)
            assert (rewards[i], terminated[i], truncated[i]) == (reward, done, cut)
            if done or cut:  # SB3's convention: the next episode starts in the same step, from the same generator
                observation = env.reset()[0]
            np.testing.assert_allclose(observations[i], observation, rtol=0, atol=1e-9)
            ends["terminated"] += done
            ends["truncated"] += cut
    assert ends["terminated"] > 0 and ends["truncated"] > 0


def test_sub_environments_do_not_depend_on_their_neighbours():
    alone = AcrobotVectorEnv(1)
    together = AcrobotVectorEnv(4)
    first, _ = alone.reset(seed=[42])
    batch, _ = together.reset(seed=[7, 42, 8, 9])
    np.testing.assert_array_equal(first[0], batch[1])
    for _ in range(600):
        first, *_ = alone.step(np.array([2]))
        batch, *_ = together.step(np.array([0, 2, 1, 2]))
        np.testing.assert_array_equal(first[0], batch[1])


@pytest.mark.parametrize(
    ("kwargs", "actions", "pattern"),
    [
        (dict(num_envs=0), None, r"num_envs must be an int >= 1"),
        (dict(num_envs=2), np.array([0, 3]), r"actions must be 2 values in \{0, 1, 2\}"),
    ],
)
def test_bad_input(kwargs, actions, pattern):
    with pytest.raises(ValueError, match=pattern):
        env = AcrobotVectorEnv(**kwargs)
        env.reset(seed=0)
        env.step(actions)
