"""MinAtar in the batched engine: the vector of MinAtar games against gymnasium's, the stacked MinAtarCNN against
SB3's policy, one update against VariantPPO.train(), agents independent, evaluation as the SB3 runner's."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from test_batched import UPDATE, _assert_one_update_matches

from sb3_ppo_variants import VariantPPO
from sb3_ppo_variants.batched import BatchedPPO, MinAtarAgents, StackedActorCritic, agents_environment
from sb3_ppo_variants.benchmark.batched_runs import batched_arms
from sb3_ppo_variants.benchmark.runs import evaluate, register_minatar
from sb3_ppo_variants.benchmark.tasks import TASKS
from sb3_ppo_variants.policies import MinAtarCNN

BREAKOUT = "MinAtar/Breakout-v1"
CNN = dict(features_extractor_class=MinAtarCNN, net_arch=[])
register_minatar()


def test_minatar_agents_step_as_minatars_environments_and_restart_in_the_same_step():
    seeds = [5, 6, 7]
    env = agents_environment(BREAKOUT, seeds)
    assert isinstance(env, MinAtarAgents) and env.single_observation_space.shape == (10, 10, 4)
    references = [gym.make(BREAKOUT) for _ in seeds]
    observations, _ = env.reset()
    expected = [reference.reset(seed=seed)[0] for reference, seed in zip(references, seeds, strict=True)]
    np.testing.assert_array_equal(observations, np.stack(expected).astype(np.float32))
    rng = np.random.default_rng(0)
    episodes = 0
    for _ in range(1500):
        actions = rng.integers(0, 3, size=3)
        observations, rewards, terminated, truncated, info = env.step(actions)
        assert observations.dtype == np.float32 and not truncated.any()  # MinAtar registers no time limit
        for index, reference in enumerate(references):
            observation, reward, ended, _, _ = reference.step(int(actions[index]))
            np.testing.assert_array_equal(info["final_observation"][index], observation)
            assert (rewards[index], terminated[index]) == (reward, ended)
            if ended:
                episodes += 1
                observation, _ = reference.reset()  # unseeded: the environment's own stream goes on
            np.testing.assert_array_equal(observations[index], observation)
    assert episodes > 10 and rewards.dtype == np.float64


def test_a_time_limit_truncates_only_when_asked():
    env = MinAtarAgents(BREAKOUT, [0, 1], max_episode_steps=3)
    env.reset()
    for _ in range(2):
        assert not env.step(np.zeros(2, dtype=np.int64))[3].any()
    observations, _, terminated, truncated, info = env.step(np.zeros(2, dtype=np.int64))
    assert truncated.all() and not terminated.any()
    assert not np.array_equal(info["final_observation"], observations)  # the next episode has begun


@pytest.mark.parametrize(
    ("arguments", "pattern"),
    [
        (dict(env_id="MinAtar/Pong-v1", seeds=[0]), "env_id must be one of MinAtar/Asterix-v0"),
        (dict(env_id=BREAKOUT, seeds=[0], max_episode_steps=0), "max_episode_steps must be None or an int >= 1"),
    ],
)
def test_bad_input(arguments, pattern):
    with pytest.raises(ValueError, match=pattern):
        MinAtarAgents(**arguments)
    env = MinAtarAgents(BREAKOUT, [0, 1])
    env.reset()
    with pytest.raises(ValueError, match=r"actions must be 2 values in \[0, 3\)"):
        env.step(np.array([0, 3]))


def test_the_cnn_network_is_sb3s_policy_with_minatar_cnn():
    models = [VariantPPO("MlpPolicy", BREAKOUT, seed=seed, policy_kwargs=CNN) for seed in (3, 4)]
    network = StackedActorCritic.from_policies([model.policy for model in models])
    assert network.conv_layers == ["features_extractor.conv.0"] and network.image_shape == (10, 10, 4)
    observations = th.rand(7, 10, 10, 4, generator=th.Generator().manual_seed(0)) > 0.7
    logits, values = network.forward(observations.float().reshape(1, 7, -1).expand(2, 7, 400))
    for agent, model in enumerate(models):
        with th.no_grad():
            distribution = model.policy.get_distribution(observations)
            expected_values = model.policy.predict_values(observations).flatten()
        th.testing.assert_close(logits[agent].log_softmax(-1), distribution.distribution.logits)
        th.testing.assert_close(values[agent], expected_values)
    initialised = StackedActorCritic.initialise(400, 3, [th.Generator().manual_seed(0)], image_shape=(10, 10, 4))
    assert {name: tensor.shape[1:] for name, tensor in initialised.parameters.items()} == {
        name: tensor.shape for name, tensor in network.agent_state_dict(0).items()
    }
    filters = initialised.parameters["features_extractor.conv.0.weight"][0].flatten(1)  # (16, 36): orthogonal rows
    th.testing.assert_close(filters @ filters.T, 2.0 * th.eye(16), atol=1e-5, rtol=1e-5)


def test_the_wide_layers_gradients_are_autograds_through_baddbmm():
    from sb3_ppo_variants.batched.network import _linear, _WideLinear

    generator = th.Generator().manual_seed(0)
    inputs, weight, bias = (
        th.randn(shape, generator=generator, requires_grad=True) for shape in ((3, 64, 1024), (3, 128, 1024), (3, 128))
    )
    upstream = th.randn(3, 64, 128, generator=generator)
    expected = th.autograd.grad((_linear(inputs, weight, bias) * upstream).sum(), (inputs, weight, bias))
    outputs = _WideLinear.apply(inputs, weight, bias)
    th.testing.assert_close(outputs, _linear(inputs, weight, bias), rtol=0, atol=0)
    gradients = th.autograd.grad((outputs * upstream).sum(), (inputs, weight, bias))
    for got, want, name in zip(gradients, expected, "xwb", strict=True):
        th.testing.assert_close(got, want, rtol=1e-6, atol=1e-5, msg=name)
    # observations need no gradient: only the parameters' are computed
    gradients = th.autograd.grad((_WideLinear.apply(inputs.detach(), weight, bias) * upstream).sum(), (weight, bias))
    th.testing.assert_close(gradients[0], expected[1], rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize(
    "options",
    [{}, dict(delta_target_policy="logit"), dict(value_grad_rescaling="per_state"), dict(feature_drift_coef=1.0)],
    ids=lambda options: "-".join(options) or "ppo",
)
def test_one_update_gives_variant_ppos_parameters(options):
    model = VariantPPO("MlpPolicy", BREAKOUT, seed=0, policy_kwargs=CNN, **UPDATE, **options)
    _assert_one_update_matches(model)


def test_a_minatar_agent_trains_the_same_alone_and_in_a_batch_and_is_evaluated_as_the_sb3_runner():
    th.set_num_threads(1)
    small = dict(env_id=BREAKOUT, shared_trunk=True, n_envs=2, n_steps=32, batch_size=32, n_epochs=2)
    batch = BatchedPPO([0, 1, 2], learning_rate=3e-3, **small).learn(2 * 64)
    alone = BatchedPPO([1], learning_rate=3e-3, **small).learn(2 * 64)
    assert "features_extractor.conv.0.weight" in alone.network.parameters
    for name, expected in alone.network.agent_state_dict(0).items():
        th.testing.assert_close(batch.network.agent_state_dict(1)[name], expected, rtol=1e-5, atol=1e-5, msg=name)
    assert batch.episode_returns[1] == alone.episode_returns[0]
    initial = BatchedPPO([1], learning_rate=3e-3, **small).network.agent_state_dict(0)["action_net.weight"]
    assert (alone.network.agent_state_dict(0)["action_net.weight"] - initial).abs().max() > 1e-4

    models = [VariantPPO("MlpPolicy", BREAKOUT, seed=seed, policy_kwargs=CNN) for seed in (5, 6)]
    trainer = BatchedPPO([5, 6], env_id=BREAKOUT, network=StackedActorCritic.from_policies([m.policy for m in models]))
    returns = trainer.evaluate()
    for agent, (model, seed) in enumerate(zip(models, (5, 6), strict=True)):
        assert returns[agent].tolist() == evaluate(model, TASKS["MinAtar/Breakout-v1-cnn"], seed)


def test_the_cnn_task_batches_and_other_image_networks_are_refused():
    arms = batched_arms(["MinAtar/Breakout-v1-cnn", "MinAtar/Breakout-v1"], ["ppo"])
    assert arms[("MinAtar/Breakout-v1-cnn", "ppo")].shared_trunk
    assert not arms[("MinAtar/Breakout-v1", "ppo")].shared_trunk  # the MLP task: SB3's MlpPolicy on the pixels
    from sb3_ppo_variants.benchmark.batched_runs import _network_refusal

    wider = VariantPPO("MlpPolicy", BREAKOUT, policy_kwargs=dict(CNN, features_extractor_kwargs=dict(n_filters=8)))
    reason, _ = _network_refusal(wider)
    assert reason is not None and "nor a shared MinAtarCNN (16 filters, 128 features" in reason
    from sb3_ppo_variants.policies import MlpTrunk

    relu = dict(features_extractor_class=MlpTrunk, features_extractor_kwargs=dict(activation_fn=th.nn.ReLU))
    reason, _ = _network_refusal(VariantPPO("MlpPolicy", "CartPole-v1", policy_kwargs=dict(relu, net_arch=[])))
    assert reason is not None and "ReLU layers; the batched engine stacks tanh MLPs and MinAtarCNN only" in reason
