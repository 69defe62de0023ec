"""The diagnosis names a planted cause: one damaged layer (or a few damaged filters) that alone flips the policy."""

from __future__ import annotations

import json
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from forced_collapse import EPISODE_LENGTH, RewardSwitch, checkout_environment, make_env
from stable_baselines3 import PPO
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_ppo_variants.collapse.diagnosis import Diagnosis, diagnose, load_policy, load_probe, save_probe
from sb3_ppo_variants.policies import MinAtarCNN, MlpTrunk

SHARED_TRUNK = dict(
    features_extractor_class=MlpTrunk, features_extractor_kwargs=dict(hidden_sizes=(16, 16)), net_arch=[]
)
DAMAGED = "features_extractor.trunk.1"  # the first Linear (index 0 is the Flatten)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = th.get_num_threads()
    th.set_num_threads(1)
    yield
    th.set_num_threads(threads)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A shared-trunk policy trained to the perfect score, then a copy whose first layer is mirrored.

    The observation is a sign ±1 and the rewarded action is ``obs > 0``: negating the first
    layer's weights makes the policy see ``-obs`` and so pick the other action everywhere.
    Every other layer gets a small perturbation, so they all change but none flips the policy.
    """
    threads = th.get_num_threads()
    th.set_num_threads(1)
    folder = tmp_path_factory.mktemp("planted")
    model = PPO(
        "MlpPolicy",
        make_env(RewardSwitch()),
        n_steps=128,
        batch_size=64,
        n_epochs=4,
        learning_rate=3e-3,
        policy_kwargs=SHARED_TRUNK,
        seed=0,
        device="cpu",
    )
    # Trained longer, this shared trunk collapses on its own (to about 5): stop at the perfect score.
    model.learn(1024)
    score, _ = evaluate_policy(model, make_env(RewardSwitch(), seed=5), n_eval_episodes=10)
    assert score == pytest.approx(EPISODE_LENGTH)
    model.save(folder / "good.zip")
    generator = th.Generator().manual_seed(1)
    with th.no_grad():
        for name, parameter in model.policy.named_parameters():
            if name == f"{DAMAGED}.weight":
                parameter.neg_()
            else:
                parameter.add_(0.01 * th.randn(parameter.shape, generator=generator))
    model.save(folder / "bad.zip")
    damaged_score, _ = evaluate_policy(model, make_env(RewardSwitch(), seed=5), n_eval_episodes=10)
    assert damaged_score == pytest.approx(0.0)
    observations = np.array([[1.0], [-1.0]] * 500, dtype=np.float32)
    save_probe(folder / "probe.npz", observations)
    th.set_num_threads(threads)
    return folder, observations


@pytest.mark.slow
def test_planted_layer_is_the_only_one_named(planted):
    folder, observations = planted
    diagnosis = diagnose(folder / "good.zip", folder / "bad.zip", observations)
    assert diagnosis.flipping_layers == [DAMAGED]
    layers = diagnosis.layers.set_index("layer")
    # SB3's pi_/vf_features_extractor are the shared extractor under other names: listed once.
    assert list(layers.index) == ["features_extractor.trunk.1", "features_extractor.trunk.3", "action_net", "value_net"]
    # The mirrored layer alone flips every state; restoring it alone repairs the policy.
    assert layers.loc[DAMAGED, "disagreement_1"] == pytest.approx(1.0)
    assert layers.loc[DAMAGED, "disagreement_restored"] == pytest.approx(0.0)
    assert layers.loc[DAMAGED, "kl_1"] > 0.5 * diagnosis.summary["kl_good_bad"] > 0.0
    # Half-way, the mirrored first layer is nearly zero: the policy sits between the two actions.
    assert layers.loc[DAMAGED, "kl_0.5"] < layers.loc[DAMAGED, "kl_1"]
    for layer in ("features_extractor.trunk.3", "action_net", "value_net"):
        assert layers.loc[layer, "disagreement_1"] == 0.0, layer
        assert layers.loc[layer, "delta_norm"] > 0.0, layer
        # Restoring any other layer leaves the policy flipped.
        assert layers.loc[layer, "disagreement_restored"] == pytest.approx(1.0), layer
    # The value head does not move the action distribution at all.
    assert layers.loc["value_net", "kl_1"] == 0.0
    summary = diagnosis.summary
    assert summary["disagreement"] == pytest.approx(1.0)
    assert summary["n_states"] == len(observations)
    assert sum(summary["action_probs_good"]) == pytest.approx(1.0)
    assert summary["action_freq_good"] == [500, 500]
    assert diagnosis.filters.empty


@pytest.mark.slow
def test_diagnose_command_on_two_saved_models(planted, tmp_path):
    folder, _ = planted
    command = [
        sys.executable,
        "-m",
        "sb3_ppo_variants.collapse",
        "diagnose",
        str(folder / "good.zip"),
        str(folder / "bad.zip"),
        "--probe",
        str(folder / "probe.npz"),
        "-o",
        str(tmp_path / "out"),
    ]
    result = subprocess.run(command, env=checkout_environment(), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert DAMAGED in result.stdout
    record = json.loads((tmp_path / "out" / "diagnosis.json").read_text())
    assert record["flipping_layers"] == [DAMAGED]
    loaded = Diagnosis.load(tmp_path / "out")
    assert loaded.layers.set_index("layer").loc[DAMAGED, "flips_policy"]
    assert (tmp_path / "out" / "diagnosis.png").stat().st_size > 10_000


@pytest.mark.slow
def test_collect_probe_command(planted, tmp_path):
    PPO("MlpPolicy", "CartPole-v1", policy_kwargs=SHARED_TRUNK, seed=0, device="cpu").save(tmp_path / "cartpole.zip")
    command = [
        sys.executable,
        "-m",
        "sb3_ppo_variants.collapse",
        "collect-probe",
        str(tmp_path / "cartpole.zip"),
        "--env",
        "CartPole-v1",
        "-n",
        "300",
        "-o",
        str(tmp_path / "probe.npz"),
    ]
    result = subprocess.run(command, env=checkout_environment(), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    probe = load_probe(tmp_path / "probe.npz")
    assert probe.shape == (300, 4)
    # Several episodes (an untrained policy drops the pole within ~30 steps), all within CartPole's bounds.
    assert np.unique(probe, axis=0).shape[0] == 300
    assert (np.abs(probe[:, 2]) < 0.21).all()

    # The planted policy was trained on a 1-d observation: CartPole's 4-d one is refused with a message.
    folder, _ = planted
    command[4] = str(folder / "good.zip")
    result = subprocess.run(command, env=checkout_environment(), capture_output=True, text=True, timeout=180)
    assert result.returncode == 2
    assert "observation space" in result.stderr


class ChannelGrid(gym.Env):
    """A 10×10×2 grid, channel-last as MinAtar's: random frames, the policy is all that matters here."""

    observation_space = gym.spaces.Box(0.0, 1.0, (10, 10, 2), np.float32)
    action_space = gym.spaces.Discrete(3)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


def test_planted_filters_are_named(tmp_path):
    """A deterministic stand-in: a confident conv policy, two of its 8 filters replaced by a strong pattern."""
    th.manual_seed(0)
    policy_kwargs = dict(
        features_extractor_class=MinAtarCNN, features_extractor_kwargs=dict(features_dim=32, n_filters=8), net_arch=[]
    )
    model = PPO("MlpPolicy", ChannelGrid(), policy_kwargs=policy_kwargs, n_steps=64, seed=0, device="cpu")
    conv = "features_extractor.conv.0"
    with th.no_grad():
        model.policy.action_net.weight.mul_(40.0)  # a confident good policy
    model.save(tmp_path / "good.zip")
    damaged = (2, 5)
    with th.no_grad():
        parameters = dict(model.policy.named_parameters())
        for index in damaged:
            # An exploding filter drowns the others in the next layer.
            parameters[f"{conv}.weight"][index] *= 10.0
        for name, parameter in parameters.items():
            if not name.startswith(("features_extractor.conv", "pi_features", "vf_features")):
                parameter.add_(1e-4 * th.randn_like(parameter))
    model.save(tmp_path / "bad.zip")
    # Sparse binary frames, like MinAtar's.
    observations = (np.random.default_rng(0).random((300, 10, 10, 2)) < 0.1).astype(np.float32)

    diagnosis = diagnose(tmp_path / "good.zip", tmp_path / "bad.zip", observations, flip_share=0.3)
    assert diagnosis.summary["disagreement"] > 0.2
    assert diagnosis.flipping_layers == [conv]
    filters = diagnosis.filters.set_index("filter")
    assert list(filters.index) == list(range(8))
    assert set(filters.index[filters["delta_norm"] > 0]) == set(damaged)
    assert diagnosis.flipping_filters
    assert set(diagnosis.flipping_filters) <= {f"{conv}[{index}]" for index in damaged}
    assert (filters.loc[list(set(range(8)) - set(damaged)), "disagreement_1"] == 0).all()
    # load_policy rebuilds the policy without the algorithm class, with the saved weights.
    assert th.equal(load_policy(tmp_path / "bad.zip").action_net.weight, model.policy.action_net.weight)
