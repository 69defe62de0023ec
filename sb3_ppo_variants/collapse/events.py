"""The on-disk format of a monitored run: every file name, and the event record written and read here only.

A run folder holds ``collapse_monitor/`` with::

    collapse_events.json      settings + one CollapseEvent per collapse (this module)
    collapse_returns.csv      every followed return (RETURNS_COLUMNS)
    collapse_diagnostics.csv  the training diagnostics of every update
    health.csv                the health metrics (sb3_ppo_variants.collapse.health)
    best_model.zip            the best policy so far (and best_vecnormalize.pkl)
    checkpoints/<T>.zip       the last K checkpoints, one per followed return
    collapse_<k>/             per collapse: the kept checkpoints, probe.npz, the diagnosis
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "BEST_MODEL_FILE",
    "BEST_VECNORMALIZE_FILE",
    "DIAGNOSTICS_FILE",
    "EVENTS_FILE",
    "HEALTH_FILE",
    "MONITOR_FOLDER",
    "PROBE_FILE",
    "RETURNS_COLUMNS",
    "RETURNS_FILE",
    "CollapseEvent",
    "MonitorRecord",
    "append_csv_row",
    "collapse_folder",
    "start_csv",
]

MONITOR_FOLDER = "collapse_monitor"
EVENTS_FILE = "collapse_events.json"
RETURNS_FILE = "collapse_returns.csv"
DIAGNOSTICS_FILE = "collapse_diagnostics.csv"
HEALTH_FILE = "health.csv"
BEST_MODEL_FILE = "best_model.zip"
BEST_VECNORMALIZE_FILE = "best_vecnormalize.pkl"
CHECKPOINT_FOLDER = "checkpoints"
PROBE_FILE = "probe.npz"
DIAGNOSIS_FILE = "diagnosis.json"
RETURNS_COLUMNS = ("timesteps", "return", "best_return", "threshold", "below_count", "source", "event")


def collapse_folder(index: int) -> str:
    """Folder (relative to the monitor's) of everything kept for collapse ``index``."""
    return f"collapse_{index}"


def json_safe(value: Any) -> Any:
    """NaN and infinities become ``null`` so the files are strict JSON."""
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, record: Any) -> None:
    """Write then rename, so a reader never sees a half-written file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as file:
        json.dump(json_safe(record), file, indent=2, allow_nan=False)
    os.replace(tmp, path)


@dataclass
class CollapseEvent:
    """One detected collapse, as stored in ``collapse_events.json``.

    Timesteps of diagnostics rows are those of the update that trained on the rollout
    ending there. Paths are relative to the monitor's folder.

    :param index: 1-based number of the collapse in the run.
    :param source: the return followed (``parent_eval``, ``own_eval``, ``sibling_eval``, ``rollout``).
    :param detected_timesteps: the return that completed the collapse.
    :param drop_start_timesteps: the first return below the threshold.
    :param last_good_timesteps: the last return above the threshold (or the rollback restarted from).
    :param best_timesteps: when the best return was observed.
    :param best_return: the running best.
    :param threshold: the threshold at detection.
    :param return_at_detection: the return that completed the collapse.
    :param returns_below: the consecutive returns below the threshold.
    :param checkpoint: a copy of the best model at detection.
    :param diagnostics_before: mean/min/max of each diagnostic over the updates before the last good return.
    :param diagnostics_during: the same over the updates from the last good return to the detection.
    :param diagnostics_window: the rows of those updates.
    :param checkpoints: the kept checkpoints around the drop, ``{"timesteps", "return", "path"}``.
    :param probe: the probe batch collected by the best policy.
    :param diagnosis: the diagnosis between the last good and the first bad checkpoint.
    :param rollback_timesteps: when the model was rolled back, if it was.
    :param learning_rate_after: the learning rate after that rollback.
    """

    index: int
    source: str
    detected_timesteps: int
    drop_start_timesteps: int | None
    last_good_timesteps: int
    best_timesteps: int | None
    best_return: float
    threshold: float
    return_at_detection: float
    returns_below: list[float]
    checkpoint: str
    diagnostics_before: dict[str, dict[str, float]] = field(default_factory=dict)
    diagnostics_during: dict[str, dict[str, float]] = field(default_factory=dict)
    diagnostics_window: list[dict[str, float]] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    probe: str | None = None
    diagnosis: str | None = None
    rollback_timesteps: int | None = None
    learning_rate_after: float | None = None

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> CollapseEvent:
        names = {item.name for item in fields(cls)}
        return cls(**{key: value for key, value in record.items() if key in names})


@dataclass
class MonitorRecord:
    """``collapse_events.json``: the monitor's settings, its state and the events."""

    settings: dict[str, Any] = field(default_factory=dict)
    best_return: float | None = None
    best_timesteps: int | None = None
    n_rollbacks: int = 0
    events: list[CollapseEvent] = field(default_factory=list)

    def write(self, folder: str | Path) -> Path:
        path = Path(folder) / EVENTS_FILE
        record = {**self.settings, "best_return": self.best_return, "best_timesteps": self.best_timesteps}
        record |= {"n_rollbacks": self.n_rollbacks, "events": [asdict(event) for event in self.events]}
        write_json(path, record)
        return path

    @classmethod
    def read(cls, folder: str | Path) -> MonitorRecord:
        record = json.loads((Path(folder) / EVENTS_FILE).read_text())
        events = [CollapseEvent.from_dict(item) for item in record.pop("events", [])]
        best_return, best_timesteps = record.pop("best_return", None), record.pop("best_timesteps", None)
        n_rollbacks = int(record.pop("n_rollbacks", 0) or 0)
        return cls(
            settings=record,
            best_return=best_return,
            best_timesteps=best_timesteps,
            n_rollbacks=n_rollbacks,
            events=events,
        )


def start_csv(path: Path, columns: Sequence[str]) -> None:
    with open(path, "w", newline="") as file:
        csv.writer(file).writerow(columns)


def append_csv_row(path: Path, columns: Sequence[str], row: Mapping[str, Any]) -> None:
    with open(path, "a", newline="") as file:
        csv.writer(file).writerow(["" if row.get(column) is None else row[column] for column in columns])
