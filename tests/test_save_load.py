"""Saving restores every option and the running state; training continues from where it stopped."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th

from sb3_ppo_variants import SPOPPO, KLPenaltyPPO, LogitPPO, PeakedPPO, RescaledPPO, VariantPPO
from sb3_ppo_variants.variant_ppo import VARIANT_OPTIONS

th.set_num_threads(1)

SMALL = dict(n_steps=64, batch_size=32, n_epochs=2, seed=11)


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (VariantPPO, dict(value_grad_rescaling="per_batch", peaked_policy_loss=0.25, pseudo_entropy_smoothing=0.5)),
        (LogitPPO, dict(value_grad_rescaling="smoothed", pseudo_entropy_smoothing=0.7)),
        (PeakedPPO, {}),
        (RescaledPPO, dict(pseudo_entropy_smoothing=0.8)),
        (SPOPPO, dict(delta_target_policy="logit")),
        (KLPenaltyPPO, dict(kl_penalty_target=0.5, kl_adapt_factor=3.0, kl_adapt_tolerance=1.2)),
    ],
)
@pytest.mark.parametrize("load_with", ["own", "variant"])
def test_save_load_restores_options_and_state(tmp_path, cls, kwargs, load_with):
    model = cls("MlpPolicy", "CartPole-v1", **SMALL, **kwargs).learn(128)
    path = tmp_path / "model.zip"
    model.save(path)
    loader = cls if load_with == "own" else VariantPPO
    loaded = loader.load(path, env=model.get_env())
    assert type(loaded) is (cls if load_with == "own" else VariantPPO)
    for name in VARIANT_OPTIONS:
        assert getattr(loaded, name) == getattr(model, name), name
    assert loaded._pseudo_entropy_average == model._pseudo_entropy_average
    for (name, saved), restored in zip(
        model.policy.state_dict().items(), loaded.policy.state_dict().values(), strict=True
    ):
        th.testing.assert_close(restored, saved, msg=name)
    th.testing.assert_close(
        loaded.policy.optimizer.state_dict()["state"][0]["exp_avg"],
        model.policy.optimizer.state_dict()["state"][0]["exp_avg"],
    )


def test_smoothed_average_survives_load_and_continues(tmp_path):
    model = RescaledPPO("MlpPolicy", "CartPole-v1", **SMALL, pseudo_entropy_smoothing=0.9).learn(128)
    saved_average = model._pseudo_entropy_average
    assert saved_average is not None and 0.0 < saved_average < 0.5
    model.save(tmp_path / "rescaled")
    loaded = RescaledPPO.load(tmp_path / "rescaled", env=model.get_env())
    assert loaded._pseudo_entropy_average == saved_average
    # the next minibatch blends into the restored average instead of restarting from it
    loaded.learn(64, reset_num_timesteps=False)
    n_minibatches = SMALL["n_epochs"] * 64 // SMALL["batch_size"]
    # m ← 0.9 m + 0.1 mean H' per minibatch, from the restored m, with H' >= 0
    assert loaded._pseudo_entropy_average >= 0.9**n_minibatches * saved_average
    assert loaded._pseudo_entropy_average != saved_average


def test_adapted_kl_coef_survives_load(tmp_path):
    model = KLPenaltyPPO("MlpPolicy", "Pendulum-v1", **SMALL, kl_penalty_target=100.0).learn(128)
    assert model.kl_coef == pytest.approx(0.25)  # halved after each of the two rollouts
    model.save(tmp_path / "kl")
    loaded = KLPenaltyPPO.load(tmp_path / "kl", env=model.get_env())
    assert loaded.kl_coef == pytest.approx(0.25)
    loaded.learn(64, reset_num_timesteps=False)
    assert loaded.kl_coef == pytest.approx(0.125)
    assert loaded.num_timesteps == 192


def test_training_continues_where_it_stopped(tmp_path):
    model = LogitPPO("MlpPolicy", "CartPole-v1", **SMALL).learn(128)
    model.save(tmp_path / "logit")
    loaded = LogitPPO.load(tmp_path / "logit", env=model.get_env())
    before = [p.detach().clone() for p in loaded.policy.parameters()]
    loaded.learn(128, reset_num_timesteps=False)
    assert loaded.num_timesteps == 256
    assert loaded._n_updates == model._n_updates + 2 * SMALL["n_epochs"]
    assert any(not th.equal(a, b) for a, b in zip(before, loaded.policy.parameters(), strict=True))
    assert loaded.logger.name_to_value["train/clip_range"] == 0.2


@pytest.mark.parametrize("cls", [VariantPPO, LogitPPO, PeakedPPO, RescaledPPO, SPOPPO, KLPenaltyPPO])
def test_load_without_env_for_replay(tmp_path, cls):
    """rl-zoo3's enjoy and record_video load models without an environment."""
    model = cls("MlpPolicy", "CartPole-v1", **SMALL).learn(64)
    model.save(tmp_path / "model")
    loaded = cls.load(tmp_path / "model")
    assert loaded.get_env() is None
    observation = model.get_env().reset()
    np.testing.assert_array_equal(
        loaded.predict(observation, deterministic=True)[0], model.predict(observation, deterministic=True)[0]
    )
    for name in VARIANT_OPTIONS:
        assert getattr(loaded, name) == getattr(model, name), name
