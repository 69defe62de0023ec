"""Schedules over the whole of training: read past the end, never a reason for ``learn()`` to raise.

SB3 collects whole rollouts, so when the budget is not a multiple of ``n_envs × n_steps`` the last rollout
overshoots it and the last update sees a progress remaining below 0. Every value the constructor accepts
must still train to the end and save.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch as th
import yaml
from rl_zoo3.exp_manager import ExperimentManager
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.utils import LinearSchedule

from sb3_ppo_variants import TRPPO, LogitPPO, TrulyPPO, VariantPPO
from sb3_ppo_variants.registry import VARIANTS
from sb3_ppo_variants.variant_ppo import LOGIT_CLIP_RANGE_MAX, as_schedule, scheduled_value
from sb3_ppo_variants.zoo import ALGORITHM_CLASS_NAMES, hyperparams_file, register

th.set_num_threads(1)

# 2 envs x 16 steps = 32 per rollout; a budget of 100 takes 4 rollouts (128 steps): progress −0.28 at the end
ROLLOUT = dict(n_steps=16, batch_size=16, n_epochs=2)
BUDGET = 100


def _env():
    return make_vec_env("CartPole-v1", n_envs=2, seed=0)


# --------------------------------------------------------------------------- the per-update value


def test_a_schedule_past_the_end_is_read_at_its_end():
    # rl-zoo3's lin_0.2 at the progress of an overshooting last rollout: SB3 would use ε = −0.0048
    assert scheduled_value(lambda progress: 0.2 * progress, -0.024) == 0.0
    # the end value of the schedule, not its extrapolation (0.05 at −0.5)
    assert scheduled_value(lambda progress: 0.1 + 0.1 * progress, -0.5) == pytest.approx(0.1)
    assert scheduled_value(LinearSchedule(0.2, 0.0, 1.0), 0.25) == pytest.approx(0.05)
    assert scheduled_value(lambda _: 0.3, 0.7) == 0.3  # inside the range: the schedule's own value


def test_a_value_outside_the_range_between_checked_points_is_projected():
    assert scheduled_value(lambda _: 1.5, 0.5, upper=LOGIT_CLIP_RANGE_MAX) == LOGIT_CLIP_RANGE_MAX
    assert LOGIT_CLIP_RANGE_MAX < 1.0 and np.float32(LOGIT_CLIP_RANGE_MAX) < 1.0
    assert scheduled_value(lambda _: -0.1, 0.5) == 0.0
    assert scheduled_value(lambda progress: math.nan if progress == 0.5 else 0.07, 0.5) == 0.07


def test_the_zoo_lin_string_is_a_linear_schedule_to_zero():
    schedule = as_schedule("lin_0.0008")
    assert schedule(1.0) == pytest.approx(0.0008)
    assert schedule(0.25) == pytest.approx(0.0002)
    assert schedule(0.0) == 0.0
    assert as_schedule(0.03)(0.4) == 0.03


# --------------------------------------------------------------------------- construction checks schedules whole


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        # 1 in the middle of training only: the ends alone would pass
        (dict(delta_target_policy="logit", clip_range=lambda f: 4 * f * (1 - f)), r"clip_range must be in \[0, 1\)"),
        (dict(clip_range_high="lin_x"), r"clip_range_high: a schedule string must be 'lin_<initial value>'"),
        (dict(kl_trust_region="lin_0"), r"kl_trust_region must be None, a finite float > 0, or a schedule"),
        (dict(kl_trust_region="exp_0.01"), r"kl_trust_region must be None, a finite float > 0, or a schedule"),
        (dict(kl_trust_region=lambda f: f - 0.5), r"kl_trust_region must be .* got a schedule from 0\.5 to -0\.5"),
        (dict(kl_trust_region=0.0), r"kl_trust_region must be None, a finite float > 0"),
    ],
)
def test_schedules_are_checked_over_the_whole_of_training(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        VariantPPO("MlpPolicy", "CartPole-v1", **kwargs)


# --------------------------------------------------------------------------- every preset, past the end


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda variant: variant.name)
def test_every_preset_with_linear_schedules_trains_to_the_end_and_saves(variant, tmp_path):
    model = variant.algorithm_class(
        "MlpPolicy",
        _env(),
        **ROLLOUT,
        learning_rate=lambda progress: 1e-3 * progress,
        clip_range=lambda progress: 0.2 * progress,
        seed=0,
    )
    model.learn(BUDGET)
    assert model.num_timesteps == 128 and model._current_progress_remaining < 0.0
    assert model.logger.name_to_value["train/clip_range"] == 0.0
    model.save(tmp_path / "model")
    assert variant.algorithm_class.load(tmp_path / "model").num_timesteps == 128


@pytest.mark.parametrize("cls", [TrulyPPO, TRPPO])
def test_a_kl_trust_region_schedule_is_read_each_update_and_logged(cls):
    model = cls("MlpPolicy", _env(), **ROLLOUT, kl_trust_region="lin_0.03", seed=0)
    seen = []

    class Record(BaseCallback):
        def _on_rollout_start(self) -> None:
            if "train/kl_trust_region" in self.model.logger.name_to_value:
                seen.append(self.model.logger.name_to_value["train/kl_trust_region"])

        def _on_step(self) -> bool:
            return True

    model.learn(BUDGET, callback=Record())
    # δ = 0.03 × progress after rollouts of 32, 64 and 96 steps, then the overshooting one (128 > 100)
    np.testing.assert_allclose(seen, [0.03 * (1 - 32 / 100), 0.03 * (1 - 64 / 100), 0.03 * (1 - 96 / 100)])
    assert model.logger.name_to_value["train/kl_trust_region"] == 0.0
    assert model.kl_trust_region == "lin_0.03"  # the raw value is what is saved


def test_the_overshooting_update_is_the_only_difference_from_sb3():
    """SB3 reads lin_ at the negative progress (ε < 0 inverts its clamp); VariantPPO reads ε = 0 there."""

    class Parameters(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.after_each_update: list[list[th.Tensor]] = []

        def _on_rollout_start(self) -> None:
            self.after_each_update.append([p.detach().clone() for p in self.model.policy.parameters()])

        def _on_training_end(self) -> None:
            self._on_rollout_start()

        def _on_step(self) -> bool:
            return True

    snapshots = {}
    clip_ranges = {}
    for cls in (PPO, VariantPPO):
        recorder = Parameters()
        model = cls("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, n_epochs=2, seed=3,
                    clip_range=lambda progress: 0.2 * progress)  # fmt: skip
        model.learn(150, callback=recorder)  # 3 rollouts of 64: the last update sees progress 1 − 192/150
        snapshots[cls] = recorder.after_each_update
        clip_ranges[cls] = model.logger.name_to_value["train/clip_range"]
    assert clip_ranges[PPO] == pytest.approx(0.2 * (1 - 192 / 150)) and clip_ranges[VariantPPO] == 0.0
    reference, variant = snapshots[PPO], snapshots[VariantPPO]
    assert len(reference) == len(variant) == 4  # the start, then after each of the three updates
    for before_last in range(3):
        for expected, actual in zip(reference[before_last], variant[before_last], strict=True):
            th.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    assert any(not th.allclose(a, b) for a, b in zip(reference[3], variant[3], strict=True))


def test_the_logit_target_at_a_schedule_end_trains():
    model = LogitPPO("MlpPolicy", _env(), **ROLLOUT, clip_range=LinearSchedule(0.2, 0.0, 1.0), seed=0)
    model.learn(BUDGET)
    assert model.logger.name_to_value["train/clip_range"] == 0.0
    assert all(np.isfinite(v) for k, v in model.logger.name_to_value.items() if k.startswith("train/"))


# --------------------------------------------------------------------------- every shipped zoo entry


SCHEDULE_KEYS = ("learning_rate", "clip_range", "clip_range_high", "kl_trust_region")
ENTRY_ENVS = {"CartPole-v1": "CartPole-v1", "atari": "PongNoFrameskip-v4"}


def _entries_with_linear_schedules():
    for algo_id in sorted(ALGORITHM_CLASS_NAMES):
        for section, entry in yaml.safe_load(hyperparams_file(algo_id).read_text()).items():
            scheduled = [key for key in SCHEDULE_KEYS if str(entry.get(key, "")).startswith("lin_")]
            if scheduled:
                assert section in ENTRY_ENVS, f"{algo_id}.yml [{section}] has {scheduled}: give it an env here"
                yield pytest.param(algo_id, ENTRY_ENVS[section], id=f"{algo_id}-{section}")


@pytest.mark.parametrize(("algo_id", "env_id"), list(_entries_with_linear_schedules()))
def test_every_shipped_entry_with_a_linear_schedule_trains_past_the_end_and_saves(algo_id, env_id, tmp_path):
    """The zoo's own pipeline: read the entry, train a budget that overshoots, save (rl-zoo3 saves only then)."""
    register()
    shrink = {"n_envs": 1, "n_steps": 32, "batch_size": 32} if env_id.startswith("Pong") else {}
    experiment = ExperimentManager(
        argparse.Namespace(algo=algo_id, env=env_id),
        algo_id,
        env_id,
        str(tmp_path / "logs"),
        eval_freq=-1,
        n_timesteps=40 if shrink else 300,  # 2 rollouts of 32, or of 8 envs x 32: neither a multiple
        hyperparams=shrink,
        log_interval=-1,
        seed=0,
        verbose=0,
    )
    model, _ = experiment.setup_experiment()
    experiment.learn(model)
    experiment.save_trained_model(model)
    assert model._current_progress_remaining < 0.0
    assert (tmp_path / "logs" / algo_id / f"{env_id}_1" / f"{env_id}.zip").is_file()


class _StopAfterFirstUpdate(BaseCallback):
    def _on_step(self) -> bool:
        return self.model._n_updates == 0


@pytest.mark.parametrize(("algo_id", "delta", "alpha"), [("ppo_truly", 0.0008, 20.0), ("ppo_tr", 0.001, 0.0)])
def test_the_zoo_atari_entries_are_the_reference_settings(algo_id, delta, alpha, tmp_path):
    """rl-zoo3 builds Pong with the reference's Atari δ, decaying from the start of training, and α."""
    register()
    experiment = ExperimentManager(
        argparse.Namespace(algo=algo_id, env="PongNoFrameskip-v4"),
        algo_id,
        "PongNoFrameskip-v4",
        str(tmp_path / "logs"),
        eval_freq=-1,
        seed=0,
        verbose=0,
    )
    model, _ = experiment.setup_experiment()
    try:
        assert model.restoring_slope == alpha and model.ent_coef == 0.0 and model.n_envs == 8
        assert model._kl_trust_region_schedule(1.0) == pytest.approx(delta)
        assert model._kl_trust_region_schedule(0.0) == 0.0
        if algo_id != "ppo_truly":  # one Pong update is enough to show the δ used
            return
        model.learn(model._total_timesteps or 10_000_000, callback=_StopAfterFirstUpdate())  # one rollout of 1024
        assert model.num_timesteps == 8 * 128 + 8  # stopped at the first step of the second rollout
        used = model.logger.name_to_value["train/kl_trust_region"]
        assert used == pytest.approx(delta * (1 - 8 * 128 / 1e7))
    finally:
        model.env.close()
