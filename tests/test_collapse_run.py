"""A forced collapse in a plain SB3 PPO run, with the parts composed as SB3 composes EvalCallback's children.

Everything lands in one run folder: the EvalCallback's files, the SB3 logger's progress.csv,
and ``collapse_monitor/`` with the health, the kept checkpoints, the probe batch and the diagnosis.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch as th
from forced_collapse import FlipRewardAt, RewardSwitch, checkout_environment, make_env
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import EvalCallback
from stable_baselines3.common.logger import configure

from sb3_ppo_variants.collapse.callbacks import CollapseOnEval, HealthRecorder, RollbackToBest
from sb3_ppo_variants.collapse.diagnosis import load_probe
from sb3_ppo_variants.collapse.report import load_run
from sb3_ppo_variants.policies import MlpTrunk

N_STEPS = 128
FLIP_AT = 768


def _flip_model(switch: RewardSwitch, monitor_file: str | None = None) -> PPO:
    """PPO with a shared 16-16 trunk on the environment whose reward the switch flips."""
    return PPO(
        "MlpPolicy",
        make_env(switch, seed=0, monitor_file=monitor_file),
        n_steps=N_STEPS,
        batch_size=64,
        n_epochs=4,
        learning_rate=3e-3,
        seed=0,
        device="cpu",
        policy_kwargs=dict(
            features_extractor_class=MlpTrunk, features_extractor_kwargs=dict(hidden_sizes=(16, 16)), net_arch=[]
        ),
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    threads = th.get_num_threads()
    th.set_num_threads(1)
    folder = tmp_path_factory.mktemp("run")
    switch = RewardSwitch()
    model = _flip_model(switch, monitor_file=str(folder / "0"))
    model.set_logger(configure(str(folder), ["csv"]))
    rollback = RollbackToBest(lr_scale=0.5)
    on_eval = CollapseOnEval(margin=0.5, patience=2, keep_checkpoints=2, probe_size=400, callback_on_collapse=rollback)
    evaluation = EvalCallback(
        make_env(switch, seed=123),
        eval_freq=N_STEPS,
        n_eval_episodes=5,
        best_model_save_path=str(folder),
        log_path=str(folder),
        callback_after_eval=on_eval,
    )
    health = HealthRecorder(every=2, batch_size=128, save_path=folder / "collapse_monitor")
    model.learn(FLIP_AT + 6 * N_STEPS, callback=[FlipRewardAt(switch, FLIP_AT), evaluation, health])
    th.set_num_threads(threads)
    return folder, model, on_eval, health


@pytest.mark.slow
def test_forced_collapse_keeps_checkpoints_probe_and_diagnosis(run):
    folder, _model, on_eval, _ = run
    assert on_eval.save_dir == folder / "collapse_monitor"
    event = on_eval.events[0]
    assert event.source == "parent_eval"
    assert event.last_good_timesteps == FLIP_AT
    assert event.drop_start_timesteps == FLIP_AT + N_STEPS
    assert event.detected_timesteps == FLIP_AT + 2 * N_STEPS
    # K=2 before the last good one, the last good one, the drop (patience 2), and K=2 after the detection.
    kept = [item["timesteps"] for item in event.checkpoints]
    assert kept == [FLIP_AT + k * N_STEPS for k in range(-2, 5)]
    for item in event.checkpoints:
        assert (on_eval.save_dir / item["path"]).is_file()
    probe = load_probe(on_eval.save_dir / event.probe)
    assert probe.shape == (400, 1) and set(np.unique(probe)) == {-1.0, 1.0}
    diagnosis = json.loads((on_eval.save_dir / event.diagnosis).read_text())
    # The first bad evaluation comes before any update on the flipped reward has changed the policy's
    # choices: the drop is the environment's, and no layer is blamed for it.
    assert (diagnosis["summary"]["good_timesteps"], diagnosis["summary"]["bad_timesteps"]) == (
        FLIP_AT,
        FLIP_AT + N_STEPS,
    )
    assert diagnosis["summary"]["disagreement"] == 0.0
    assert diagnosis["flipping_layers"] == []
    assert all(layer["delta_norm"] > 0 for layer in diagnosis["layers"])
    trajectory = pd.read_csv(on_eval.save_dir / "collapse_1" / "probe_trajectory.csv")
    assert trajectory["kl_from_good"][trajectory["timesteps"] == FLIP_AT].item() == pytest.approx(0.0, abs=1e-6)
    # The record on disk reads back to the same events.
    record = json.loads((on_eval.save_dir / "collapse_events.json").read_text())
    assert record["events"][0]["checkpoints"] == event.checkpoints


@pytest.mark.slow
def test_rollback_restores_the_best_policy_exactly(run):
    _folder, _model, on_eval, _ = run
    assert on_eval.n_rollbacks >= 1
    assert on_eval.events[0].rollback_timesteps == on_eval.events[0].detected_timesteps
    assert on_eval.events[0].learning_rate_after == pytest.approx(1.5e-3)


@pytest.mark.slow
def test_health_is_logged_with_the_shared_gradient_ratio(run):
    folder, _, _, health = run
    assert len(health.rows) == math.ceil((FLIP_AT + 6 * N_STEPS) / N_STEPS / 2)
    assert health.shared_names == [
        "features_extractor.trunk.1.weight",
        "features_extractor.trunk.1.bias",
        "features_extractor.trunk.3.weight",
        "features_extractor.trunk.3.bias",
    ]
    table = pd.read_csv(folder / "collapse_monitor" / "health.csv")
    assert len(table) == len(health.rows)
    assert (table["feature_erank"] >= 1).all() and (table["feature_erank"] <= 16).all()
    assert (table["grad_ratio_value_policy"] > 0).all()
    progress = pd.read_csv(folder / "progress.csv")
    assert {"health/feature_erank", "health/grad_ratio_vf_pg", "health/dead_fraction"} <= set(progress.columns)


@pytest.mark.slow
def test_report_draws_the_diagnosis(run, tmp_path):
    folder, *_ = run
    logs = load_run(folder)
    assert 1 in logs.diagnoses and logs.health is not None and logs.episodes is not None
    command = [sys.executable, "-m", "sb3_ppo_variants.collapse", "report", str(folder), "-o", str(tmp_path / "r.html")]
    result = subprocess.run(command, env=checkout_environment(), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    page = (tmp_path / "r.html").read_text()
    assert "Diagnosis of collapse 1" in page
    assert "No single layer" in page
    assert "features_extractor.trunk.1" in page


def _train_with_flip(on_eval: CollapseOnEval | None) -> PPO:
    switch = RewardSwitch()
    model = _flip_model(switch)
    evaluation = EvalCallback(
        make_env(switch, seed=123), eval_freq=N_STEPS, n_eval_episodes=5, callback_after_eval=on_eval, verbose=0
    )
    model.learn(FLIP_AT + 6 * N_STEPS, callback=[FlipRewardAt(switch, FLIP_AT), evaluation])
    return model


@pytest.mark.slow
def test_a_diagnosed_collapse_leaves_training_unchanged(tmp_path):
    # Loading checkpoints builds fresh networks and the probe samples actions: neither may
    # draw from the generator training uses, or a monitored run would not be the run it watches.
    threads = th.get_num_threads()
    th.set_num_threads(1)
    on_eval = CollapseOnEval(margin=0.5, patience=2, keep_checkpoints=2, probe_size=400, save_path=tmp_path)
    monitored = _train_with_flip(on_eval)
    plain = _train_with_flip(None)
    th.set_num_threads(threads)
    assert on_eval.n_collapses >= 1 and all(event.diagnosis is not None for event in on_eval.events)
    monitored_state, plain_state = monitored.policy.state_dict(), plain.policy.state_dict()
    assert monitored_state.keys() == plain_state.keys()
    for name, tensor in monitored_state.items():
        assert th.equal(tensor, plain_state[name]), name
