"""The training diagnostics of every update, read from SB3's logger, and their summary around a drop."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.logger import KVWriter

from sb3_ppo_variants.collapse.events import append_csv_row, start_csv

__all__ = ["DIAGNOSTIC_KEYS", "DIAGNOSTIC_NAMES", "DiagnosticsTap", "TrainingDiagnostics"]

# Diagnostic name -> logger key written by ``train()``. SB3's PPO and A2C record the
# first five; ``VariantPPO`` adds the pseudo-entropy and the pre-clipping gradient norm.
# A key an algorithm does not record is kept as NaN.
DIAGNOSTIC_KEYS: dict[str, str] = {
    "entropy": "train/entropy_loss",
    "pseudo_entropy": "train/pseudo_entropy",
    "approx_kl": "train/approx_kl",
    "clip_fraction": "train/clip_fraction",
    "value_loss": "train/value_loss",
    "explained_variance": "train/explained_variance",
    "grad_norm": "train/grad_norm",
}
DIAGNOSTIC_NAMES: tuple[str, ...] = (*DIAGNOSTIC_KEYS, "learning_rate")


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _summarise(rows: Sequence[Mapping[str, float]], name: str) -> dict[str, float]:
    values = np.array([row.get(name, math.nan) for row in rows], dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"mean": math.nan, "min": math.nan, "max": math.nan}
    return {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max())}


class TrainingDiagnostics:
    """One row per update of the diagnostics ``train()`` logged, in memory and in a CSV.

    Entropy (minus ``train/entropy_loss``), ``pseudo_entropy``, ``approx_kl``,
    ``clip_fraction``, ``value_loss``, ``explained_variance``, ``grad_norm``, the learning
    rate, plus ``extra_keys``. The row stamped ``timesteps=T`` is the update that trained on
    the rollout ending at ``T``.

    :param extra_keys: further logger keys to record.
    :param maxlen: rows kept in memory (off-policy algorithms update every few steps); the CSV keeps all.
    """

    def __init__(self, extra_keys: Sequence[str] = (), maxlen: int = 10_000):
        self.extra_keys = tuple(extra_keys)
        self.rows: deque[dict[str, float]] = deque(maxlen=maxlen)
        self.csv_path: Path | None = None
        self.last_recorded_updates: int | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        return (*DIAGNOSTIC_NAMES, *self.extra_keys)

    def start_csv(self, path: Path) -> None:
        self.csv_path = path
        start_csv(path, ("timesteps", "n_updates", *self.columns))

    def record(self, values: Mapping[str, Any], timesteps: int, n_updates: int) -> None:
        """Record the diagnostics the logger holds, once per update."""
        tracked = (*DIAGNOSTIC_KEYS.values(), *self.extra_keys)
        if not any(key in values for key in tracked):
            return
        # The logger keeps values until the next dump: skip what was already read.
        if n_updates == self.last_recorded_updates and n_updates > 0:
            return
        self.last_recorded_updates = n_updates
        row: dict[str, float] = {"timesteps": int(timesteps), "n_updates": n_updates}
        for name, key in DIAGNOSTIC_KEYS.items():
            row[name] = _as_float(values.get(key, math.nan))
        # SB3 logs minus the mean entropy as the entropy loss.
        row["entropy"] = -row["entropy"]
        row["learning_rate"] = _as_float(values.get("train/learning_rate", math.nan))
        for key in self.extra_keys:
            row[key] = _as_float(values.get(key, math.nan))
        self.rows.append(row)
        if self.csv_path is not None:
            append_csv_row(self.csv_path, ("timesteps", "n_updates", *self.columns), row)

    def around(
        self, first_cause: int, detected: int, window: int
    ) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
        """The last ``window`` updates before ``first_cause``, and those from it up to the detection."""
        before = [row for row in self.rows if row["timesteps"] < first_cause]
        before = before[len(before) - window :] if window else []
        during = [row for row in self.rows if first_cause <= row["timesteps"] < detected]
        return before, during

    def summarise(self, rows: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
        """Mean, min and max of each column over ``rows`` (NaN where nothing was recorded)."""
        return {name: _summarise(rows, name) for name in self.columns}


class DiagnosticsTap(KVWriter):
    """Logger output that hands every dump to ``record(values, timesteps)``.

    Needed only for a ``callback_after_eval``: such a child never sees ``on_rollout_start``,
    and the parent dumps the logger (clearing the ``train/`` values) right before calling it.
    """

    def __init__(self, record: Callable[[Mapping[str, Any], int], None]):
        self.record = record

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0) -> None:
        self.record(key_values, step)

    def close(self) -> None:
        pass
