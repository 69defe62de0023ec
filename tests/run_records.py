"""Benchmark runs as the tests see them: the command run as a user runs it, and what two runs of the same
seed share (their records apart from the wall-clock fields)."""

from __future__ import annotations

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
