"""VariantPPO against SB3's PPO: parity, action spaces, bad input, logging and the one-forward-pass loop."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.envs import (
    IdentityEnv,
    IdentityEnvBox,
    IdentityEnvMultiBinary,
    IdentityEnvMultiDiscrete,
    SimpleMultiObsEnv,
)
from stable_baselines3.common.logger import configure

from sb3_ppo_variants import (
    SPOPPO,
    TRPPO,
    DualClipPPO,
    KLPenaltyPPO,
    LogitPPO,
    PeakedPPO,
    RescaledPPO,
    TrulyPPO,
    VariantPPO,
)
from sb3_ppo_variants.registry import VARIANTS
from sb3_ppo_variants.variant_ppo import KL_COEF_FLOOR, VARIANT_OPTIONS

th.set_num_threads(1)

SMALL = dict(n_steps=64, batch_size=32, n_epochs=3, seed=7)


# --------------------------------------------------------------------------- parity with PPO


@pytest.mark.parametrize(
    ("env_id", "extra"),
    [
        ("CartPole-v1", {}),
        ("CartPole-v1", dict(clip_range_vf=0.2, target_kl=0.005, ent_coef=0.01)),
        ("Pendulum-v1", {}),
        ("Pendulum-v1", dict(use_sde=True, sde_sample_freq=4, normalize_advantage=False)),
    ],
)
def test_default_options_reproduce_sb3_ppo(env_id, extra):
    kwargs = dict(n_steps=128, batch_size=32, n_epochs=4, learning_rate=3e-3, seed=3, **extra)
    reference = PPO("MlpPolicy", env_id, **kwargs).learn(512)
    variant = VariantPPO("MlpPolicy", env_id, **kwargs).learn(512)
    assert variant._n_updates == reference._n_updates
    for (name, expected), actual in zip(
        reference.policy.state_dict().items(), variant.policy.state_dict().values(), strict=True
    ):
        th.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6, msg=name)
    # PPO's own logger keys keep PPO's meaning
    for key in (
        "train/loss",
        "train/value_loss",
        "train/entropy_loss",
        "train/policy_gradient_loss",
        "train/approx_kl",
    ):
        assert variant.logger.name_to_value[key] == pytest.approx(reference.logger.name_to_value[key], rel=1e-5)
    # |r − 1| > ε, SB3's meaning and SB3's very number
    assert variant.logger.name_to_value["train/clip_fraction"] == reference.logger.name_to_value["train/clip_fraction"]


def test_variant_options_are_the_keyword_only_arguments():
    import inspect

    parameters = inspect.signature(VariantPPO.__init__).parameters.values()
    keyword_only = tuple(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)
    assert keyword_only == VARIANT_OPTIONS
    model = LogitPPO("MlpPolicy", "CartPole-v1", kl_coef=0.5, _init_setup_model=False)
    assert model.variant_options()["delta_target_policy"] == "logit"
    assert model.variant_options()["kl_coef"] == 0.5


def test_presets_only_change_defaults():
    expected = {
        LogitPPO: {"delta_target_policy": "logit"},
        PeakedPPO: {"peaked_policy_loss": True},
        RescaledPPO: {"value_grad_rescaling": "smoothed"},
        SPOPPO: {"surrogate": "spo"},
        KLPenaltyPPO: {"surrogate": "unclipped", "kl_coef": 1.0},
        TrulyPPO: {"kl_trust_region": 0.03, "peaked_policy_loss": 5.0},
        TRPPO: {"kl_trust_region": 0.035},
        DualClipPPO: {"dual_clip": 3.0},
    }
    assert set(expected) == {
        variant.algorithm_class for variant in VARIANTS if variant.algorithm_class is not VariantPPO
    }
    base = VariantPPO("MlpPolicy", "CartPole-v1", _init_setup_model=False)
    for preset, changed in expected.items():
        model = preset("MlpPolicy", "CartPole-v1", _init_setup_model=False)
        assert type(model).train is VariantPPO.train
        for name in VARIANT_OPTIONS:
            assert getattr(model, name) == changed.get(name, getattr(base, name)), (preset.__name__, name)
        # every default can still be overridden
        overridden = preset(
            "MlpPolicy", "CartPole-v1", _init_setup_model=False, **{k: getattr(base, k) for k in changed}
        )
        for name in VARIANT_OPTIONS:
            assert getattr(overridden, name) == getattr(base, name)


# --------------------------------------------------------------------------- action spaces


@pytest.mark.parametrize(
    "env",
    [
        lambda: IdentityEnv(dim=4),
        lambda: IdentityEnvMultiDiscrete(dim=3),
        lambda: IdentityEnvMultiBinary(dim=3),
    ],
    ids=["Discrete", "MultiDiscrete", "MultiBinary"],
)
@pytest.mark.parametrize(
    "options",
    [
        dict(delta_target_policy="logit", value_grad_rescaling="per_state"),
        dict(delta_target_policy="logit", value_grad_rescaling="smoothed", peaked_policy_loss=0.5),
        dict(surrogate="spo", delta_target_policy="logit", value_grad_rescaling="per_batch"),
        dict(surrogate="unclipped", kl_coef=1.0),
    ],
)
def test_probability_action_spaces_support_every_option(env, options):
    model = VariantPPO("MlpPolicy", env(), **SMALL, **options).learn(128)
    logged = model.logger.name_to_value
    n_actions = {spaces.Discrete: 4, spaces.MultiDiscrete: 27, spaces.MultiBinary: 8}[type(model.action_space)]
    # H' of the joint action lies in [0, 1 − 1/N]
    assert 0.0 < logged["train/pseudo_entropy"] <= 1 - 1 / n_actions + 1e-6
    for key, value in logged.items():
        if key.startswith("train/"):
            assert np.isfinite(value), key


@pytest.mark.parametrize(
    "options",
    [
        dict(peaked_policy_loss=True),
        dict(peaked_policy_loss=0.3),
        dict(surrogate="spo"),
        dict(surrogate="unclipped", kl_coef=1.0),
        dict(kl_coef=0.5, use_sde=True),
    ],
)
def test_box_action_space_supports_absolute_target_losses(options):
    model = VariantPPO("MlpPolicy", IdentityEnvBox(), **SMALL, **options).learn(128)
    assert "train/pseudo_entropy" not in model.logger.name_to_value
    assert np.isfinite(model.logger.name_to_value["train/loss"])


@pytest.mark.parametrize(("option", "value"), [("value_grad_rescaling", "per_state"), ("delta_target_policy", "logit")])
def test_box_action_space_rejects_probability_options(option, value):
    with pytest.raises(ValueError, match=rf"{option}.*Box"):
        VariantPPO("MlpPolicy", "Pendulum-v1", **{option: value})


def test_dict_observations_with_exact_kl():
    model = KLPenaltyPPO("MultiInputPolicy", SimpleMultiObsEnv(random_start=False), **SMALL).learn(128)
    assert model.logger.name_to_value["train/kl"] >= 0.0


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (dict(value_grad_rescaling="per_sample"), r"value_grad_rescaling must be one of None, 'per_state'"),
        (dict(value_grad_rescaling=True), r"value_grad_rescaling must be one of"),
        (dict(delta_target_policy="logits"), r"delta_target_policy must be one of 'absolute', 'logit'"),
        (dict(peaked_policy_loss=-0.1), r"peaked_policy_loss must be False, True or a float in \[0, 1\]"),
        (dict(peaked_policy_loss=1.5), r"peaked_policy_loss must be False, True or a float in \[0, 1\]"),
        (dict(peaked_policy_loss="yes"), r"peaked_policy_loss must be False, True or a float in \[0, 1\]"),
        (dict(peaked_policy_loss=float("nan")), r"peaked_policy_loss must be"),
        (dict(pseudo_entropy_smoothing=1.0), r"pseudo_entropy_smoothing must be a float in \[0, 1\)"),
        (dict(pseudo_entropy_smoothing=-0.01), r"pseudo_entropy_smoothing must be a float in \[0, 1\)"),
        (dict(delta_target_policy="logit", clip_range=1.0), r"clip_range must be in \[0, 1\) with delta_target_policy"),
        (dict(delta_target_policy="logit", clip_range=lambda p: 1.5 - p), r"clip_range must be in \[0, 1\)"),
        (dict(surrogate="trpo"), r"surrogate must be one of 'clipped', 'spo', 'unclipped'"),
        (
            dict(surrogate="spo", peaked_policy_loss=True),
            r"peaked_policy_loss needs surrogate='clipped'.*must be False",
        ),
        (dict(clip_range=-0.1), r"clip_range must be a finite float >= 0"),
        (dict(surrogate="spo", clip_range=-0.1), r"clip_range must be a finite float >= 0"),
        (dict(kl_coef=-1.0), r"kl_coef must be a finite float >= 0"),
        (dict(kl_coef=float("inf")), r"kl_coef must be a finite float >= 0"),
        (dict(kl_penalty_target=0.0), r"kl_penalty_target must be a finite float > 0"),
        (dict(kl_adapt_factor=1.0), r"kl_adapt_factor must be a finite float > 1"),
        (dict(kl_adapt_tolerance=0.5), r"kl_adapt_tolerance must be a finite float > 1"),
        (dict(clip_range_high=-0.2), r"clip_range_high must be a finite float >= 0"),
        (dict(clip_range_high=lambda p: p - 0.5), r"clip_range_high must be a finite float >= 0"),
        (dict(clip_range_high=1.0, delta_target_policy="logit"), r"clip_range_high must be in \[0, 1\)"),
        (dict(clip_range_high=0.3, surrogate="spo"), r"clip_range_high needs surrogate='clipped'.*must be None"),
        (dict(clip_range_high=0.3, surrogate="unclipped"), r"clip_range_high needs surrogate='clipped'"),
        (dict(dual_clip=1.0), r"dual_clip must be None or a finite float > 1"),
        (dict(dual_clip=float("inf")), r"dual_clip must be None or a finite float > 1"),
        (dict(dual_clip=True), r"dual_clip must be None or a finite float > 1"),
        (dict(dual_clip=3.0, surrogate="spo"), r"dual_clip needs surrogate='clipped'"),
        (dict(dual_clip=3.0, surrogate="unclipped"), r"dual_clip needs surrogate='clipped'"),
        (dict(kl_trust_region=0.0), r"kl_trust_region must be None, a finite float > 0"),
        (dict(kl_trust_region="0.1"), r"kl_trust_region must be None, a finite float > 0"),
        (dict(kl_trust_region=0.03, surrogate="spo"), r"kl_trust_region needs surrogate='clipped'"),
        (dict(kl_trust_region=0.03, delta_target_policy="logit"), r"delta_target_policy must be 'absolute'"),
        (dict(kl_trust_region=0.03, clip_range_high=0.3), r"clip_range_high must be None"),
        (dict(kl_trust_region=0.03, peaked_policy_loss=-1.0), r"peaked_policy_loss must be .* finite float >= 0"),
        (dict(peaked_policy_loss=5.0), r"peaked_policy_loss must be False, True or a float in \[0, 1\]"),
        (dict(ratio_change_limit=0.0), r"ratio_change_limit must be None or a finite float > 0"),
        (dict(ratio_change_limit=float("nan")), r"ratio_change_limit must be None or a finite float > 0"),
        (dict(feature_drift_coef=-1.0), r"feature_drift_coef must be a finite float >= 0"),
        (dict(feature_drift_coef=None), r"feature_drift_coef must be a finite float >= 0"),
    ],
)
def test_bad_input_raises_at_construction(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        VariantPPO("MlpPolicy", "CartPole-v1", **kwargs)


@pytest.mark.parametrize(
    ("preset", "kwargs"),
    [
        (LogitPPO, dict(clip_range=1.2)),
        (PeakedPPO, dict(peaked_policy_loss=2)),
        (RescaledPPO, dict(pseudo_entropy_smoothing=1)),
        (SPOPPO, dict(peaked_policy_loss=True)),
        (KLPenaltyPPO, dict(kl_penalty_target=-0.01)),
    ],
)
def test_presets_validate_too(preset, kwargs):
    with pytest.raises(ValueError):
        preset("MlpPolicy", "CartPole-v1", **kwargs)


# --------------------------------------------------------------------------- the loop itself


def _count_feature_passes(model):
    """Count forward passes through the (shared) features extractor."""
    calls = {"n": 0}

    def count(*_):
        calls["n"] += 1

    model.policy.pi_features_extractor.register_forward_hook(count)
    return calls


@pytest.mark.parametrize(
    "options",
    [
        {},
        dict(value_grad_rescaling="per_state"),
        dict(value_grad_rescaling="smoothed", delta_target_policy="logit", peaked_policy_loss=True),
        dict(surrogate="spo"),
    ],
)
def test_one_forward_pass_per_minibatch(options):
    model = VariantPPO("MlpPolicy", "CartPole-v1", **SMALL, **options)
    model.learn(64)  # one rollout and one update
    calls = _count_feature_passes(model)
    model.train()
    minibatches = SMALL["n_steps"] // SMALL["batch_size"]
    assert calls["n"] == SMALL["n_epochs"] * minibatches


def test_kl_penalty_records_the_old_distribution_during_the_rollout():
    model = KLPenaltyPPO("MlpPolicy", "CartPole-v1", **SMALL)
    model.learn(64)
    calls = _count_feature_passes(model)
    model.train()
    minibatches = SMALL["n_steps"] // SMALL["batch_size"]
    assert calls["n"] == SMALL["n_epochs"] * minibatches  # no extra pass for π_old


def test_a_plain_sb3_buffer_is_refused_where_rollout_data_is_needed():
    from stable_baselines3.common.buffers import RolloutBuffer

    with pytest.raises(ValueError, match=r"rollout_buffer_class must be None, RolloutPolicyBuffer"):
        KLPenaltyPPO("MlpPolicy", "CartPole-v1", rollout_buffer_class=RolloutBuffer)
    VariantPPO("MlpPolicy", "CartPole-v1", rollout_buffer_class=RolloutBuffer).learn(64)  # nothing to record


def test_kl_coef_adapts_once_per_rollout_from_the_last_epoch():
    model = KLPenaltyPPO("MlpPolicy", "CartPole-v1", **SMALL, kl_penalty_target=10.0)  # KL far below target
    model.learn(64)
    assert model.kl_coef == pytest.approx(0.5)  # halved exactly once
    model = KLPenaltyPPO("MlpPolicy", "CartPole-v1", **SMALL, kl_penalty_target=1e-9, learning_rate=1e-2)
    model.learn(128)
    assert model.kl_coef == pytest.approx(4.0)  # doubled once per rollout, two rollouts
    assert model.logger.name_to_value["train/kl_coef"] == pytest.approx(2.0)  # β used by the last update


@pytest.mark.parametrize("n_envs", [1, 3])
def test_samples_carry_the_rollout_policy_distribution_and_features(n_envs):
    from stable_baselines3.common.env_util import make_vec_env

    model = KLPenaltyPPO(
        "MlpPolicy",
        make_vec_env("CartPole-v1", n_envs=n_envs, seed=0),
        n_steps=16,
        batch_size=16,
        seed=0,
        feature_drift_coef=0.1,
    )
    model.learn(16 * n_envs)
    # learn() ended with train(); collect a fresh rollout with the current policy and compare per sample
    model.collect_rollouts(model.env, model._init_callback(None), model.rollout_buffer, n_rollout_steps=16)
    sample = next(model.rollout_buffer.get(8))
    with th.no_grad():
        logits = model.policy.get_distribution(sample.observations).distribution.logits
        features = model.policy.mlp_extractor.policy_net[2](
            model.policy.mlp_extractor.policy_net[:2](model.policy.extract_features(sample.observations))
        )
    assert sample.old_distribution.shape == (8, 2) and sample.old_features.shape == (8, 64)
    th.testing.assert_close(th.log_softmax(sample.old_distribution, -1), logits)
    th.testing.assert_close(sample.old_features, features)


def test_samples_carry_nothing_without_an_option_that_needs_it():
    model = VariantPPO("MlpPolicy", "CartPole-v1", **SMALL).learn(64)
    sample = next(model.rollout_buffer.get(8))
    assert sample.old_distribution is None and sample.old_features is None


def test_kl_coef_never_underflows_to_zero():
    model = KLPenaltyPPO("MlpPolicy", "CartPole-v1", **SMALL, kl_penalty_target=10.0, kl_coef=3e-20)
    model.learn(192)
    assert model.kl_coef == KL_COEF_FLOOR
    assert model.uses_kl_penalty


# --------------------------------------------------------------------------- logging


def _logged_rows(tmp_path, model_cls, **kwargs):
    model = model_cls("MlpPolicy", "CartPole-v1", **SMALL, **kwargs)
    model.set_logger(configure(str(tmp_path), ["stdout", "csv", "tensorboard"]))
    model.learn(192)
    with open(tmp_path / "progress.csv") as handle:
        return list(csv.DictReader(handle))


TRUST_REGION_KEYS = (
    "clip_fraction",
    "clip_high_fraction",
    "clip_low_fraction",
    "past_target_fraction",
    "ratio_deviation",
    "ratio_change",
    "ratio_max",
    "ratio_min",
)


def test_logger_keys_reach_csv_and_tensorboard(tmp_path, capsys):
    rows = _logged_rows(tmp_path, VariantPPO, value_grad_rescaling="per_batch", peaked_policy_loss=0.5)
    last = rows[-1]
    for key in ("pseudo_entropy", "value_loss_scale", *TRUST_REGION_KEYS):
        assert last[f"train/{key}"] != "", key
        assert len(f"train/{key}") < 36
    # per-batch rescaling applies the minibatch means of H', whose mean is what is logged
    assert float(last["train/value_loss_scale"]) == pytest.approx(float(last["train/pseudo_entropy"]), rel=1e-6)
    assert "pseudo_entropy" in capsys.readouterr().out
    assert list(tmp_path.glob("events.out.tfevents.*"))


def test_each_quantity_is_logged_once(tmp_path):
    rows = _logged_rows(tmp_path, VariantPPO, peaked_policy_loss=1.0)
    assert "train/restoring_fraction" not in rows[-1]
    assert float(rows[-1]["train/value_loss_scale"]) == 1.0
    last = {key: float(rows[-1][f"train/{key}"]) for key in TRUST_REGION_KEYS}
    # symmetric range: SB3's clip fraction is the sum of the fractions above and below
    assert last["clip_fraction"] == pytest.approx(last["clip_high_fraction"] + last["clip_low_fraction"])
    assert last["ratio_min"] <= 1.0 <= last["ratio_max"]


def test_trust_region_keys_against_the_update_samples():
    model = VariantPPO("MlpPolicy", "CartPole-v1", **SMALL, clip_range=0.05, clip_range_high=0.1, learning_rate=3e-3)
    model.learn(64)
    logged = model.logger.name_to_value
    assert logged["train/clip_range_high"] == 0.1
    assert 0.0 <= logged["train/clip_high_fraction"] <= 1.0 and 0.0 <= logged["train/clip_low_fraction"] <= 1.0
    assert logged["train/clip_fraction"] == pytest.approx(
        logged["train/clip_high_fraction"] + logged["train/clip_low_fraction"]
    )
    assert logged["train/ratio_max"] > 1.0 > logged["train/ratio_min"] > 0.0


def test_tensorboard_runs_are_named_after_the_class(tmp_path):
    for cls in (LogitPPO, PeakedPPO):
        cls("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=32, n_epochs=1, tensorboard_log=str(tmp_path)).learn(32)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["LogitPPO_1", "PeakedPPO_1"]
    VariantPPO("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=32, n_epochs=1, tensorboard_log=str(tmp_path)).learn(
        32, tb_log_name="mine"
    )
    assert (tmp_path / "mine_1").is_dir()
