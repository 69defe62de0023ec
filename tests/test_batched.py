"""The batched trainer: each piece against SB3 and torch, one update against VariantPPO.train(), agents independent."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch as th
from gymnasium.envs.classic_control.cartpole import CartPoleEnv
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.logger import configure

from sb3_ppo_variants import VariantPPO
from sb3_ppo_variants.batched import (
    Arm,
    BatchedPPO,
    CartPoleAgents,
    StackedActorCritic,
    StackedAdam,
    StackedRollout,
    batched_settings,
    clip_grad_norms,
    generalized_advantages,
)
from sb3_ppo_variants.batched.network import tanh
from sb3_ppo_variants.batched.trainer import TRAIN_STATISTICS
from sb3_ppo_variants.benchmark.algorithms import ALGORITHMS
from sb3_ppo_variants.benchmark.tasks import SHARED_TRUNK
from sb3_ppo_variants.loss import LossOptions

th.set_num_threads(1)

SMALL = dict(n_steps=64, batch_size=32, n_epochs=3)


# --------------------------------------------------------------------------- pieces against SB3 and torch


def test_generalized_advantages_are_sb3s():
    rng = np.random.default_rng(0)
    n_steps, n_envs = 16, 3
    buffer = RolloutBuffer(
        n_steps, CartPoleEnv().observation_space, CartPoleEnv().action_space, gamma=0.97, gae_lambda=0.9, n_envs=n_envs
    )
    rewards = rng.normal(size=(n_steps, n_envs)).astype(np.float32)
    values = rng.normal(size=(n_steps, n_envs)).astype(np.float32)
    starts = (rng.random((n_steps, n_envs)) < 0.2).astype(np.float32)
    for step in range(n_steps):
        buffer.add(
            np.zeros((n_envs, 4), np.float32),
            np.zeros((n_envs, 1)),
            rewards[step],
            starts[step],
            th.as_tensor(values[step]),
            th.zeros(n_envs),
        )
    last_values, dones = th.as_tensor(rng.normal(size=n_envs).astype(np.float32)), np.array([True, False, True])
    buffer.compute_returns_and_advantage(last_values, dones)
    advantages, returns = generalized_advantages(
        th.as_tensor(rewards),
        th.as_tensor(values),
        th.as_tensor(starts),
        last_values,
        th.as_tensor(dones).float(),
        0.97,
        0.9,
    )
    np.testing.assert_allclose(advantages.numpy(), buffer.advantages, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(returns.numpy(), buffer.returns, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_stacked_adam_is_torch_adam_per_agent_with_its_learning_rate(compiled):
    generator = th.Generator().manual_seed(1)
    initial = th.randn(3, 5, 4, generator=generator)
    gradients = [th.randn(3, 5, 4, generator=generator) for _ in range(4)]
    rates = [1e-3, 3e-2, 0.5]
    stacked = initial.clone().requires_grad_(True)
    optimizer = StackedAdam([stacked], th.tensor(rates, dtype=th.float64), eps=1e-5, compiled=compiled)
    # the third agent sits out the second step, as an agent that stopped its epochs early
    actives = [th.tensor([True, True, agent_steps]) for agent_steps in (True, False, True, True)]
    for gradient, active in zip(gradients, actives, strict=True):
        stacked.grad = gradient.clone()
        optimizer.step(active)
    for agent, rate in enumerate(rates):
        single = initial[agent].clone().requires_grad_(True)
        reference = th.optim.Adam([single], lr=rate, eps=1e-5)
        for gradient, active in zip(gradients, actives, strict=True):
            if active[agent]:
                single.grad = gradient[agent].clone()
                reference.step()
        th.testing.assert_close(stacked[agent].detach(), single.detach(), rtol=1e-6, atol=1e-7)
        th.testing.assert_close(optimizer.exp_avg_sqs[0][agent], reference.state[single]["exp_avg_sq"])


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_an_inactive_agent_keeps_its_parameters_and_moments(compiled):
    stacked = th.ones(2, 3).requires_grad_(True)
    optimizer = StackedAdam([stacked], th.tensor([0.1, 0.1], dtype=th.float64), compiled=compiled)
    stacked.grad = th.ones(2, 3)
    optimizer.step(th.tensor([True, False]))
    assert th.equal(stacked[1].detach(), th.ones(3)) and not th.equal(stacked[0].detach(), th.ones(3))
    assert optimizer.steps.tolist() == [1.0, 0.0] and th.equal(optimizer.exp_avgs[0][1], th.zeros(3))


def test_gradient_norms_are_clipped_per_agent_as_torch_clips_them():
    generator = th.Generator().manual_seed(2)
    gradients = [
        th.randn(3, 4, 2, generator=generator) * th.tensor([0.01, 1.0, 10.0]).view(3, 1, 1),
        th.randn(3, 5, generator=generator) * th.tensor([0.01, 1.0, 10.0]).view(3, 1),
    ]
    clipped = [gradient.clone() for gradient in gradients]
    norms = clip_grad_norms(clipped, 0.5)
    for agent in range(3):
        parameters = [th.zeros_like(gradient[agent]).requires_grad_(True) for gradient in gradients]
        for parameter, gradient in zip(parameters, gradients, strict=True):
            parameter.grad = gradient[agent].clone()
        norm = th.nn.utils.clip_grad_norm_(parameters, 0.5)
        th.testing.assert_close(norms[agent], norm)
        for parameter, gradient in zip(parameters, clipped, strict=True):
            th.testing.assert_close(gradient[agent], parameter.grad)
    assert norms[0] < 0.5 < norms[2]  # the small one untouched, the large one scaled down


def test_the_hidden_activation_is_torchs_tanh_and_its_gradient():
    inputs = th.cat([th.linspace(-20.0, 20.0, 200_001), th.tensor([0.0, 1e-30, -1e-30, float("inf"), -float("inf")])])
    ours, reference = inputs.clone().requires_grad_(), inputs.clone().requires_grad_()
    outputs, expected = tanh(ours), th.tanh(reference)
    th.testing.assert_close(outputs, expected, rtol=0, atol=2.5e-7)
    assert outputs.abs().max() <= 1.0
    weights = th.randn(len(inputs), generator=th.Generator().manual_seed(0))
    (outputs * weights).sum().backward()
    (expected * weights).sum().backward()
    th.testing.assert_close(ours.grad, reference.grad, rtol=0, atol=2e-6)
    # without a gradient (rollouts, evaluations) the same values, bit for bit, without autograd's Function
    with th.no_grad():
        assert th.equal(tanh(inputs), outputs.detach())


@pytest.mark.parametrize(
    "shape", [(4, 64), (6, 64), (64, 64), (64, 2), (64, 1)], ids=lambda shape: "x".join(map(str, shape))
)
def test_every_linear_layer_has_autograds_gradients_whichever_orientation_computes_them(shape):
    """``dense``: the observation layers through autograd's ``baddbmm``, the 64-wide ones as ``gᵀ x``
    (``_WideLinear``), the same values; and without a gradient, ``_linear`` itself."""
    from sb3_ppo_variants.batched.network import WIDE_INPUTS, _linear, dense

    inputs_width, outputs_width = shape
    generator = th.Generator().manual_seed(0)
    inputs, weight, bias = (
        th.randn(size, generator=generator, requires_grad=True)
        for size in ((5, 64, inputs_width), (5, outputs_width, inputs_width), (5, outputs_width))
    )
    upstream = th.randn(5, 64, outputs_width, generator=generator)
    outputs = dense(inputs, weight, bias)
    wide = type(outputs.grad_fn).__name__ == "_WideLinearBackward"
    assert wide == (inputs_width >= WIDE_INPUTS)
    expected = th.autograd.grad((_linear(inputs, weight, bias) * upstream).sum(), (inputs, weight, bias))
    gradients = th.autograd.grad((outputs * upstream).sum(), (inputs, weight, bias))
    for got, want, name in zip(gradients, expected, "xwb", strict=True):
        th.testing.assert_close(got, want, rtol=1e-6, atol=1e-5, msg=name)
    with th.no_grad():
        assert th.equal(dense(inputs, weight, bias), _linear(inputs, weight, bias))


def test_initialisation_is_orthogonal_with_sb3s_gains_and_per_agent():
    generators = [th.Generator().manual_seed(seed) for seed in (5, 6)]
    network = StackedActorCritic.initialise(4, 2, generators)
    gains = {
        "mlp_extractor.policy_net.0": math.sqrt(2),
        "mlp_extractor.value_net.2": math.sqrt(2),
        "action_net": 0.01,
        "value_net": 1.0,
    }
    for layer, gain in gains.items():
        weight = network.parameters[f"{layer}.weight"][1]
        rows, columns = weight.shape
        gram = weight @ weight.T if rows <= columns else weight.T @ weight
        th.testing.assert_close(gram, gain**2 * th.eye(min(rows, columns)), atol=1e-5, rtol=1e-5)
        assert th.equal(network.parameters[f"{layer}.bias"], th.zeros_like(network.parameters[f"{layer}.bias"]))
    alone = StackedActorCritic.initialise(4, 2, [th.Generator().manual_seed(6)])
    for name, tensor in alone.parameters.items():
        assert th.equal(tensor[0], network.parameters[name][1]), name


def test_the_network_is_sb3s_mlp_policy():
    model = VariantPPO("MlpPolicy", "CartPole-v1", seed=3)
    network = StackedActorCritic.from_policies([model.policy, model.policy])
    observations = th.randn(7, 4, generator=th.Generator().manual_seed(0))
    logits, values = network.forward(observations.expand(2, 7, 4))
    with th.no_grad():
        distribution = model.policy.get_distribution(observations)
        expected_values = model.policy.predict_values(observations).flatten()
    th.testing.assert_close(logits[1] - logits[1].logsumexp(-1, keepdim=True), distribution.distribution.logits)
    th.testing.assert_close(values[0], expected_values)


def test_the_shared_trunk_network_is_sb3s_policy_with_mlp_trunk():
    model = VariantPPO("MlpPolicy", "CartPole-v1", seed=3, policy_kwargs=SHARED_TRUNK)
    network = StackedActorCritic.from_policies([model.policy])
    assert network.trunk_layers == ["features_extractor.trunk.1", "features_extractor.trunk.3"]
    assert network.actor_layers == network.critic_layers == []
    observations = th.randn(7, 4, generator=th.Generator().manual_seed(0))
    logits, values = network.forward(observations[None])
    with th.no_grad():
        distribution = model.policy.get_distribution(observations)
        expected_values = model.policy.predict_values(observations).flatten()
    th.testing.assert_close(logits[0] - logits[0].logsumexp(-1, keepdim=True), distribution.distribution.logits)
    th.testing.assert_close(values[0], expected_values)
    initialised = StackedActorCritic.initialise(4, 2, [th.Generator().manual_seed(0)], shared_trunk=True)
    assert {name: tensor.shape[1:] for name, tensor in initialised.parameters.items()} == {
        name: tensor.shape for name, tensor in network.agent_state_dict(0).items()
    }
    weight = initialised.parameters["features_extractor.trunk.3.weight"][0]
    th.testing.assert_close(weight @ weight.T, 2.0 * th.eye(64), atol=1e-5, rtol=1e-5)


def test_a_features_extractor_with_weights_must_be_shared():
    model = VariantPPO("MlpPolicy", "CartPole-v1", policy_kwargs=dict(SHARED_TRUNK, share_features_extractor=False))
    with pytest.raises(ValueError, match="must be shared by the actor and the critic"):
        StackedActorCritic.from_policies([model.policy])


def test_cartpole_agents_step_as_gymnasiums_cartpole_and_restart_in_the_same_step():
    env = CartPoleAgents([0, 1, 2])
    env.reset()
    reference = CartPoleEnv()
    reference.reset(seed=0)
    rng = np.random.default_rng(0)
    restarts = 0
    for _ in range(300):
        reference.state = env.state[:, 1].copy()
        reference.steps_beyond_terminated = None
        actions = rng.integers(0, 2, size=3)
        observations, rewards, terminated, _, info = env.step(actions)
        expected, reward, done, _, _ = reference.step(int(actions[1]))
        np.testing.assert_allclose(info["final_observation"][1], expected, rtol=1e-6)
        assert rewards[1] == reward and terminated[1] == done
        if done:
            restarts += 1
            assert np.all(np.abs(observations[1]) <= 0.05)  # a new episode's first observation
            assert not np.array_equal(observations[1], info["final_observation"][1])
        else:
            np.testing.assert_array_equal(observations[1], info["final_observation"][1])
    assert restarts > 5


def test_an_environment_restarts_from_its_own_generator():
    alone = CartPoleAgents([1])
    shared = CartPoleAgents([0, 1, 2])
    first_alone, _ = alone.reset()
    first_shared, _ = shared.reset()
    np.testing.assert_array_equal(first_alone[0], first_shared[1])
    rng = np.random.default_rng(3)
    for _ in range(200):
        actions = rng.integers(0, 2, size=3)
        observation_alone = alone.step(actions[1:2])[0]
        observation_shared = shared.step(actions)[0]
        np.testing.assert_array_equal(observation_alone[0], observation_shared[1])


# --------------------------------------------------------------------------- the update against VariantPPO


def _sb3_rollout(model: VariantPPO) -> StackedRollout:
    """The SB3 buffer's rollout as a one-agent stacked rollout, in SB3's sample order."""
    buffer = model.rollout_buffer

    def flat(array):
        return th.as_tensor(array.swapaxes(0, 1).reshape(-1, *array.shape[2:]))[None]

    old_logits = (
        buffer.old_distribution
        if getattr(buffer, "distribution_size", 0)
        else np.zeros((*buffer.values.shape, 2), np.float32)
    )
    return StackedRollout(
        flat(buffer.observations),
        flat(buffer.actions[..., 0]).long(),
        flat(buffer.values),
        flat(buffer.log_probs),
        flat(buffer.advantages),
        flat(buffer.returns),
        flat(old_logits),
        flat(buffer.old_features) if getattr(buffer, "feature_size", 0) else None,
    )


@pytest.mark.parametrize(
    "options",
    [
        {},
        dict(target_kl=0.002, ent_coef=0.01),
        dict(delta_target_policy="logit"),
        dict(value_grad_rescaling="smoothed", peaked_policy_loss=True),
        dict(value_grad_rescaling="per_state", dual_clip=2.0),
        dict(surrogate="spo"),
        dict(kl_coef=1.0, surrogate="unclipped"),
        dict(kl_trust_region=0.01, peaked_policy_loss=5.0),
        dict(ratio_change_limit=0.05),
        dict(clip_range_high=0.28),
        dict(feature_drift_coef=1.0),
        dict(policy_kwargs=dict(optimizer_kwargs=dict(betas=(0.99, 0.99)))),
    ],
    ids=lambda options: "-".join(options) or "ppo",
)
@pytest.mark.parametrize("shared_trunk", [False, True], ids=["separate", "shared"])
def test_one_update_gives_variant_ppos_parameters(options, shared_trunk):
    options = dict(options)
    policy_kwargs = dict(SHARED_TRUNK if shared_trunk else {}, **options.pop("policy_kwargs", {}))
    model = VariantPPO("MlpPolicy", "CartPole-v1", seed=0, policy_kwargs=policy_kwargs, **UPDATE, **options)
    batched = _assert_one_update_matches(model)
    if "kl_coef" in options:
        assert batched.arms[0].agent_options["kl_coef"].item() == pytest.approx(model.kl_coef)
    if options.get("value_grad_rescaling") == "smoothed":
        assert batched.arms[0].pseudo_entropy_average.item() == pytest.approx(model._pseudo_entropy_average, rel=1e-5)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_arm_of_the_study_updates_as_its_sb3_class(name):
    """SB3's PPO and every variant and configuration of the benchmark, on the study's shared trunk."""
    model = ALGORITHMS[name].build("MlpPolicy", "CartPole-v1", seed=1, policy_kwargs=SHARED_TRUNK, **UPDATE)
    _assert_one_update_matches(model)


UPDATE = dict(n_steps=64, batch_size=16, n_epochs=4, learning_rate=3e-3)


def _assert_one_update_matches(model) -> BatchedPPO:
    """One train() of the SB3 model and one update of BatchedPPO from its parameters, rollout and minibatches."""
    model.set_logger(configure(folder=None, format_strings=[]))
    _, callback = model._setup_learn(64, callback=None)
    model.collect_rollouts(model.get_env(), callback, model.rollout_buffer, n_rollout_steps=64)
    rollout = _sb3_rollout(model)
    batched = BatchedPPO([0], network=StackedActorCritic.from_policies([model.policy]), **batched_settings(model))
    # SB3's minibatches: one NumPy permutation per epoch
    np.random.seed(11)  # noqa: NPY002
    permutations = [th.as_tensor(np.random.permutation(64))[None] for _ in range(4)]  # noqa: NPY002
    np.random.seed(11)  # noqa: NPY002
    initial = StackedActorCritic.from_policies([model.policy]).agent_state_dict(0)
    model.train()
    batched.update(rollout, permutations)

    trained = model.policy.state_dict()
    for name, actual in batched.network.agent_state_dict(0).items():
        th.testing.assert_close(actual, trained[name], rtol=1e-5, atol=1e-5, msg=name)
    assert (trained["action_net.weight"] - initial["action_net.weight"]).abs().max() > 1e-4
    # the training statistics have SB3's keys and values
    logged = model.logger.name_to_value
    assert set(batched.train_statistics[0]) == set(TRAIN_STATISTICS)
    for name, value in batched.train_statistics[0].items():
        assert value == pytest.approx(float(logged[f"train/{name}"]), rel=1e-4, abs=1e-6), name
    return batched


def test_settings_refuse_what_the_batched_trainer_cannot_do():
    from stable_baselines3.common.utils import LinearSchedule

    with pytest.raises(ValueError, match="clip_range is a schedule"):
        batched_settings(VariantPPO("MlpPolicy", "CartPole-v1", clip_range=LinearSchedule(0.2, 0.0, 1.0)))
    model = VariantPPO("MlpPolicy", "CartPole-v1", kl_trust_region=0.01)
    model.kl_trust_region = "lin_0.01"  # rl-zoo3's schedule string
    with pytest.raises(ValueError, match=r"kl_trust_region is a schedule \('lin_0.01'\)"):
        batched_settings(model)
    with pytest.raises(ValueError, match="runs Adam"):
        batched_settings(VariantPPO("MlpPolicy", "CartPole-v1", policy_kwargs=dict(optimizer_class=th.optim.SGD)))
    settings = batched_settings(VariantPPO("MlpPolicy", "CartPole-v1", clip_range=LinearSchedule(0.3, 0.3, 1.0)))
    assert settings["options"].clip_range == pytest.approx(0.3) and settings["adam_eps"] == 1e-5
    decaying = LinearSchedule(1e-3, 0.0, 1.0)
    assert batched_settings(VariantPPO("MlpPolicy", "CartPole-v1", learning_rate=decaying))["learning_rate"] is decaying


def test_learning_rates_follow_their_schedules_as_sb3_sets_them():
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.utils import LinearSchedule

    shape = dict(n_steps=16, batch_size=32, n_epochs=1)
    sb3_rates: list[float] = []

    class RecordingPPO(PPO):
        def train(self) -> None:
            super().train()
            sb3_rates.append(self.policy.optimizer.param_groups[0]["lr"])

    RecordingPPO(
        "MlpPolicy", make_vec_env("CartPole-v1", n_envs=2), learning_rate=LinearSchedule(1e-3, 0.0, 1.0), **shape
    ).learn(96)
    batched = BatchedPPO([0, 1], learning_rate=[LinearSchedule(1e-3, 0.0, 1.0), 2e-3], n_envs=2, **shape)
    batched_rates: list[list[float]] = []
    update = batched.update
    batched.update = lambda rollout: (batched_rates.append(batched.optimizer.learning_rates.tolist()), update(rollout))  # type: ignore[method-assign]
    batched.learn(96)
    # three updates after 32, 64 and 96 steps: lr · (1 − steps / 96), the last at 0, as SB3 trains them
    assert sb3_rates == pytest.approx([1e-3 * (1 - 32 * update / 96) for update in (1, 2, 3)], abs=1e-12)
    np.testing.assert_allclose(batched_rates, [[rate, 2e-3] for rate in sb3_rates], rtol=0, atol=1e-12)
    assert batched.train_statistics[1]["learning_rate"] == pytest.approx(2e-3)


@pytest.mark.parametrize(
    ("learning_rate", "message"),
    [
        ([1e-3], r"learning_rate: one for all or one per agent \(2\), got 1"),
        (-1e-3, r"learning_rate\[0\]: must stay a finite number >= 0, goes from -0.001 to -0.001"),
        ([1e-3, lambda progress: float("nan")], r"learning_rate\[1\]: must stay a finite number >= 0"),
        ("lin_1e-3", r"learning_rate\[0\]: a number or a schedule of the progress remaining, got 'lin_1e-3'"),
    ],
)
def test_a_learning_rate_that_cannot_train_is_refused(learning_rate, message):
    with pytest.raises(ValueError, match=message):
        BatchedPPO([0, 1], learning_rate=learning_rate)


# --------------------------------------------------------------------------- agents are independent


def _parameters(trainer: BatchedPPO, agent: int) -> dict[str, th.Tensor]:
    return trainer.network.agent_state_dict(agent)


def test_an_agent_trains_the_same_alone_and_in_a_batch_of_eight():
    seeds = list(range(8))
    batch = BatchedPPO(seeds, learning_rate=3e-3, **SMALL).learn(3 * 64)
    alone = BatchedPPO([5], learning_rate=3e-3, **SMALL).learn(3 * 64)
    assert batch.num_timesteps == alone.num_timesteps == 3 * 64
    for name, expected in _parameters(alone, 0).items():
        th.testing.assert_close(_parameters(batch, 5)[name], expected, rtol=1e-5, atol=1e-5, msg=name)
    assert batch.episode_returns[5] == alone.episode_returns[0]
    # and the agents differ from one another
    assert not th.equal(_parameters(batch, 4)["action_net.weight"], _parameters(batch, 5)["action_net.weight"])


def test_per_agent_learning_rates_and_options_batch_together():
    options = dict(clip_range=[0.1, 0.3], restoring_slope=[0.0, 0.5], ent_coef=[0.0, 0.01])

    shared = LossOptions(clip_range=0.2, restoring_slope=0.0)
    batch = BatchedPPO([0, 1], learning_rate=[1e-3, 3e-3], options=shared, agent_options=options, **SMALL).learn(128)
    alone = BatchedPPO(
        [1], learning_rate=3e-3, options=LossOptions(clip_range=0.3, restoring_slope=0.5, ent_coef=0.01), **SMALL
    ).learn(128)
    for name, expected in _parameters(alone, 0).items():
        th.testing.assert_close(_parameters(batch, 1)[name], expected, rtol=1e-5, atol=1e-5, msg=name)


ARMS = [
    Arm(2),
    Arm(2, options=LossOptions(clip_range=0.2, kl_coef=1.0, surrogate="unclipped"), kl_penalty_target=0.001),
    Arm(1, options=LossOptions(clip_range=0.2, value_grad_rescaling="smoothed"), ratio_change_limit=0.02),
    Arm(1, options=LossOptions(clip_range=0.2, delta_target_policy="logit"), target_kl=0.002),
]


def test_agents_of_different_arms_train_in_one_group_as_in_their_own():
    """Arms with different losses, β adaptation, running pseudo-entropy and early stops, in one BatchedPPO."""
    together = BatchedPPO(list(range(6)), learning_rate=3e-3, arms=ARMS, **SMALL).learn(3 * 64)
    first = 0
    for index, arm in enumerate(ARMS):
        seeds = list(range(first, first + arm.n_agents))
        alone = BatchedPPO(seeds, learning_rate=3e-3, arms=[arm], **SMALL).learn(3 * 64)
        for agent, seed in enumerate(seeds):
            for name, expected in _parameters(alone, agent).items():
                th.testing.assert_close(_parameters(together, seed)[name], expected, rtol=1e-5, atol=1e-5, msg=name)
            assert together.episode_returns[seed] == alone.episode_returns[agent]
        for name, values in alone.arms[0].agent_options.items():
            th.testing.assert_close(together.arms[index].agent_options[name], values, rtol=1e-5, atol=0, msg=name)
        if arm.ratio_change_limit is not None:
            th.testing.assert_close(together.arms[index].pseudo_entropy_average, alone.arms[0].pseudo_entropy_average)
        first += arm.n_agents
    # the penalty's β adapted: KL below d_targ / 1.5 halves it
    assert together.arms[1].agent_options["kl_coef"].tolist() != [1.0, 1.0]


def test_a_compiled_step_trains_as_the_eager_step():
    """``compile_step`` fuses the same maths: every arm's agents end where the eager step's do, up to rounding."""
    eager = BatchedPPO(list(range(6)), learning_rate=3e-3, arms=ARMS, **SMALL).learn(3 * 64)
    compiled = BatchedPPO(list(range(6)), learning_rate=3e-3, arms=ARMS, compile_step=True, **SMALL).learn(3 * 64)
    for agent in range(6):
        for name, expected in _parameters(eager, agent).items():
            th.testing.assert_close(_parameters(compiled, agent)[name], expected, rtol=1e-5, atol=1e-5, msg=name)
    assert compiled.episode_returns == eager.episode_returns
    assert compiled.n_updates.tolist() == eager.n_updates.tolist()  # the same early stops
    for arm, expected in zip(compiled.arms, eager.arms, strict=True):
        for name, values in expected.agent_options.items():
            th.testing.assert_close(arm.agent_options[name], values, rtol=1e-5, atol=0, msg=name)
        if expected.pseudo_entropy_average is not None:
            th.testing.assert_close(arm.pseudo_entropy_average, expected.pseudo_entropy_average)


def test_a_compiled_trainer_keeps_its_own_step_after_another_compiles_one():
    """The compiled step skips the guards on module globals only: a trainer built and compiled after another,
    with another loss, does not hand its graph to the first (whose arms' options are guarded)."""

    def trained(compile_step: bool) -> BatchedPPO:
        first = BatchedPPO([0, 1], learning_rate=3e-3, compile_step=compile_step, **SMALL)
        first.update(first.collect_rollout())
        other = LossOptions(clip_range=0.05, dual_clip=2.0)
        second = BatchedPPO(
            [0, 1], learning_rate=3e-3, arms=[Arm(2, options=other)], compile_step=compile_step, **SMALL
        )
        second.update(second.collect_rollout())
        first.update(first.collect_rollout())
        return first

    eager, compiled = trained(False), trained(True)
    for agent in range(2):
        for name, expected in _parameters(eager, agent).items():
            th.testing.assert_close(_parameters(compiled, agent)[name], expected, rtol=1e-5, atol=1e-5, msg=name)


def test_compile_step_is_refused_where_torch_compile_does_not_work(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(th, "compile", broken)
    with pytest.raises(ValueError, match=r"compile_step: torch.compile does not work here \(RuntimeError: no C\+\+"):
        BatchedPPO([0], compile_step=True)


def test_arms_must_cover_the_seeds_and_carry_their_own_settings():
    with pytest.raises(ValueError, match="add up to the 3 seeds"):
        BatchedPPO([0, 1, 2], arms=[Arm(1), Arm(1)])
    with pytest.raises(ValueError, match="positive"):
        BatchedPPO([0, 1], arms=[Arm(2), Arm(0)])
    with pytest.raises(ValueError, match="in its Arm, not as keywords"):
        BatchedPPO([0, 1], arms=[Arm(2)], target_kl=0.01)
    with pytest.raises(ValueError, match="one value per agent"):
        BatchedPPO([0, 1, 2], arms=[Arm(1), Arm(2, agent_options={"clip_range": [0.1]})])


@pytest.mark.parametrize("device", ["nonsense", "cuda:7" if th.cuda.is_available() else "cuda"])
def test_a_device_that_is_not_here_is_refused(device):
    with pytest.raises(ValueError, match=rf"device '{device}' is not available here.*available: \['cpu'"):
        BatchedPPO([0], device=device)


@pytest.mark.skipif(not th.cuda.is_available(), reason="needs a CUDA GPU")
def test_agents_train_on_the_gpu_as_on_the_cpu():
    """The rollouts' random numbers come from the agents' CPU generators, so only float rounding differs."""
    on_gpu = BatchedPPO([0, 1], learning_rate=3e-3, arms=ARMS[1:3], device="cuda", **SMALL).learn(64)
    on_cpu = BatchedPPO([0, 1], learning_rate=3e-3, arms=ARMS[1:3], **SMALL).learn(64)
    assert on_gpu.network.flat.device.type == "cuda" and on_gpu.optimizer.exp_avgs[0].device.type == "cuda"
    for agent in (0, 1):
        for name, expected in _parameters(on_cpu, agent).items():
            th.testing.assert_close(_parameters(on_gpu, agent)[name].cpu(), expected, rtol=1e-4, atol=1e-5, msg=name)
    assert on_gpu.episode_returns == on_cpu.episode_returns
    assert on_gpu.evaluate(2).tolist() == on_cpu.evaluate(2).tolist()


def test_a_non_finite_agent_fails_with_its_step_and_the_others_go_on():
    trainer = BatchedPPO([0, 1, 2], learning_rate=3e-3, **SMALL)
    with th.no_grad():
        trainer.network.parameters["mlp_extractor.value_net.0.weight"][1, 0, 0] = float("nan")
    trainer.learn(3 * 64)
    assert trainer.failed.tolist() == [False, True, False]
    assert trainer.failed_at == [None, 64, None]
    others = BatchedPPO([0, 2], learning_rate=3e-3, **SMALL).learn(3 * 64)
    for agent, other in ((0, 0), (2, 1)):
        for name, expected in _parameters(others, other).items():
            th.testing.assert_close(_parameters(trainer, agent)[name], expected, rtol=1e-5, atol=1e-5, msg=name)
    assert th.isfinite(_parameters(trainer, 0)["action_net.weight"]).all()


def test_options_that_cannot_differ_between_agents_are_refused():

    with pytest.raises(ValueError, match="'surrogate' cannot differ between agents"):
        BatchedPPO([0, 1], agent_options={"surrogate": [0.0, 1.0]})
    with pytest.raises(ValueError, match="one value per agent"):
        BatchedPPO([0, 1], agent_options={"clip_range": [0.1, 0.2, 0.3]})
    with pytest.raises(ValueError, match="separate groups"):
        BatchedPPO(
            [0, 1], options=LossOptions(clip_range=0.2, kl_trust_region=0.01), agent_options={"restoring_slope": [0, 5]}
        )


@pytest.mark.slow
def test_batched_agents_learn_cartpole():
    trainer = BatchedPPO([0, 1], n_steps=512, batch_size=64, n_epochs=10, learning_rate=1e-3).learn(15_000)
    assert not trainer.failed.any()
    final = [np.mean(returns[-10:]) for returns in trainer.episode_returns]
    assert min(final) > 150, final


# --------------------------------------------------------------------------- SB3's conventions


def test_evaluation_is_the_sb3_runners():
    from sb3_ppo_variants.benchmark.runs import evaluate
    from sb3_ppo_variants.benchmark.tasks import TASKS

    models = [VariantPPO("MlpPolicy", "CartPole-v1", seed=seed) for seed in (3, 4)]
    trainer = BatchedPPO([3, 4], network=StackedActorCritic.from_policies([model.policy for model in models]))
    returns = trainer.evaluate()
    assert returns.shape == (2, 5)
    for agent, (model, seed) in enumerate(zip(models, (3, 4), strict=True)):
        assert returns[agent].tolist() == evaluate(model, TASKS["CartPole-v1"], seed)
    assert len(set(returns.flatten().tolist())) > 1  # episodes of different lengths, so the seeds matter


def test_periodic_evaluation_records_as_the_runner():
    trainer = BatchedPPO([0, 1], n_envs=8, n_steps=16, batch_size=64, n_epochs=1).learn(600, eval_every=250)
    steps = [record["step"] for record in trainer.evaluations[1]]
    # at the start, at the first step count reaching each multiple of 250 (8 steps at a time), at the end
    assert steps == [0, 256, 504, 640]
    last = trainer.evaluations[1][-1]
    assert last["eval_return"] == pytest.approx(np.mean(last["eval_returns"]), abs=0.01)
    assert last["train_return"] == pytest.approx(np.mean(trainer.episode_returns[1][-100:]))


def test_truncated_episodes_bootstrap_with_the_value_of_their_last_observation():
    gamma, n_steps = 0.9, 12
    trainer = BatchedPPO([0, 1], n_envs=2, n_steps=n_steps, gamma=gamma, gae_lambda=1.0, max_episode_steps=5)
    rollout = trainer.collect_rollout()
    # replay the same actions to find the truncated steps and their last observations
    replay = CartPoleAgents([0, 1, 1, 2], max_episode_steps=5)
    replay.reset()
    actions = rollout.actions.view(2, 2, n_steps).permute(2, 0, 1).reshape(n_steps, 4)  # (T, agent · env)
    checked = 0
    for step in range(n_steps):
        _, _, terminated, truncated, info = replay.step(actions[step].numpy())
        for env in np.flatnonzero(truncated & ~terminated):
            agent, index = divmod(env, 2)
            final = th.as_tensor(info["final_observation"][env]).view(1, 1, -1)
            value = trainer.network.values(final.expand(2, 1, 4))[agent, 0]
            # the episode ends here, so its return is its last reward, 1 + γ V(s_T)
            sample = index * n_steps + step
            assert rollout.returns[agent, sample].item() == pytest.approx(1.0 + gamma * value.item(), rel=1e-5)
            checked += 1
    assert checked >= 4


def test_the_rollout_records_pfos_features_only_when_asked():

    plain = BatchedPPO([0, 1], n_steps=16).collect_rollout()
    assert plain.old_features is None
    trainer = BatchedPPO([0, 1], n_steps=16, options=LossOptions(clip_range=0.2, feature_drift_coef=1.0))
    rollout = trainer.collect_rollout()
    with th.no_grad():
        _, _, features = trainer.network.forward_with_features(rollout.observations)
    assert rollout.old_features.shape == (2, 16, 64)
    th.testing.assert_close(rollout.old_features, features)
