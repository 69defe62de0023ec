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


VECTOR_FLAG_PREFIXES = ("avx", "amx", "fma", "f16c", "sse")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def machine() -> dict[str, Any]:
    """What decides a run's floating-point rounding on a CPU: the processor (model, family, vector
    instructions), the kernels torch picks for it, and the numerical packages' versions. Two run files with the
    same ``machine`` and the same seed and code are expected to be equal; with different ones they may part
    after the first updates."""
    info = _cpuinfo()
    flags = sorted(flag for flag in info.get("flags", "").split() if flag.startswith(VECTOR_FLAG_PREFIXES))
    return {
        "cpu": info.get("model name") or platform.processor() or "unknown",
        "cpu_family_model_stepping": "/".join(info.get(key, "?") for key in ("cpu family", "model", "stepping")),
        "cpu_vector_flags": flags,
        "torch_cpu_capability": th.backends.cpu.get_cpu_capability(),
        "torch": th.__version__,
        "numpy": _version("numpy"),
        "stable-baselines3": _version("stable-baselines3"),
        "gymnasium": _version("gymnasium"),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


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
        "cpu": _cpuinfo().get("model name") or platform.processor() or "unknown",
        "cpu_count": os.cpu_count(),
        "cuda_available": th.cuda.is_available(),
        "torch_threads_of_this_process": th.get_num_threads(),
        "platform": platform.platform(),
    }
