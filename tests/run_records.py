"""Benchmark runs as the tests see them: the command run as a user runs it, and what two runs of the same
seed share (their records apart from the wall-clock fields)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def benchmark(*arguments: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m sb3_ppo_variants.benchmark ...`` importing this checkout, with one OpenMP thread."""
    environment = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "sb3_ppo_variants.benchmark", *arguments],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def without_timing(value: Any) -> Any:
    """A run's record without its wall-clock fields (``*_seconds``), which differ between any two runs."""
    if isinstance(value, dict):
        return {key: without_timing(item) for key, item in value.items() if not key.endswith("_seconds")}
    if isinstance(value, list):
        return [without_timing(item) for item in value]
    return value


def write_pilot_run(directory: Path, algorithm: str, seed: int, returns: list[float]) -> None:
    """A run file of ``pilot/CartPole-v1-shared`` at lr 1e-2 whose evaluations return ``returns``, 100 steps apart."""
    folder = directory / "pilot_CartPole-v1-shared"
    folder.mkdir(parents=True, exist_ok=True)
    run = {
        "task": "pilot/CartPole-v1-shared",
        "algorithm": algorithm,
        "seed": seed,
        "learning_rate_scale": 10.0,
        "learning_rate": 0.01,
        "timesteps": 1000,
        "evaluations": [{"step": 100 * i, "eval_return": r} for i, r in enumerate(returns)],
    }
    (folder / f"{algorithm}_lr10_seed{seed}.json").write_text(json.dumps(run))
