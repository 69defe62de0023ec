"""A user's install: the wheel without extras (after the CPU build of torch) in a new virtual environment,
then the rl-zoo3 commands the README shows, as real subprocesses."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPOSITORY = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, (
        f"{' '.join(args)} exited {result.returncode}\n--- stdout ---\n{result.stdout[-3000:]}\n"
        f"--- stderr ---\n{result.stderr[-5000:]}"
    )
    return result


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """(the new environment's python, the built wheel, a clean subprocess environment)."""
    root = tmp_path_factory.mktemp("plain_install")
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.pop("SB3_PPO_VARIANTS_NO_ZOO_HOOK", None)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", SDL_VIDEODRIVER="dummy", PIP_DISABLE_PIP_VERSION_CHECK="1")
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(REPOSITORY), "-w", str(root / "wheel")], root, env
    )
    (wheel,) = (root / "wheel").glob("sb3_ppo_variants-*.whl")
    _run([sys.executable, "-m", "venv", str(root / "venv")], root, env)
    python = root / "venv" / "bin" / "python"
    _run(
        [str(python), "-m", "pip", "install", "-q", "-r", str(REPOSITORY / "requirements" / "torch-cpu.txt")], root, env
    )
    _run([str(python), "-m", "pip", "install", "-q", str(wheel)], root, env)
    return python, wheel, env


def test_the_wheel_ships_py_typed_and_the_hyperparameters(plain: tuple[Path, Path, dict[str, str]]) -> None:
    _, wheel, _ = plain
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "sb3_ppo_variants/py.typed" in names
    assert "sb3_ppo_variants/hyperparams/ppo_logit.yml" in names
    assert "sb3_ppo_variants_zoo.pth" in names


def test_the_readme_zoo_commands_run_after_a_plain_install(
    plain: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    python, _, env = plain
    zoo = [str(python), "-m"]
    _run(
        [
            *zoo,
            "rl_zoo3.train",
            "--algo",
            "ppo_logit",
            "--env",
            "CartPole-v1",
            "-n",
            "2000",
            "-f",
            "logs",
            "--seed",
            "1",
        ],
        tmp_path,
        env,
    )
    run_folder = tmp_path / "logs" / "ppo_logit" / "CartPole-v1_1"
    assert (run_folder / "CartPole-v1.zip").is_file()

    _run(
        [*zoo, "rl_zoo3.enjoy", "--algo", "ppo_logit", "--env", "CartPole-v1", "-f", "logs", "-n", "50", "--no-render"],
        tmp_path,
        env,
    )

    _run(
        [*zoo, "rl_zoo3.record_video", "--algo", "ppo_logit", "--env", "CartPole-v1", "-f", "logs", "-n", "50"],
        tmp_path,
        env,
    )
    assert list(run_folder.glob("videos/*.mp4")), "record_video wrote no mp4"

    _run(
        [
            *zoo,
            "rl_zoo3.train",
            "--algo",
            "ppo_variant",
            "--env",
            "CartPole-v1",
            "-n",
            "1000",
            "-f",
            "logs",
            "-optimize",
            "--n-trials",
            "2",
            "--n-jobs",
            "1",
            "--sampler",
            "random",
            "--pruner",
            "none",
            "--no-optim-plots",
            "--storage",
            str(tmp_path / "journal.log"),
            "--study-name",
            "plain",
        ],
        tmp_path,
        env,
    )
    assert list((tmp_path / "logs" / "ppo_variant").glob("report_CartPole-v1_*.csv")), "no optimisation report"

    # the console script, Box2D (the shipped LunarLander entry) and ALE with its ROMs (the README's Pong command)
    console = python.parent / "rl_zoo3"
    _run(
        [str(console), "train", "--algo", "ppo_peaked", "--env", "LunarLander-v3", "-n", "1024", "-f", "logs"],
        tmp_path,
        env,
    )
    # the shipped lin_0.2 clip range with a budget that is not a multiple of the rollout (8 envs x 32 steps):
    # the last rollout overshoots, the schedule is read past its end, and the model is still saved
    _run(
        [*zoo, "rl_zoo3.train", "--algo", "ppo_peaked", "--env", "CartPole-v1", "-n", "1000", "-f", "logs"],
        tmp_path,
        env,
    )
    assert (tmp_path / "logs" / "ppo_peaked" / "CartPole-v1_1" / "CartPole-v1.zip").is_file()
    _run(
        [*zoo, "rl_zoo3.train", "--algo", "ppo_logit", "--env", "PongNoFrameskip-v4", "-n", "512", "-f", "logs"],
        tmp_path,
        env,
    )
    assert (tmp_path / "logs" / "ppo_logit" / "PongNoFrameskip-v4_1" / "PongNoFrameskip-v4.zip").is_file()
