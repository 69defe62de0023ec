"""CollapseMonitor: detection of a forced collapse, the kept checkpoint, rollback, configuration.

The collapse is forced with ``forced_collapse.FlipEnv`` (see that module).
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys

import pytest
import torch as th
from forced_collapse import (
    EPISODE_LENGTH,
    FlipEnv,
    FlipRewardAt,
    RewardSwitch,
    checkout_environment,
    make_env,
)
from stable_baselines3 import DQN, PPO
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_ppo_variants.callbacks import DIAGNOSTIC_KEYS, CollapseMonitor, ScaledSchedule
from sb3_ppo_variants.variant_ppo import VariantPPO

N_STEPS = 128
FLIP_AT = 2048  # a multiple of N_STEPS: the flip starts a rollout
LEARNING_RATE = 3e-3


@pytest.fixture(autouse=True)
def _one_thread():
    threads = th.get_num_threads()
    th.set_num_threads(1)
    yield
    th.set_num_threads(threads)


def make_eval_env(switch: RewardSwitch) -> DummyVecEnv:
    return make_env(switch, seed=123)


def make_ppo(env, algo=PPO, **kwargs):
    settings = dict(n_steps=N_STEPS, batch_size=64, n_epochs=4, learning_rate=LEARNING_RATE)
    return algo("MlpPolicy", env, policy_kwargs=dict(net_arch=[16]), seed=0, device="cpu", **{**settings, **kwargs})


def policy_state(model) -> dict[str, th.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.policy.state_dict().items()}


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        (dict(margin=-0.1), "margin"),
        (dict(margin=0), "margin"),
        (dict(margin=math.nan), "margin"),
        (dict(patience=0), "patience"),
        (dict(patience=-2), "patience"),
        (dict(patience=1.5), "patience"),
        (dict(patience=True), "patience"),
        (dict(relative="yes"), "relative"),
        (dict(min_best=math.inf), "min_best"),
        (dict(warmup_steps=-1), "warmup_steps"),
        (dict(return_source="episodes"), "return_source"),
        (dict(eval_env="CartPole-v1"), "eval_env"),
        (dict(eval_freq=0), "eval_freq"),
        (dict(n_eval_episodes=0), "n_eval_episodes"),
        (dict(rollout_window=0), "rollout_window"),
        (dict(lr_scale=0.0), "lr_scale"),
        (dict(lr_scale=1.5), "lr_scale"),
        (dict(diagnostics_window=-1), "diagnostics_window"),
        (dict(extra_keys="train/loss"), "extra_keys"),
        (dict(save_path=3), "save_path"),
    ],
)
def test_bad_configuration_raises_value_error_naming_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        CollapseMonitor(**kwargs)


def test_eval_env_with_rollout_source_is_rejected():
    with pytest.raises(ValueError, match="eval_env"):
        CollapseMonitor(eval_env=FlipEnv(RewardSwitch()), return_source="rollout")


def test_return_source_eval_without_an_evaluation_raises_at_training_start(tmp_path):
    model = make_ppo(make_env(RewardSwitch()))
    with pytest.raises(ValueError, match="return_source='eval'"):
        model.learn(N_STEPS, callback=CollapseMonitor(return_source="eval", save_path=tmp_path))


def test_threshold_is_relative_to_the_magnitude_of_the_best():
    relative = CollapseMonitor(margin=0.5)
    absolute = CollapseMonitor(margin=50, relative=False)
    assert relative.threshold == -math.inf
    for monitor, best, expected in ((relative, -200.0, -300.0), (relative, 10.0, 5.0), (absolute, 10.0, -40.0)):
        monitor.best_return = best
        assert monitor.threshold == pytest.approx(expected)


def test_rl_zoo_builds_it_from_yaml_keywords():
    from rl_zoo3.utils import get_callback_list

    spec = {"sb3_ppo_variants.callbacks.CollapseMonitor": {"margin": 50, "relative": False, "patience": 2}}
    (monitor,) = get_callback_list({"callback": [spec]})
    assert isinstance(monitor, CollapseMonitor)
    assert (monitor.margin, monitor.relative, monitor.patience) == (50.0, False, 2)


def test_scaled_schedule_multiplies_nested_scales():
    schedule = ScaledSchedule(ScaledSchedule(lambda progress: 2.0 * progress, 0.5), 0.25)
    assert schedule.scale == 0.125
    assert schedule(1.0) == pytest.approx(0.25)


# --------------------------------------------------------------------------- detection


class ScriptedEvalCallback(EvalCallback):
    """An EvalCallback whose evaluations return a scripted sequence, to pin the detection rule."""

    def __init__(self, script: list[float], monitor: CollapseMonitor, eval_freq: int):
        super().__init__(make_eval_env(RewardSwitch()), callback_after_eval=monitor, eval_freq=eval_freq, verbose=0)
        self.script = list(script)

    def _on_step(self) -> bool:
        if self.n_calls % self.eval_freq == 0 and self.script:
            self.last_mean_reward = self.script.pop(0)
            return self._on_event()
        return True


@pytest.mark.parametrize(
    ("script", "kwargs", "detected_at", "best"),
    [
        # A dip that recovers resets the count; the second, longer dip is one collapse, not two.
        ([10, 10, 4, 4, 6, 4, 4, 4, 4, 4], dict(patience=3), [8], 10),
        # Recovery above the threshold closes the event; the next drop is a new one.
        ([10, 4, 4, 9, 4, 4], dict(patience=2), [3, 6], 10),
        # Exactly at the threshold is not below it.
        ([10, 5, 5, 5], dict(patience=1), [], 10),
        # Absolute margin in return units.
        ([10, 7, 7, 6.5], dict(margin=3, relative=False, patience=2), [], 10),
        ([10, 7, 6.9, 6.9], dict(margin=3, relative=False, patience=2), [4], 10),
        # Negative returns: the threshold is best - margin * |best| = -150.
        ([-100, -120, -160, -160], dict(patience=2), [4], -100),
        # Returns before warmup_steps neither set the best nor count.
        ([100, 100, 10, 4, 4], dict(patience=2, warmup_steps=3 * 64), [5], 10),
        # A best below min_best never was a good policy.
        ([10, 0, 0, 0], dict(patience=2, min_best=20), [], 10),
    ],
)
def test_detection_rule_on_scripted_returns(tmp_path, script, kwargs, detected_at, best):
    monitor = CollapseMonitor(save_path=tmp_path, **{"margin": 0.5, **kwargs})
    model = make_ppo(make_env(RewardSwitch()), n_steps=64)
    model.learn(64 * len(script), callback=ScriptedEvalCallback(script, monitor, eval_freq=64))
    assert [row["return"] for row in monitor.returns] == script
    assert [event.detected_timesteps for event in monitor.events] == [64 * k for k in detected_at]
    assert monitor.best_return == best
    assert [row["event"] for row in monitor.returns if row["event"] is not None] == list(range(1, len(detected_at) + 1))


def run_with_own_evaluation(tmp_path, **monitor_kwargs):
    switch = RewardSwitch()
    model = make_ppo(make_env(switch))
    model.set_logger(configure(str(tmp_path), ["csv"]))
    monitor = CollapseMonitor(
        margin=0.5,
        patience=2,
        eval_env=make_eval_env(switch),
        eval_freq=N_STEPS,
        n_eval_episodes=5,
        save_path=tmp_path / "collapse_monitor",
        **monitor_kwargs,
    )
    return model, monitor, switch


@pytest.mark.slow
def test_forced_collapse_is_detected_at_the_second_evaluation_below_threshold(tmp_path):
    model, monitor, switch = run_with_own_evaluation(tmp_path)
    model.learn(FLIP_AT + 3 * N_STEPS, callback=[FlipRewardAt(switch, FLIP_AT), monitor])

    assert monitor.following == "own_eval"
    assert monitor.n_collapses == 1
    (event,) = monitor.events
    # The first evaluation after the flip falls below best/2, patience 2 confirms it one evaluation later.
    assert event.drop_start_timesteps == FLIP_AT + N_STEPS
    assert event.detected_timesteps == FLIP_AT + 2 * N_STEPS
    assert event.last_good_timesteps == FLIP_AT
    assert event.best_return == pytest.approx(EPISODE_LENGTH)
    assert event.best_timesteps < FLIP_AT
    assert all(value < EPISODE_LENGTH / 2 for value in event.returns_below)
    assert len(event.returns_below) == 2

    # Diagnostics: one row per PPO update, stamped with the timestep it trained on.
    rows = list(monitor.diagnostics)
    assert [row["timesteps"] for row in rows] == list(range(N_STEPS, FLIP_AT + 4 * N_STEPS, N_STEPS))
    assert [row["n_updates"] for row in rows] == [4 * (i + 1) for i in range(len(rows))]
    for name in ("entropy", "approx_kl", "clip_fraction", "value_loss", "explained_variance", "learning_rate"):
        assert all(math.isfinite(row[name]) for row in rows), name
    # Plain PPO records neither: kept as NaN rather than failing.
    assert all(math.isnan(row["pseudo_entropy"]) and math.isnan(row["grad_norm"]) for row in rows)
    assert all(0.0 < row["entropy"] <= math.log(2) + 1e-6 for row in rows)

    # "during" holds the updates between the last good evaluation and the detection.
    during_steps = [row["timesteps"] for row in event.diagnostics_window if row["timesteps"] >= FLIP_AT]
    assert during_steps == [FLIP_AT, FLIP_AT + N_STEPS]
    assert len(event.diagnostics_window) == 10 + 2
    assert event.diagnostics_during["approx_kl"]["max"] > 0.0
    assert event.diagnostics_during["grad_norm"]["mean"] is None or math.isnan(
        event.diagnostics_during["grad_norm"]["mean"]
    )

    # Machine-readable records, and the collapse/ keys in the SB3 logger output.
    save_dir = tmp_path / "collapse_monitor"
    record = json.loads((save_dir / "collapse_events.json").read_text())
    assert record["events"][0]["detected_timesteps"] == FLIP_AT + 2 * N_STEPS
    assert record["events"][0]["diagnostics_during"]["grad_norm"]["mean"] is None
    returns_csv = (save_dir / "collapse_returns.csv").read_text().splitlines()
    assert returns_csv[0].startswith("timesteps,return,best_return")
    assert len(returns_csv) == 1 + len(monitor.returns) == 1 + (FLIP_AT + 3 * N_STEPS) // N_STEPS
    diagnostics_csv = (save_dir / "collapse_diagnostics.csv").read_text().splitlines()
    assert len(diagnostics_csv) == 1 + len(rows)
    progress_header = (tmp_path / "progress.csv").read_text().splitlines()[0].split(",")
    assert {"collapse/return", "collapse/best_return", "collapse/n_collapses"} <= set(progress_header)


@pytest.mark.slow
def test_no_collapse_without_the_flip_or_below_min_best(tmp_path):
    model, monitor, switch = run_with_own_evaluation(tmp_path / "a")
    model.learn(FLIP_AT + 3 * N_STEPS, callback=monitor)
    assert monitor.n_collapses == 0
    assert monitor.best_return == pytest.approx(EPISODE_LENGTH)

    # min_best above any reachable return: the same flip is not a collapse of a good policy.
    model, monitor, switch = run_with_own_evaluation(tmp_path / "b", min_best=EPISODE_LENGTH + 1)
    model.learn(FLIP_AT + 3 * N_STEPS, callback=[FlipRewardAt(switch, FLIP_AT), monitor])
    assert monitor.n_collapses == 0
    assert monitor.returns[-1]["below_count"] >= 2


@pytest.mark.slow
def test_kept_checkpoint_loads_and_scores_at_its_best(tmp_path):
    model, monitor, switch = run_with_own_evaluation(tmp_path)
    model.learn(FLIP_AT + 3 * N_STEPS, callback=[FlipRewardAt(switch, FLIP_AT), monitor])
    (event,) = monitor.events

    kept = PPO.load(tmp_path / "collapse_monitor" / event.checkpoint, device="cpu")
    before_flip = make_eval_env(RewardSwitch())
    score, _ = evaluate_policy(kept, before_flip, n_eval_episodes=20, deterministic=True)
    assert score == pytest.approx(event.best_return, abs=0.5)
    # The collapsed policy, on the same unflipped env, is not what was kept.
    flipped = RewardSwitch()
    flipped.flipped = True
    collapsed_score, _ = evaluate_policy(kept, make_eval_env(flipped), n_eval_episodes=20, deterministic=True)
    assert collapsed_score < EPISODE_LENGTH / 2


class RecordStateAtRollback(BaseCallback):
    """Placed after the monitor: sees the model right after the rollback, before any update."""

    def __init__(self, monitor: CollapseMonitor):
        super().__init__()
        self.monitor = monitor
        self.state: dict[str, th.Tensor] | None = None
        self.optimizer_state: dict | None = None
        self.timesteps: int | None = None

    def _on_rollout_start(self) -> None:
        if self.monitor.n_rollbacks == 1 and self.state is None:
            self.state = policy_state(self.model)
            # state_dict() aliases the live moments, which later updates change in place.
            self.optimizer_state = copy.deepcopy(self.model.policy.optimizer.state_dict())
            self.timesteps = self.model.num_timesteps

    def _on_step(self) -> bool:
        return True


@pytest.mark.slow
def test_rollback_restores_the_kept_policy_and_scales_the_learning_rate(tmp_path):
    model, monitor, switch = run_with_own_evaluation(tmp_path, rollback=True, lr_scale=0.25)
    probe = RecordStateAtRollback(monitor)
    model.learn(FLIP_AT + 5 * N_STEPS, callback=[FlipRewardAt(switch, FLIP_AT), monitor, probe])

    # The kept policy also scores 0 on the flipped reward: a second collapse, a second rollback.
    assert monitor.n_collapses == monitor.n_rollbacks == 2
    first, second = monitor.events
    # Rolled back at the first rollout start after the detection, before collecting more data.
    assert probe.timesteps == first.rollback_timesteps == first.detected_timesteps == FLIP_AT + 2 * N_STEPS
    assert second.detected_timesteps == second.rollback_timesteps == FLIP_AT + 4 * N_STEPS
    assert second.best_timesteps == first.best_timesteps
    # The second drop is measured from the restored policy, not from the first good stretch.
    assert second.last_good_timesteps == first.rollback_timesteps
    # ... and its "during" updates are the ones of the restored policy only, all at the scaled rate.
    during = [row for row in second.diagnostics_window if row["timesteps"] > second.last_good_timesteps]
    assert [row["timesteps"] for row in during] == [FLIP_AT + 3 * N_STEPS]
    assert second.diagnostics_during["learning_rate"]["max"] == pytest.approx(0.25 * LEARNING_RATE)

    kept = PPO.load(tmp_path / "collapse_monitor" / first.checkpoint, device="cpu")
    assert probe.state is not None and probe.state.keys() == kept.policy.state_dict().keys()
    for name, tensor in kept.policy.state_dict().items():
        assert th.equal(probe.state[name], tensor), name
    # The optimizer state comes back with the parameters (Adam moments of the kept policy).
    kept_moments = kept.policy.optimizer.state_dict()["state"]
    restored_moments = probe.optimizer_state["state"]
    assert kept_moments.keys() == restored_moments.keys()
    for index, state in kept_moments.items():
        for moment in ("exp_avg", "exp_avg_sq"):
            assert th.equal(state[moment], restored_moments[index][moment]), moment
    assert all(group["lr"] == pytest.approx(0.25 * LEARNING_RATE) for group in probe.optimizer_state["param_groups"])

    # Each rollback multiplies the schedule once more; the logged learning rate follows.
    assert first.learning_rate_after == pytest.approx(0.25 * LEARNING_RATE)
    assert second.learning_rate_after == pytest.approx(0.0625 * LEARNING_RATE)
    logged = {row["timesteps"]: row["learning_rate"] for row in monitor.diagnostics}
    assert logged[FLIP_AT + 2 * N_STEPS] == pytest.approx(LEARNING_RATE)
    assert logged[FLIP_AT + 3 * N_STEPS] == pytest.approx(0.25 * LEARNING_RATE)
    assert logged[FLIP_AT + 5 * N_STEPS] == pytest.approx(0.0625 * LEARNING_RATE)
    assert model.lr_schedule(0.3) == pytest.approx(0.0625 * LEARNING_RATE)
    # The scale persists through save and load.
    model.save(tmp_path / "after_rollback.zip")
    assert PPO.load(tmp_path / "after_rollback.zip").lr_schedule(1.0) == pytest.approx(0.0625 * LEARNING_RATE)


@pytest.mark.slow
@pytest.mark.parametrize("monitor_first", [True, False])
def test_follows_an_eval_callback_in_the_same_list(tmp_path, monitor_first):
    switch = RewardSwitch()
    model = make_ppo(make_env(switch))
    evaluation = EvalCallback(
        make_eval_env(switch), eval_freq=N_STEPS, n_eval_episodes=5, best_model_save_path=str(tmp_path), verbose=0
    )
    monitor = CollapseMonitor(margin=0.5, patience=2)
    pair = [monitor, evaluation] if monitor_first else [evaluation, monitor]
    model.learn(FLIP_AT + 3 * N_STEPS, callback=[FlipRewardAt(switch, FLIP_AT), *pair])

    assert monitor.following == "sibling_eval"
    assert monitor.save_dir == tmp_path / "collapse_monitor"
    assert [row["timesteps"] for row in monitor.returns] == list(range(N_STEPS, FLIP_AT + 4 * N_STEPS, N_STEPS))
    (event,) = monitor.events
    assert event.detected_timesteps == FLIP_AT + 2 * N_STEPS
    # EvalCallback dumps the logger mid-rollout; reading at rollout start still sees every update.
    assert len(monitor.diagnostics) == (FLIP_AT + 3 * N_STEPS) // N_STEPS
    assert all(math.isfinite(row["approx_kl"]) for row in monitor.diagnostics)
    assert (tmp_path / "collapse_monitor" / "collapse_1_best_model.zip").is_file()


@pytest.mark.slow
def test_works_as_callback_after_eval(tmp_path):
    switch = RewardSwitch()
    model = make_ppo(make_env(switch))
    monitor = CollapseMonitor(margin=0.5, patience=2, rollback=True, save_path=tmp_path)
    evaluation = EvalCallback(
        make_eval_env(switch), callback_after_eval=monitor, eval_freq=N_STEPS, n_eval_episodes=5, verbose=0
    )
    model.learn(FLIP_AT + 3 * N_STEPS, callback=[FlipRewardAt(switch, FLIP_AT), evaluation])

    assert monitor.following == "parent_eval"
    assert monitor.events[0].detected_timesteps == FLIP_AT + 2 * N_STEPS
    # No rollout events reach a child callback: it rolls back at the evaluation itself.
    assert monitor.events[0].rollback_timesteps == FLIP_AT + 2 * N_STEPS
    assert monitor.n_rollbacks == 1
    # Diagnostics arrive through the logger dumps instead of rollout starts.
    assert len(monitor.diagnostics) >= FLIP_AT // N_STEPS
    assert all(math.isfinite(row["approx_kl"]) for row in monitor.diagnostics)


@pytest.mark.slow
def test_follows_the_rollout_return_without_evaluation(tmp_path):
    switch = RewardSwitch()
    model = make_ppo(make_env(switch))
    monitor = CollapseMonitor(margin=0.5, patience=2, rollout_window=10, save_path=tmp_path)
    model.learn(FLIP_AT + 4 * N_STEPS, callback=[FlipRewardAt(switch, FLIP_AT), monitor])

    assert monitor.following == "rollout"
    assert [row["timesteps"] for row in monitor.returns] == list(range(N_STEPS, FLIP_AT + 5 * N_STEPS, N_STEPS))
    assert monitor.best_return > 0.9 * EPISODE_LENGTH
    (event,) = monitor.events
    # The rollout ending at FLIP_AT + N_STEPS is the first one played entirely on the flipped reward.
    assert event.drop_start_timesteps == FLIP_AT + N_STEPS
    assert event.detected_timesteps == FLIP_AT + 2 * N_STEPS
    assert event.return_at_detection < EPISODE_LENGTH / 2


@pytest.mark.slow
def test_records_variant_ppo_pseudo_entropy_and_grad_norm(tmp_path):
    model = make_ppo(make_env(RewardSwitch()), algo=VariantPPO)
    monitor = CollapseMonitor(save_path=tmp_path, extra_keys=["train/policy_gradient_loss"])
    model.learn(4 * N_STEPS, callback=monitor)
    rows = list(monitor.diagnostics)
    assert [row["timesteps"] for row in rows] == [N_STEPS, 2 * N_STEPS, 3 * N_STEPS, 4 * N_STEPS]
    for name in ("pseudo_entropy", "grad_norm", "train/policy_gradient_loss"):
        assert all(math.isfinite(row[name]) for row in rows), name
    # Pseudo-entropy of two actions lies in [0, 1/2].
    assert all(0.0 <= row["pseudo_entropy"] <= 0.5 for row in rows)
    header = (tmp_path / "collapse_diagnostics.csv").read_text().splitlines()[0].split(",")
    assert header == ["timesteps", "n_updates", *DIAGNOSTIC_KEYS, "learning_rate", "train/policy_gradient_loss"]


@pytest.mark.slow
def test_rollback_works_for_an_off_policy_algorithm(tmp_path):
    model = DQN(
        "MlpPolicy",
        make_env(RewardSwitch()),
        learning_rate=1e-3,
        learning_starts=100,
        train_freq=4,
        target_update_interval=100,
        policy_kwargs=dict(net_arch=[16]),
        seed=0,
        device="cpu",
    )
    monitor = CollapseMonitor(save_path=tmp_path, lr_scale=0.5, extra_keys=["train/loss"])
    model.learn(600, callback=monitor)
    assert monitor.best_model_path is not None
    assert monitor.diagnostics and all(math.isfinite(row["train/loss"]) for row in monitor.diagnostics)

    kept = DQN.load(monitor.best_model_path, device="cpu")
    with th.no_grad():
        for parameter in model.policy.parameters():
            parameter.add_(1.0)
    learning_rate = monitor.rollback_to_best()
    for name, tensor in kept.policy.state_dict().items():
        assert th.equal(model.policy.state_dict()[name], tensor), name
    assert learning_rate == pytest.approx(5e-4)
    assert model.policy.optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)


# --------------------------------------------------------------------------- rl-zoo3


@pytest.mark.slow
def test_enabled_from_an_rl_zoo_yml(tmp_path):
    config = tmp_path / "ppo.yml"
    config.write_text(
        "CartPole-v1:\n"
        "  n_envs: 1\n"
        "  n_timesteps: !!float 1024\n"
        "  policy: 'MlpPolicy'\n"
        "  n_steps: 256\n"
        "  batch_size: 64\n"
        "  n_epochs: 2\n"
        "  policy_kwargs: 'dict(net_arch=[16])'\n"
        "  callback:\n"
        "    - sb3_ppo_variants.callbacks.CollapseMonitor:\n"
        "        margin: 50\n"
        "        relative: false\n"
        "        patience: 2\n"
    )
    command = [sys.executable, "-m", "rl_zoo3.train", "--algo", "ppo", "--env", "CartPole-v1"]
    command += ["-conf", str(config), "-f", str(tmp_path / "logs"), "--eval-freq", "256", "--eval-episodes", "2"]
    command += ["--seed", "0", "--num-threads", "1", "--device", "cpu"]
    # The package may not be installed: the subprocess imports it from the checkout.
    result = subprocess.run(
        command, cwd=tmp_path, env=checkout_environment(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]

    # It follows the zoo's EvalCallback and writes into the zoo's run folder.
    save_dir = tmp_path / "logs" / "ppo" / "CartPole-v1_1" / "collapse_monitor"
    record = json.loads((save_dir / "collapse_events.json").read_text())
    assert record["following"] == "sibling_eval"
    assert record["margin"] == 50
    returns = (save_dir / "collapse_returns.csv").read_text().splitlines()
    assert len(returns) == 1 + 1024 // 256
    assert (save_dir / "best_model.zip").is_file()
