"""A Pong run stopped at any point continues from its last checkpoint with rl-zoo3's ``-i`` (benchmark/pong.py)."""

import json
import signal
import sys
import time
import zipfile

import gymnasium as gym
import pytest
import torch as th
import yaml
from gymnasium.wrappers import TimeAwareObservation

from sb3_ppo_variants import LogitPPO
from sb3_ppo_variants.benchmark import pong

TARGET = 8192
SAVE_FREQ = 256  # one rollout of the shipped CartPole entry (8 environments × 32 steps)


def _optimizer_steps(model) -> int:
    steps = {int(state["step"]) for state in model.policy.optimizer.state_dict()["state"].values()}
    assert len(steps) == 1
    return steps.pop()


@pytest.mark.slow
def test_a_killed_zoo_run_continues_from_its_last_checkpoint(zoo, tmp_path):
    th.set_num_threads(1)
    logs, runs = tmp_path / "logs", tmp_path / "runs"
    command = pong.train_command("ppo_logit", logs, runs, TARGET, env_id="CartPole-v1", save_freq=SAVE_FREQ)
    assert command is not None and "-i" not in command and command[-2:] == ["-n", str(TARGET)]
    first = zoo.popen(command, cwd=tmp_path)
    run = logs / "ppo_logit" / "CartPole-v1_1"
    deadline = time.monotonic() + 180
    while not any((pong.checkpoint_steps(path) or 0) >= 4 * SAVE_FREQ for path in run.glob("rl_model_*.zip")):
        assert first.poll() is None, f"the run ended before it was killed: {first.communicate()}"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    assert first.returncode == -signal.SIGKILL
    assert not (run / "CartPole-v1.zip").exists()
    written = max(pong.checkpoint_steps(path) for path in run.glob("rl_model_*.zip"))

    kept = pong.snapshot(logs, runs, "ppo_logit", env_id="CartPole-v1")
    # the newest checkpoint, or the one before when the kill cut its writing short: at most one interval lost
    assert kept is not None and kept.steps in (written, written - SAVE_FREQ) and kept.steps >= 3 * SAVE_FREQ
    assert kept.path == runs / "ppo_logit" / f"rl_model_{kept.steps}_steps.zip"
    assert sorted(path.name for path in (runs / "ppo_logit" / "from_0").iterdir()) == [
        *(f"{rank}.monitor.csv" for rank in range(8)), "args.yml", "command.txt", "config.yml"
    ]  # fmt: skip
    checkpoint = LogitPPO.load(kept.path, device="cpu")
    assert checkpoint.num_timesteps == kept.steps

    command = pong.train_command("ppo_logit", logs, runs, TARGET, env_id="CartPole-v1", save_freq=SAVE_FREQ)
    assert command is not None and command[-4:] == ["-i", str(kept.path), "-n", str(TARGET - kept.steps)]
    result = zoo.run(command, cwd=tmp_path, timeout=240)
    assert result.returncode == 0, zoo.describe(result)
    resumed = logs / "ppo_logit" / "CartPole-v1_2"
    assert pong.segment_start(resumed, "CartPole-v1") == kept.steps
    final = LogitPPO.load(resumed / "CartPole-v1.zip", device="cpu")
    assert kept.steps + final.num_timesteps == TARGET

    # saved at the last step of the resumed run's first rollout, before its first update: the checkpoint itself
    start = LogitPPO.load(resumed / f"rl_model_{SAVE_FREQ}_steps.zip", device="cpu")
    for name, tensor in checkpoint.policy.state_dict().items():
        assert th.equal(start.policy.state_dict()[name], tensor), name
    loaded_state = checkpoint.policy.optimizer.state_dict()["state"]
    start_state = start.policy.optimizer.state_dict()["state"]
    assert loaded_state.keys() == start_state.keys() and loaded_state
    for index, state in loaded_state.items():
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert th.equal(start_state[index][key], state[key]), (index, key)
    # and Adam went on from there: its step count and the update counter add up over both segments
    rollouts = (TARGET - kept.steps) // (final.n_steps * final.n_envs)
    gradient_steps = rollouts * final.n_epochs * (final.n_steps * final.n_envs // final.batch_size)
    assert _optimizer_steps(final) == _optimizer_steps(checkpoint) + gradient_steps
    assert final._n_updates == checkpoint._n_updates + rollouts * final.n_epochs
    assert final.delta_target_policy == "logit"

    finished = pong.snapshot(logs, runs, "ppo_logit", env_id="CartPole-v1")
    assert finished is not None and finished.steps == TARGET
    assert [path.name for path in (runs / "ppo_logit").glob("rl_model_*")] == [f"rl_model_{TARGET}_steps.zip"]
    assert pong.train_command("ppo_logit", logs, runs, TARGET, env_id="CartPole-v1") is None
    # the checkpoint nearest 1000 steps: 1024, of the first segment or of the second, scored greedy and sampled
    evaluation = pong.evaluate(logs, runs, "ppo_logit", 1000, episodes=2, env_id="CartPole-v1")
    assert evaluation["steps"] == 1024
    assert evaluation["checkpoint"] in ("rl_model_1024_steps.zip", f"rl_model_{1024 - kept.steps}_steps.zip")
    for mode in ("deterministic", "stochastic"):
        assert len(evaluation[mode]["scores"]) == 2
        assert all(9 <= score <= 500 for score in evaluation[mode]["scores"])  # CartPole's bounds
    assert json.loads((runs / "ppo_logit" / "evaluation_1000.json").read_text())["steps"] == 1024
    games = pong.training_games(runs, "ppo_logit", frame_skip=1)
    assert set(games["segment"]) == {0, kept.steps}
    assert games.loc[games["segment"] == 0, "steps"].max() <= kept.steps
    assert games.loc[games["segment"] == kept.steps, "steps"].between(kept.steps, TARGET).all()


def _saved_model(path, num_timesteps, complete=True):
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("data", json.dumps({"num_timesteps": num_timesteps}))
        archive.writestr("policy.pth", b"\0" * 4096)
    if not complete:  # cut short, as by a kill during save()
        path.write_bytes(path.read_bytes()[:2000])


def _run_folder(folder, trained_agent="", env_id=pong.ENV_ID, games=()):
    (folder / env_id).mkdir(parents=True)
    (folder / env_id / "args.yml").write_text(yaml.safe_dump({"trained_agent": trained_agent}))
    (folder / env_id / "config.yml").write_text(yaml.safe_dump({"n_envs": 1}))
    lines = [f'#{{"t_start": 1000.0, "env_id": "{env_id}"}}', "r,l,t"]
    lines += [f"{score},{frames},{seconds}" for score, frames, seconds in games]
    (folder / "0.monitor.csv").write_text("\n".join(lines) + "\n")


def test_snapshot_keeps_the_newest_complete_checkpoint_under_its_global_steps(tmp_path):
    logs, runs = tmp_path / "logs", tmp_path / "runs"
    _saved_model(runs / "ppo" / "rl_model_200000_steps.zip", 200_000)
    first, second = logs / "ppo" / f"{pong.ENV_ID}_1", logs / "ppo" / f"{pong.ENV_ID}_2"
    _run_folder(first, games=[(-21, 4000, 10.0)])
    _run_folder(second, trained_agent=str(runs / "ppo" / "rl_model_200000_steps.zip"), games=[(-20, 4000, 10.0)])
    _saved_model(second / "rl_model_100000_steps.zip", 100_000)
    _saved_model(second / "rl_model_200000_steps.zip", 200_000, complete=False)
    assert [segment.start for segment in pong.segments(logs, "ppo")] == [0, 200_000]

    kept = pong.snapshot(logs, runs, "ppo")
    assert kept == pong.Checkpoint(runs / "ppo" / "rl_model_300000_steps.zip", 300_000)
    assert [path.name for path in (runs / "ppo").glob("*.zip")] == ["rl_model_300000_steps.zip"]
    assert sorted(path.name for path in (runs / "ppo").iterdir()) == [
        "from_0", "from_200000", "rl_model_300000_steps.zip"
    ]  # fmt: skip
    command = pong.train_command("ppo", logs, runs)
    assert command is not None
    assert command[command.index("--conf-file") + 1] == str(runs / "ppo_seed_settings.yml")
    assert command[-4:] == ["-i", str(kept.path), "-n", "1700000"]

    # the final model of a finished segment counts by its stored steps; a later snapshot replaces the checkpoint
    _saved_model(second / f"{pong.ENV_ID}.zip", 1_800_000)
    assert pong.snapshot(logs, runs, "ppo").steps == 2_000_000
    assert pong.train_command("ppo", logs, runs) is None


def test_a_segment_continuing_another_segments_checkpoint_counts_from_that_start(tmp_path):
    logs = tmp_path / "logs"
    second, third = logs / "ppo_logit" / f"{pong.ENV_ID}_2", logs / "ppo_logit" / f"{pong.ENV_ID}_3"
    _run_folder(second, trained_agent="benchmark_runs/pong/ppo_logit/rl_model_600000_steps.zip")
    _run_folder(third, trained_agent=str(second / "rl_model_300000_steps.zip"))
    assert pong.segment_start(third) == 900_000
    (logs / "ppo_logit" / f"{pong.ENV_ID}_4" / pong.ENV_ID).mkdir(parents=True)
    (logs / "ppo_logit" / f"{pong.ENV_ID}_4" / pong.ENV_ID / "args.yml").write_text("trained_agent: model.zip\n")
    with pytest.raises(ValueError, match=r"rl_model_<steps>_steps\.zip"):
        pong.segments(logs, "ppo_logit")


def test_training_games_are_stitched_at_each_segments_start(tmp_path):
    runs = tmp_path / "runs"
    # 4 frames per agent step: the first segment plays 1000, 2000 and 3000 steps, the last after the next start
    _run_folder(runs / "ppo" / "from_0", games=[(-21, 4000, 10.0), (-20, 4000, 20.0), (-19, 4000, 30.0)])
    _run_folder(runs / "ppo" / "from_2500", games=[(-18, 2000, 5.0), (-17, 2000, 10.0)])
    games = pong.training_games(runs, "ppo")
    assert games["steps"].tolist() == [1000, 2000, 3000, 3500]
    assert games["score"].tolist() == [-21, -20, -18, -17]
    assert pong.steps_per_second(games) == [100.0, 100.0]
    assert pong.training_score(games, 3000, window=2) == -19.0
    assert pong.training_score(games, 4000) is None


FAKE_ZOO_RUN = f"""
import json, pathlib, sys, zipfile
run = pathlib.Path(sys.argv[1])
(run / "{pong.ENV_ID}").mkdir(parents=True)
(run / "{pong.ENV_ID}" / "args.yml").write_text("trained_agent: ''\\n")
(run / "0.monitor.csv").write_text('#{{"t_start": 0.0, "env_id": "{pong.ENV_ID}"}}\\nr,l,t\\n-21,4096,2.0\\n')
with zipfile.ZipFile(run / "rl_model_1024_steps.zip", "w") as archive:
    archive.writestr("data", json.dumps({{"num_timesteps": 1024}}))
sys.exit(int(sys.argv[2]))
"""


def test_train_runs_the_algorithms_at_once_and_snapshots_them_when_they_end(tmp_path, monkeypatch, capsys):
    logs, runs = tmp_path / "logs", tmp_path / "runs"
    exit_codes = {"ppo_logit": 0, "ppo": 3}

    def fake_command(algo, logs, runs, target):
        return [sys.executable, "-c", FAKE_ZOO_RUN, str(logs / algo / f"{pong.ENV_ID}_1"), str(exit_codes[algo])]

    monkeypatch.setattr(pong, "train_command", fake_command)
    assert pong.train(logs, runs, ["ppo_logit", "ppo"], TARGET, snapshot_every=60) == 1
    assert "stopped: ppo" in capsys.readouterr().out
    for algo in ("ppo_logit", "ppo"):  # the failed run's checkpoint is kept too
        assert pong.tree_checkpoint(runs, algo) == pong.Checkpoint(runs / algo / "rl_model_1024_steps.zip", 1024)
        assert (runs / algo / "from_0" / "0.monitor.csv").exists()
        assert (logs / f"{algo}.log").exists()
    exit_codes["ppo"] = 0
    logs = tmp_path / "more_logs"
    assert pong.train(logs, tmp_path / "more_runs", ["ppo_logit", "ppo"], TARGET, snapshot_every=60) == 0


def test_evaluate_wraps_both_modes_environments_as_the_run_was_trained(tmp_path):
    """The run's ``env_wrapper`` (AtariWrapper for Pong) wraps the greedy and the sampled games alike."""
    th.set_num_threads(1)
    logs, runs, env_id = tmp_path / "logs", tmp_path / "runs", "CartPole-v1"
    folder = logs / "ppo_logit" / f"{env_id}_1"
    _run_folder(folder, env_id=env_id)
    (runs / "ppo_logit").mkdir(parents=True)
    wrapper = "gymnasium.wrappers.TimeAwareObservation"  # changes the observation space: (4,) to (5,)
    (folder / env_id / "config.yml").write_text(yaml.safe_dump({"n_envs": 1, "env_wrapper": [wrapper]}))
    env = TimeAwareObservation(gym.make(env_id))
    LogitPPO("MlpPolicy", env, n_steps=64, seed=0).save(folder / "rl_model_64_steps.zip")
    evaluation = pong.evaluate(logs, runs, "ppo_logit", 64, episodes=1, env_id=env_id)
    assert evaluation["steps"] == 64
    for mode in ("deterministic", "stochastic"):
        assert len(evaluation[mode]["scores"]) == 1 and 8 <= evaluation[mode]["scores"][0] <= 500
