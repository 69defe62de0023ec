"""What a benchmark result was measured with: package versions, commit, hardware and date."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch as th

PACKAGES = (
    "sb3-ppo-variants",
    "torch",
    "stable-baselines3",
    "sb3-contrib",
    "rl-zoo3",
    "gymnasium",
    "ale-py",
    "minatar",
    "box2d",
    "numpy",
    "rliable",
    "matplotlib",
)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        if package == "sb3-ppo-variants":  # run from a source checkout
            import sb3_ppo_variants

            return f"{sb3_ppo_variants.__version__} (source)"
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        # an installed copy: the enclosing directories may belong to another repository
        return None
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "sb3_ppo_variants"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return commit + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def provenance() -> dict[str, Any]:
    """Versions, commit, hardware, torch threads and the UTC date."""
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "python": platform.python_version(),
        "packages": {package: _version(package) for package in PACKAGES},
        "git_commit": _git_commit(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cuda_available": th.cuda.is_available(),
        "torch_threads_of_this_process": th.get_num_threads(),
        "platform": platform.platform(),
    }
