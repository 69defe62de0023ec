"""rl-zoo3's own train / enjoy / record_video commands on every id, run as a user would, in a fresh directory."""

import re
import subprocess
from pathlib import Path

import gymnasium as gym
import imageio_ffmpeg
import pytest
import yaml

import sb3_ppo_variants
from sb3_ppo_variants.zoo import ALGORITHM_CLASS_NAMES

IDS = sorted(ALGORITHM_CLASS_NAMES)
TRAIN_FLAGS = ["-n", "256", "--eval-freq", "-1", "--seed", "1", "--log-interval", "-1"]
# MaskablePPO needs a task with action masks: sb3-contrib's, registered by a module of this package
ENVS = {"ppo_mask_variant": "InvalidActionEnvMultiDiscrete-v0"}
ENV_FLAGS = {"ppo_mask_variant": ["--gym-packages", "sb3_ppo_variants.zoo.masked_envs"]}


def _env_flags(algo_id: str) -> list[str]:
    return ["--env", ENVS.get(algo_id, "CartPole-v1"), *ENV_FLAGS.get(algo_id, [])]


def _console_script(zoo) -> list[str]:
    """The ``rl_zoo3`` console script of this interpreter's environment (``python -m rl_zoo3.cli`` if absent)."""
    script = Path(zoo.python).parent / "rl_zoo3"
    return [str(script)] if script.exists() else [zoo.python, "-m", "rl_zoo3.cli"]


@pytest.fixture(scope="module")
def trained(zoo, tmp_path_factory):
    """One short run per id on CartPole (a masked task for MaskablePPO), two at a time; ppo_peaked through the
    ``rl_zoo3 train`` console script."""
    workdir = tmp_path_factory.mktemp("zoo_runs")
    commands = {
        algo_id: (
            [*_console_script(zoo), "train", "--algo", algo_id, *_env_flags(algo_id), *TRAIN_FLAGS]
            if algo_id == "ppo_peaked"
            else zoo.command("train", "--algo", algo_id, *_env_flags(algo_id), *TRAIN_FLAGS)
        )
        for algo_id in IDS
    }
    return workdir, _run_two_at_a_time(zoo, commands, workdir)


@pytest.fixture(scope="module")
def replayed(zoo, trained):
    """``rl_zoo3.enjoy`` on each trained id (two at a time)."""
    workdir, results = trained
    commands = {
        algo_id: zoo.command("enjoy", "--algo", algo_id, *_env_flags(algo_id), *"-f logs/ -n 200 --no-render".split())
        for algo_id, result in results.items()
        if result.returncode == 0
    }
    return _run_two_at_a_time(zoo, commands, workdir)


def _run_two_at_a_time(zoo, commands, workdir):
    results = {}
    pending = list(commands.items())
    while pending:
        batch, pending = pending[:2], pending[2:]
        processes = {algo_id: zoo.popen(command, cwd=workdir) for algo_id, command in batch}
        for algo_id, process in processes.items():
            stdout, stderr = process.communicate(timeout=300)
            results[algo_id] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return results


@pytest.mark.slow
@pytest.mark.parametrize("algo_id", IDS)
def test_train_uses_the_shipped_file_and_saves_the_class(algo_id, trained, zoo):
    workdir, results = trained
    assert results[algo_id].returncode == 0, zoo.describe(results[algo_id])
    stdout = results[algo_id].stdout
    # found by default, without --conf-file: the file shipped in the installed package
    config_path = Path(re.search(r"Loading hyperparameters from: (\S+)", stdout).group(1))
    assert config_path.parts[-2:] == ("hyperparams", f"{algo_id}.yml")
    assert config_path.read_text() == sb3_ppo_variants.zoo.hyperparams_file(algo_id).read_text()
    env_id = ENVS.get(algo_id, "CartPole-v1")
    run = workdir / "logs" / algo_id / f"{env_id}_1"
    config = dict(yaml.load((run / env_id / "config.yml").read_text(), Loader=yaml.UnsafeLoader))
    shipped_entry = yaml.safe_load(sb3_ppo_variants.zoo.hyperparams_file(algo_id).read_text())[env_id]
    assert config == shipped_entry
    model = getattr(sb3_ppo_variants, ALGORITHM_CLASS_NAMES[algo_id]).load(run / f"{env_id}.zip", device="cpu")
    assert type(model).__name__ == ALGORITHM_CLASS_NAMES[algo_id]
    assert model.num_timesteps == 256


@pytest.mark.slow
@pytest.mark.parametrize("algo_id", IDS)
def test_enjoy_replays_each_id(algo_id, trained, replayed, zoo):
    assert trained[1][algo_id].returncode == 0, "training failed: see test_train_uses_the_shipped_file_..."
    result = replayed[algo_id]
    assert result.returncode == 0, zoo.describe(result)
    env_id = ENVS.get(algo_id, "CartPole-v1")
    assert f"Loading logs/{algo_id}/{env_id}_1/{env_id}.zip" in result.stdout
    assert "Episode Reward:" in result.stdout


@pytest.mark.slow
def test_record_video_writes_a_cartpole_mp4(trained, zoo):
    workdir, results = trained
    assert results["ppo_logit"].returncode == 0
    command = zoo.command("record_video", "--algo", "ppo_logit", "--env", "CartPole-v1", "-f", "logs/", "-n", "200")
    result = zoo.run(command, cwd=workdir, timeout=180)
    assert result.returncode == 0, zoo.describe(result)
    videos = list((workdir / "logs" / "ppo_logit" / "CartPole-v1_1" / "videos").glob("*.mp4"))
    assert len(videos) == 1, zoo.describe(result)
    frames, seconds = imageio_ffmpeg.count_frames_and_secs(str(videos[0]))
    assert frames >= 200 and seconds > 0


@pytest.mark.slow
def test_pong_with_cnn_policy_for_a_few_hundred_steps(zoo, tmp_path):
    command = zoo.command(
        "train", "--algo", "ppo_logit", "--env", "PongNoFrameskip-v4", "-n", "512", "--eval-freq", "-1", "--seed", "2"
    )
    result = zoo.run(command, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, zoo.describe(result)
    run = tmp_path / "logs" / "ppo_logit" / "PongNoFrameskip-v4_1"
    config = dict(yaml.load((run / "PongNoFrameskip-v4" / "config.yml").read_text(), Loader=yaml.UnsafeLoader))
    # the seed's Pong settings
    assert (config["n_envs"], config["n_steps"], config["batch_size"], config["n_epochs"]) == (4, 128, 128, 4)
    assert (config["learning_rate"], config["ent_coef"], config["policy"]) == (1e-4, 0.0, "CnnPolicy")
    model = sb3_ppo_variants.LogitPPO.load(run / "PongNoFrameskip-v4.zip", device="cpu")
    assert model.num_timesteps == 512
    assert model.observation_space.shape == (4, 84, 84)  # frame stack of 4, channel first
    assert type(model.policy.features_extractor).__name__ == "NatureCNN"


@pytest.mark.slow
def test_the_lstm_id_trains_cartpole_with_the_logit_target(zoo, tmp_path):
    command = zoo.command("train", "--algo", "ppo_lstm_variant", "--env", "CartPole-v1", *TRAIN_FLAGS)
    result = zoo.run([*command, "--hyperparams", "delta_target_policy:'logit'"], cwd=tmp_path, timeout=300)
    assert result.returncode == 0, zoo.describe(result)
    run = tmp_path / "logs" / "ppo_lstm_variant" / "CartPole-v1_1"
    model = sb3_ppo_variants.RecurrentVariantPPO.load(run / "CartPole-v1.zip", device="cpu")
    assert model.delta_target_policy == "logit" and model.num_timesteps == 256
    assert type(model.policy).__name__ == "RecurrentActorCriticPolicy"


def _class_message(**options) -> str:
    try:
        sb3_ppo_variants.VariantPPO.validate_options(**options)
    except ValueError as exc:
        return str(exc)
    raise AssertionError(f"{options} should be rejected")


def _assert_clean_rejection(zoo, result, workdir, message):
    assert result.returncode == 1, zoo.describe(result)
    assert result.stderr.rstrip().endswith(message), zoo.describe(result)
    assert "Traceback" not in result.stderr, zoo.describe(result)
    assert not (workdir / "logs").exists(), "a run folder was created"


def test_unknown_option_value_in_a_yml_ends_with_the_class_message(zoo, tmp_path):
    conf = tmp_path / "ppo_logit.yml"
    shipped = sb3_ppo_variants.zoo.hyperparams_file("ppo_logit").read_text()
    conf.write_text(shipped.replace("delta_target_policy: 'logit'", "delta_target_policy: logits"))
    command = zoo.command("train", "--algo", "ppo_logit", "--env", "CartPole-v1", "-n", "64", "--conf-file", str(conf))
    result = zoo.run(command, cwd=tmp_path, timeout=120)
    _assert_clean_rejection(zoo, result, tmp_path, _class_message(delta_target_policy="logits"))
    assert f"from {conf}" in result.stderr


def test_unknown_option_value_on_the_command_line_ends_with_the_class_message(zoo, tmp_path):
    command = zoo.command(
        "train", *"--algo ppo_variant --env CartPole-v1 -n 64 --hyperparams".split(), "delta_target_policy:'bad'"
    )
    result = zoo.run(command, cwd=tmp_path, timeout=120)
    _assert_clean_rejection(zoo, result, tmp_path, _class_message(delta_target_policy="bad"))
    assert "--hyperparams delta_target_policy:'bad'" in result.stderr


def test_option_that_needs_discrete_actions_is_rejected_on_pendulum(zoo, tmp_path):
    options = "value_grad_rescaling:'per_batch'"
    command = zoo.command("train", *"--algo ppo_variant --env Pendulum-v1 -n 64 --hyperparams".split(), options)
    result = zoo.run(command, cwd=tmp_path, timeout=120)
    box = gym.make("Pendulum-v1").action_space
    _assert_clean_rejection(zoo, result, tmp_path, _class_message(value_grad_rescaling="per_batch", action_space=box))


def test_unknown_option_name_is_rejected_before_the_run_folder(zoo, tmp_path):
    command = zoo.command("train", *"--algo ppo_kl --env CartPole-v1 -n 64 --hyperparams kl_target:0.02".split())
    result = zoo.run(command, cwd=tmp_path, timeout=120)
    _assert_clean_rejection(zoo, result, tmp_path, "unexpected keyword argument 'kl_target'")
