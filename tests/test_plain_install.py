"""A user's install: the wheel without extras (after the CPU build of torch) in a new virtual environment,
then the rl-zoo3 commands the README shows, as real subprocesses."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from doc_blocks import DocumentRun, find_block, new_folder

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
    # installed as make setup installs (pip's --no-compile), with the modules a command imports compiled once and
    # cached, as on a user's machine
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", SDL_VIDEODRIVER="dummy", PIP_DISABLE_PIP_VERSION_CHECK="1")
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(REPOSITORY), "-w", str(root / "wheel")], root, env
    )
    (wheel,) = (root / "wheel").glob("sb3_ppo_variants-*.whl")
    _run([sys.executable, "-m", "venv", str(root / "venv")], root, env)
    python = root / "venv" / "bin" / "python"
    _run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-compile",
            "-r",
            str(REPOSITORY / "requirements" / "torch-cpu.txt"),
        ],
        root,
        env,
    )
    _run([str(python), "-m", "pip", "install", "-q", "--no-compile", str(wheel)], root, env)
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
    """The README's rl-zoo3 block as written, shrunk as tests/test_docs.py shrinks every documented command."""
    python, _, env = plain
    run = DocumentRun(new_folder(tmp_path), env, python)
    run.run(find_block("README.md", "python -m rl_zoo3.train --algo ppo_logit --env CartPole-v1 -f logs/"))
    logs = run.folder / "logs"
    assert (logs / "ppo_logit" / "CartPole-v1_1" / "CartPole-v1.zip").is_file()
    assert list((logs / "ppo_logit" / "CartPole-v1_1").glob("videos/*.mp4")), "record_video wrote no mp4"
    # the README's Pong command (ALE with its ROMs) and -optimize, which writes into the zoo's default folder
    assert (run.folder / "logs" / "ppo_logit" / "PongNoFrameskip-v4_1" / "PongNoFrameskip-v4.zip").is_file()
    assert list((logs / "ppo_variant").glob("report_CartPole-v1_*.csv")), "no optimisation report"

    # Box2D: the shipped LunarLander entries
    _run(
        [str(python.parent / "rl_zoo3"), "train", "--algo", "ppo_peaked", "--env", "LunarLander-v3", "-n", "1024"],
        run.folder,
        env,
    )
    # the shipped lin_0.2 clip range with a budget that is not a multiple of the rollout (8 envs x 32 steps):
    # the last rollout overshoots, the schedule is read past its end, and the model is still saved
    command = ["rl_zoo3.train", "--algo", "ppo_peaked", "--env", "CartPole-v1", "-n", "1000", "-f", "schedule_logs"]
    _run([str(python), "-m", *command], run.folder, env)
    assert (run.folder / "schedule_logs" / "ppo_peaked" / "CartPole-v1_1" / "CartPole-v1.zip").is_file()
