"""Shared fixture ``zoo``: run rl-zoo3's own commands as a user would, against the installed package."""

import os
import subprocess
import sys
from pathlib import Path

import pytest


class ZooRunner:
    """Runs ``python -m rl_zoo3.<script>`` (or any command) single-threaded and headless."""

    python = sys.executable

    def environment(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("SB3_PPO_VARIANTS_NO_ZOO_HOOK", None)
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", SDL_VIDEODRIVER="dummy")
        env.update(extra)
        return env

    def command(self, script: str, *args: str) -> list[str]:
        return [self.python, "-m", f"rl_zoo3.{script}", *args]

    def popen(self, args: list[str], cwd: Path, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(
            args,
            cwd=cwd,
            env=env or self.environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **kwargs,
        )

    def run(
        self, args: list[str], cwd: Path, timeout: float = 240, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            args, cwd=cwd, env=env or self.environment(), capture_output=True, text=True, timeout=timeout, check=False
        )

    @staticmethod
    def describe(result: subprocess.CompletedProcess) -> str:
        return (
            f"exit {result.returncode}\n--- stdout (tail) ---\n{result.stdout[-3000:]}\n"
            f"--- stderr (tail) ---\n{result.stderr[-5000:]}"
        )


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> ZooRunner:
    """Needs the wheel's import hook (``pip install .``); outside CI its absence skips, in CI it fails."""
    runner = ZooRunner()
    cwd = tmp_path_factory.mktemp("hook_check")
    result = runner.run([runner.python, "-c", "import _sb3_ppo_variants_zoo_hook"], cwd=cwd, timeout=60)
    if result.returncode != 0:
        message = "sb3-ppo-variants is not installed with its rl-zoo3 hook; run `pip install .` first"
        if os.environ.get("CI"):
            pytest.fail(f"{message}\n{runner.describe(result)}")
        pytest.skip(message)
    return runner
