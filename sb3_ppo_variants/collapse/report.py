"""One-page report of a policy collapse, from the logs of a run.

Usage::

    python -m sb3_ppo_variants.collapse report RUN_DIR -o report.png
    python -m sb3_ppo_variants.collapse_report RUN_DIR -o report.html --event 2

``RUN_DIR`` is a run folder holding a ``collapse_monitor/`` folder (rl-zoo3's
``logs/<algo>/<env>_<n>/`` when :class:`~sb3_ppo_variants.callbacks.CollapseMonitor`
is enabled from the yml), or the folder the monitor wrote into. The report draws the
followed return with its running best and threshold, marks each detected collapse
(from the last good return to the detection) and any rollback, and plots one panel
per training diagnostic zoomed around the chosen collapse; the health metrics
(``health.csv``) and the collapse's diagnosis (``collapse_<k>/``: the probe batch
evaluated at the kept checkpoints, and which layers alone flip the policy) follow. The
zoo's monitor files (read with SB3's ``load_results``), ``evaluations.npz`` and an SB3
``progress.csv`` are drawn too when present; a run without monitor records can still be
plotted from ``progress.csv``.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from stable_baselines3.common.monitor import LoadMonitorResultsError, load_results

from sb3_ppo_variants.collapse.diagnosis import Diagnosis
from sb3_ppo_variants.collapse.events import (
    DIAGNOSTICS_FILE,
    EVENTS_FILE,
    HEALTH_FILE,
    MONITOR_FOLDER,
    RETURNS_FILE,
    CollapseEvent,
    MonitorRecord,
)
from sb3_ppo_variants.collapse.training_diagnostics import DIAGNOSTIC_KEYS, DIAGNOSTIC_NAMES

__all__ = ["RunLogs", "load_run", "main", "render_diagnosis_png", "render_html", "render_png"]

PROGRESS_FILE = "progress.csv"
EVALUATIONS_FILE = "evaluations.npz"
DIAGNOSTIC_LABELS = {
    "entropy": "entropy",
    "pseudo_entropy": "pseudo-entropy H'",
    "approx_kl": "approx KL",
    "clip_fraction": "clip fraction",
    "value_loss": "value loss",
    "explained_variance": "explained variance",
    "grad_norm": "gradient norm (pre-clip)",
    "learning_rate": "learning rate",
}


@dataclass
class RunLogs:
    """Everything the report reads from a run folder.

    :param run_dir: the folder given on the command line.
    :param returns: the followed return: ``timesteps``, ``return``, ``best_return``, ``threshold`` arrays.
    :param return_label: what the return is (evaluation or training episodes).
    :param diagnostics: ``timesteps`` and one array per diagnostic, NaN where not recorded.
    :param events: the collapse events of ``collapse_events.json``.
    :param settings: the monitor's settings from ``collapse_events.json``.
    :param health: ``health.csv`` as a table, when recorded.
    :param diagnoses: the diagnosis of each collapse that has one, by event index.
    :param episodes: training episodes from monitor files, as ``(timesteps, returns)``.
    :param evaluations: mean evaluation returns from ``evaluations.npz``, as ``(timesteps, returns)``.
    :param files: the files that were read, for the record.
    """

    run_dir: Path
    returns: dict[str, np.ndarray]
    return_label: str
    diagnostics: dict[str, np.ndarray]
    events: list[CollapseEvent] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    health: pd.DataFrame | None = None
    diagnoses: dict[int, Diagnosis] = field(default_factory=dict)
    episodes: tuple[np.ndarray, np.ndarray] | None = None
    evaluations: tuple[np.ndarray, np.ndarray] | None = None
    files: list[Path] = field(default_factory=list)


# ---------------------------------------------------------------------- reading


def _read_csv_columns(path: Path) -> dict[str, np.ndarray]:
    """Numeric columns of a CSV file; blank or non-numeric cells become NaN."""
    table = pd.read_csv(path)
    return {name: pd.to_numeric(table[name], errors="coerce").to_numpy(dtype=float) for name in table.columns}


def _running_best(values: np.ndarray) -> np.ndarray:
    finite = np.where(np.isfinite(values), values, -np.inf)
    best = np.maximum.accumulate(finite) if finite.size else finite
    return np.where(np.isfinite(best), best, np.nan)


def _find_monitor_dir(run_dir: Path) -> Path | None:
    for folder in (run_dir / MONITOR_FOLDER, run_dir):
        if (folder / RETURNS_FILE).is_file():
            return folder
    return None


def _read_episodes(folders: Sequence[Path], files: list[Path]) -> tuple[np.ndarray, np.ndarray] | None:
    """Training episodes of ``Monitor`` files, placed at their cumulative step count.

    SB3's ``load_results`` shifts each file by its ``t_start`` and orders the episodes by
    wall time, so with several envs the step of an episode is approximate to within one
    episode per env.
    """
    for folder in folders:
        try:
            episodes = load_results(str(folder))
        except LoadMonitorResultsError:
            continue
        files.extend(sorted(folder.glob("*monitor.csv")))
        return np.cumsum(episodes["l"].to_numpy(dtype=float)), episodes["r"].to_numpy(dtype=float)
    return None


def _read_evaluations(folders: Sequence[Path], files: list[Path]) -> tuple[np.ndarray, np.ndarray] | None:
    for folder in folders:
        path = folder / EVALUATIONS_FILE
        if path.is_file():
            with np.load(path) as data:
                timesteps, results = np.asarray(data["timesteps"], float), np.asarray(data["results"], float)
            files.append(path)
            return timesteps, results.reshape(len(timesteps), -1).mean(axis=1)
    return None


def _returns_from_progress(progress: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str] | None:
    steps = progress.get("time/total_timesteps")
    if steps is None:
        return None
    for key, label in (("eval/mean_reward", "evaluation return"), ("rollout/ep_rew_mean", "rollout return")):
        values = progress.get(key)
        if values is not None and np.isfinite(values).any():
            keep = np.isfinite(values) & np.isfinite(steps)
            returns = {"timesteps": steps[keep], "return": values[keep]}
            returns["best_return"] = _running_best(returns["return"])
            returns["threshold"] = np.full(keep.sum(), np.nan)
            return returns, f"{label} ({key} in {PROGRESS_FILE})"
    return None


def _diagnostics_from_progress(progress: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    steps = progress.get("time/total_timesteps", np.array([]))
    keys = {**DIAGNOSTIC_KEYS, "learning_rate": "train/learning_rate"}
    present = [progress[key] for key in keys.values() if key in progress]
    if not present:
        return {"timesteps": np.array([])}
    keep = np.isfinite(steps) & np.any([np.isfinite(column) for column in present], axis=0)
    diagnostics = {"timesteps": steps[keep]}
    for name, key in keys.items():
        column = progress.get(key, np.full(len(steps), np.nan))[keep]
        # SB3 logs minus the entropy as the entropy loss.
        diagnostics[name] = -column if name == "entropy" else column
    return diagnostics


def load_run(run_dir: str | Path) -> RunLogs:
    """Read the records of a run.

    :param run_dir: a run folder with a ``collapse_monitor/`` folder, the monitor's
        folder itself, or a folder with an SB3 ``progress.csv``.
    :return: the run's returns, diagnostics and collapse events.
    :raises FileNotFoundError: when the folder holds none of these.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a folder")
    files: list[Path] = []
    monitor_dir = _find_monitor_dir(run_dir)
    folders = [run_dir]
    if monitor_dir is not None and monitor_dir.name == MONITOR_FOLDER and monitor_dir.parent != run_dir:
        # Given the monitor's own folder: the zoo's files sit in the run folder above it.
        folders.append(monitor_dir.parent)
    progress_path = next((folder / PROGRESS_FILE for folder in folders if (folder / PROGRESS_FILE).is_file()), None)
    progress = _read_csv_columns(progress_path) if progress_path is not None else {}

    events: list[CollapseEvent] = []
    settings: dict[str, Any] = {}
    health: pd.DataFrame | None = None
    diagnoses: dict[int, Diagnosis] = {}
    if monitor_dir is not None:
        returns = _read_csv_columns(monitor_dir / RETURNS_FILE)
        diagnostics = _read_csv_columns(monitor_dir / DIAGNOSTICS_FILE)
        files += [monitor_dir / RETURNS_FILE, monitor_dir / DIAGNOSTICS_FILE]
        if (monitor_dir / EVENTS_FILE).is_file():
            record = MonitorRecord.read(monitor_dir)
            settings, events = record.settings, record.events
            files.append(monitor_dir / EVENTS_FILE)
        for event in events:
            if event.diagnosis is not None and (monitor_dir / event.diagnosis).is_file():
                diagnoses[event.index] = Diagnosis.load((monitor_dir / event.diagnosis).parent)
                files.append(monitor_dir / event.diagnosis)
        if (monitor_dir / HEALTH_FILE).is_file():
            health = pd.read_csv(monitor_dir / HEALTH_FILE)
            health = health if len(health) else None
            files.append(monitor_dir / HEALTH_FILE)
        following = str(settings.get("following") or "")
        return_label = "training-episode return" if following == "rollout" else "evaluation return"
    else:
        from_progress = _returns_from_progress(progress)
        if from_progress is None:
            raise FileNotFoundError(
                f"no {MONITOR_FOLDER}/{RETURNS_FILE} (CollapseMonitor records) or {PROGRESS_FILE} "
                f"with returns in {run_dir}"
            )
        returns, return_label = from_progress
        diagnostics = _diagnostics_from_progress(progress)
    if progress_path is not None:
        files.append(progress_path)
    for name in DIAGNOSTIC_NAMES:
        diagnostics.setdefault(name, np.full(len(diagnostics.get("timesteps", [])), np.nan))
    diagnostics.setdefault("timesteps", np.array([]))

    return RunLogs(
        run_dir=run_dir,
        returns=returns,
        return_label=return_label,
        diagnostics=diagnostics,
        events=events,
        settings=settings,
        health=health,
        diagnoses=diagnoses,
        episodes=_read_episodes(folders, files),
        evaluations=_read_evaluations(folders, files),
        files=files,
    )


# ---------------------------------------------------------------------- drawing


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _diagnostic_columns(logs: RunLogs) -> list[str]:
    extra = [name for name in logs.diagnostics if name not in ("timesteps", "n_updates", *DIAGNOSTIC_NAMES)]
    return [*DIAGNOSTIC_NAMES, *extra]


def _zoom_window(logs: RunLogs, event: CollapseEvent | None) -> tuple[float, float]:
    steps = logs.diagnostics["timesteps"]
    all_steps = np.concatenate([steps, logs.returns["timesteps"]])
    if all_steps.size == 0:
        return 0.0, 1.0
    if event is None:
        return float(np.nanmin(all_steps)), float(np.nanmax(all_steps))
    spacing = float(np.median(np.diff(steps))) if steps.size > 1 else 1.0
    detected = float(event.detected_timesteps)
    last_good = float(event.last_good_timesteps or detected)
    window_steps = [row["timesteps"] for row in event.diagnostics_window or []]
    low = min(window_steps) if window_steps else last_good - 10 * spacing
    end = max(detected, float(event.rollback_timesteps or detected))
    high = end + max(detected - last_good, 3 * spacing)
    return low - spacing, high


def _event_summary(event: CollapseEvent, total: int) -> str:
    lines = [
        f"Collapse {event.index} of {total}: detected at step {event.detected_timesteps} "
        f"(drop began at step {event.drop_start_timesteps}, last good return at step "
        f"{event.last_good_timesteps})",
        f"best return {_fmt(event.best_return)} at step {event.best_timesteps}; "
        f"return at detection {_fmt(event.return_at_detection)} (threshold {_fmt(event.threshold)}); "
        f"kept checkpoint {event.checkpoint}",
    ]
    if event.rollback_timesteps is not None:
        lines.append(
            f"rolled back at step {event.rollback_timesteps}, learning rate now {_fmt(event.learning_rate_after)}"
        )
    return "\n".join(lines)


def _mark_events(axes: Any, events: list[CollapseEvent], chosen: CollapseEvent | None) -> None:
    for event in events:
        emphasis = 1.0 if event is chosen else 0.4
        start = event.last_good_timesteps
        if start is not None:
            axes.axvspan(start, event.detected_timesteps, color="tab:red", alpha=0.15 * emphasis, lw=0)
        axes.axvline(event.detected_timesteps, color="tab:red", lw=1.2, alpha=emphasis)
        if event.rollback_timesteps is not None:
            axes.axvline(event.rollback_timesteps, color="tab:green", lw=1.2, ls="--", alpha=emphasis)


def _draw_returns(axes: Any, logs: RunLogs, chosen: CollapseEvent | None, window: tuple[float, float]) -> None:
    if logs.episodes is not None:
        axes.plot(*logs.episodes, ".", ms=2, color="0.7", label="training episodes (monitor files)", zorder=1)
    followed = str(logs.settings.get("following") or "")
    if logs.evaluations is not None and not followed.endswith("eval"):
        axes.plot(*logs.evaluations, "s", ms=3, color="tab:purple", label="evaluations.npz", zorder=2)
    steps = logs.returns["timesteps"]
    axes.plot(steps, logs.returns["return"], "o-", ms=3, lw=1.2, color="tab:blue", label=logs.return_label, zorder=3)
    axes.plot(steps, logs.returns["best_return"], drawstyle="steps-post", color="black", lw=1, label="best so far")
    if np.isfinite(logs.returns["threshold"]).any():
        axes.plot(
            steps, logs.returns["threshold"], drawstyle="steps-post", color="tab:red", lw=0.8, ls=":", label="threshold"
        )
    _mark_events(axes, logs.events, chosen)
    for event in logs.events:
        if event.best_timesteps is not None and event.best_return is not None:
            axes.plot(event.best_timesteps, event.best_return, "*", ms=12, color="gold", mec="black", zorder=4)
    if chosen is not None:
        axes.axvspan(*window, color="tab:blue", alpha=0.06, lw=0, label="zoom of the panels below")
    axes.set_xlabel("timesteps")
    axes.set_ylabel("return")
    axes.legend(loc="best", fontsize=7, framealpha=0.8)
    axes.grid(alpha=0.3)


def _summary_title(name: str, event: CollapseEvent | None) -> str:
    label = DIAGNOSTIC_LABELS.get(name, name)
    if event is None:
        return label
    before = (event.diagnostics_before or {}).get(name) or {}
    during = (event.diagnostics_during or {}).get(name) or {}
    if before.get("mean") is None and during.get("mean") is None:
        return label
    return (
        f"{label}: before {_fmt(before.get('mean'))} → during {_fmt(during.get('mean'))} "
        f"[{_fmt(during.get('min'))}, {_fmt(during.get('max'))}]"
    )


def _draw_diagnostic(
    axes: Any, logs: RunLogs, name: str, chosen: CollapseEvent | None, window: tuple[float, float]
) -> None:
    steps = logs.diagnostics["timesteps"]
    values = logs.diagnostics[name]
    axes.set_title(_summary_title(name, chosen), fontsize=8)
    if not np.isfinite(values).any():
        axes.text(0.5, 0.5, "not recorded by this algorithm", ha="center", va="center", transform=axes.transAxes)
        axes.set_xticks([])
        axes.set_yticks([])
        return
    # Plot only the zoomed range so that the y-axis scales to it.
    inside = (steps >= window[0]) & (steps <= window[1])
    axes.plot(steps[inside], values[inside], "o-", ms=2.5, lw=1, color="tab:blue")
    _mark_events(axes, logs.events, chosen)
    axes.set_xlim(*window)
    axes.tick_params(labelsize=7)
    axes.grid(alpha=0.3)


HEALTH_PANELS = {
    "feature_erank": "effective rank of the last hidden features",
    "dead_fraction": "dead-unit fraction",
    "grad_ratio_value_policy": "|∇ value loss| / |∇ policy loss| on shared layers",
}


def _draw_health(axes: Any, logs: RunLogs, name: str, chosen: CollapseEvent | None) -> None:
    assert logs.health is not None
    axes.set_title(HEALTH_PANELS[name], fontsize=8)
    values = pd.to_numeric(logs.health[name], errors="coerce")
    if not np.isfinite(values).any():
        axes.text(
            0.5,
            0.5,
            "nothing shared by the two heads" if name.startswith("grad") else "not recorded",
            ha="center",
            va="center",
            transform=axes.transAxes,
        )
        return
    axes.plot(logs.health["timesteps"], values, "o-", ms=2.5, lw=1, color="tab:brown")
    if name == "grad_ratio_value_policy":
        axes.set_yscale("log")
    _mark_events(axes, logs.events, chosen)
    axes.tick_params(labelsize=7)
    axes.grid(alpha=0.3)


def _draw_layers(axes: Any, diagnosis: Diagnosis) -> None:
    """Each layer's change alone (good → bad), as a share of the whole change; the flipping ones in red."""
    column = f"{diagnosis.effect}_1"
    full = diagnosis.summary["disagreement" if diagnosis.effect == "disagreement" else "kl_good_bad"]
    table = diagnosis.layers
    share = table[column] / full if full and full > 0 else table[column] * 0
    colours = ["tab:red" if flips else "tab:gray" for flips in table["flips_policy"]]
    positions = np.arange(len(table))
    axes.barh(positions, share, color=colours)
    axes.barh(positions, table["relative_delta"].clip(upper=1.0), height=0.25, color="black", alpha=0.6)
    axes.set_yticks(positions, table["layer"], fontsize=6)
    axes.invert_yaxis()
    axes.axvline(diagnosis.flip_share, color="tab:red", ls=":", lw=0.8)
    axes.set_title(
        f"each layer alone good→bad: share of the full {diagnosis.effect} (bars; red: flips the policy); "
        "black: |Δw|/|w|",
        fontsize=8,
    )
    axes.tick_params(labelsize=7)


def _draw_probe(axes: Any, diagnosis: Diagnosis, logs: RunLogs | None, chosen: CollapseEvent | None) -> None:
    summary = diagnosis.summary
    trajectory = diagnosis.trajectory
    axes.set_title(
        f"probe batch ({summary['n_states']} states): "
        f"entropy {summary['entropy_good']:.3g}→{summary['entropy_bad']:.3g}, "
        f"value {summary['value_good']:.3g}→{summary['value_bad']:.3g}",
        fontsize=8,
    )
    if trajectory is None or trajectory.empty:
        axes.text(0.5, 0.5, "no kept checkpoints", ha="center", va="center", transform=axes.transAxes)
        return
    axes.plot(trajectory["timesteps"], trajectory["kl_from_good"], "o-", ms=3, label="KL(good ‖ checkpoint)")
    if trajectory["disagreement"].notna().any():
        axes.plot(trajectory["timesteps"], trajectory["disagreement"], "s-", ms=3, label="action disagreement")
    axes.plot(trajectory["timesteps"], trajectory["entropy"], "^-", ms=3, label="entropy")
    for column in (name for name in trajectory.columns if name.startswith("prob_")):
        axes.plot(trajectory["timesteps"], trajectory[column], lw=0.8, ls="--", label=f"P(action {column[5:]})")
    if logs is not None:
        _mark_events(axes, logs.events, chosen)
    axes.legend(fontsize=6, loc="best")
    axes.tick_params(labelsize=7)
    axes.grid(alpha=0.3)


def _draw_filters(axes: Any, diagnosis: Diagnosis) -> None:
    table = diagnosis.filters
    column = f"{diagnosis.effect}_1"
    labels = [f"{row.layer}[{row.filter}]" for row in table.itertuples()]
    colours = ["tab:red" if flips else "tab:gray" for flips in table["flips_policy"]]
    axes.bar(np.arange(len(table)), table[column], color=colours)
    axes.set_xticks(np.arange(len(table)), labels, rotation=90, fontsize=5)
    axes.set_title(f"each convolution filter alone good→bad: {diagnosis.effect} (red: flips the policy)", fontsize=8)
    axes.tick_params(labelsize=7)


def render_diagnosis_png(diagnosis: Diagnosis, path: str | Path, title: str | None = None) -> Path:
    """Draw a diagnosis on its own (the ``diagnose`` command's picture)."""
    from matplotlib.figure import Figure

    rows = 3 if not diagnosis.filters.empty else 2
    figure = Figure(figsize=(11, 3.2 * rows + 0.25 * len(diagnosis.layers) / 4), layout="constrained")
    grid = figure.add_gridspec(rows, 1)
    figure.suptitle(title or "Diagnosis", fontsize=9, ha="left", x=0.01)
    _draw_layers(figure.add_subplot(grid[0, 0]), diagnosis)
    _draw_probe(figure.add_subplot(grid[1, 0]), diagnosis, None, None)
    if rows == 3:
        _draw_filters(figure.add_subplot(grid[2, 0]), diagnosis)
    path = Path(path)
    figure.savefig(path, dpi=110)
    return path


def _figure(logs: RunLogs, event_index: int | None, title: str | None) -> Any:
    from matplotlib.figure import Figure

    chosen = logs.events[event_index - 1] if event_index is not None and logs.events else None
    window = _zoom_window(logs, chosen)
    names = _diagnostic_columns(logs)
    rows = math.ceil(len(names) / 2)
    health_rows = 2 if logs.health is not None else 0
    diagnosis = logs.diagnoses.get(chosen.index) if chosen is not None else None
    diagnosis_rows = (2 + (not diagnosis.filters.empty)) if diagnosis is not None else 0
    total = 1 + rows + health_rows + diagnosis_rows
    figure = Figure(figsize=(11, 4.5 + 2.2 * (total - 1)), layout="constrained")
    grid = figure.add_gridspec(total, 2, height_ratios=[2.2] + [1] * (total - 1))
    heading = title or f"Collapse report: {logs.run_dir}"
    if chosen is not None:
        heading += "\n" + _event_summary(chosen, len(logs.events))
    elif logs.settings:
        heading += "\nno collapse detected"
    figure.suptitle(heading, fontsize=9, ha="left", x=0.01)
    _draw_returns(figure.add_subplot(grid[0, :]), logs, chosen, window)
    for position, name in enumerate(names):
        axes = figure.add_subplot(grid[1 + position // 2, position % 2])
        _draw_diagnostic(axes, logs, name, chosen, window)
        if position // 2 == rows - 1:
            axes.set_xlabel("timesteps (update trained on the rollout ending there)", fontsize=7)
    row = 1 + rows
    if logs.health is not None:
        for position, name in enumerate(HEALTH_PANELS):
            span = grid[row + position // 2, position % 2] if position < 2 else grid[row + 1, :]
            _draw_health(figure.add_subplot(span), logs, name, chosen)
        row += 2
    if diagnosis is not None:
        _draw_layers(figure.add_subplot(grid[row, :]), diagnosis)
        _draw_probe(figure.add_subplot(grid[row + 1, :]), diagnosis, logs, chosen)
        if not diagnosis.filters.empty:
            _draw_filters(figure.add_subplot(grid[row + 2, :]), diagnosis)
    return figure


def _check_event(logs: RunLogs, event_index: int | None) -> int | None:
    """The collapse to zoom on: the one asked for, else the first; ``None`` for a run without collapses."""
    if event_index is None:
        return 1 if logs.events else None
    if not logs.events:
        raise ValueError(f"this run recorded no collapse, so there is no event {event_index}")
    if not 1 <= event_index <= len(logs.events):
        raise ValueError(f"event must be between 1 and {len(logs.events)} for this run, got {event_index}")
    return event_index


def render_png(logs: RunLogs, path: str | Path, event: int | None = None, title: str | None = None) -> Path:
    """Draw the one-page report as a PNG.

    :param logs: the run, from :func:`load_run`.
    :param path: the PNG file to write.
    :param event: which collapse (1-based) the diagnostic panels zoom on; ``None``: the first, if any.
    :param title: a title instead of the run folder.
    :return: the path written.
    """
    figure = _figure(logs, _check_event(logs, event), title)
    path = Path(path)
    figure.savefig(path, dpi=110)
    return path


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    table = pd.DataFrame([[("" if cell is None else str(cell)) for cell in row] for row in rows], columns=list(header))
    return table.to_html(index=False, escape=True, border=0)


def render_html(logs: RunLogs, path: str | Path, event: int | None = None, title: str | None = None) -> Path:
    """Write the one-page report as a self-contained HTML file (the figure is embedded).

    :param logs: the run, from :func:`load_run`.
    :param path: the HTML file to write.
    :param event: which collapse (1-based) the diagnostic panels zoom on; ``None``: the first, if any.
    :param title: a title instead of the run folder.
    :return: the path written.
    """
    event_index = _check_event(logs, event)
    buffer = io.BytesIO()
    _figure(logs, event_index, title).savefig(buffer, format="png", dpi=110)
    image = base64.b64encode(buffer.getvalue()).decode("ascii")
    heading = title or f"Collapse report: {logs.run_dir}"

    parts = [f"<h1>{html.escape(heading)}</h1>"]
    if logs.events:
        event_rows = [
            [
                item.index,
                item.detected_timesteps,
                item.drop_start_timesteps,
                item.last_good_timesteps,
                _fmt(item.best_return),
                item.best_timesteps,
                _fmt(item.return_at_detection),
                _fmt(item.threshold),
                item.checkpoint,
                _fmt(item.rollback_timesteps),
                _fmt(item.learning_rate_after),
            ]
            for item in logs.events
        ]
        header = ["collapse", "detected at", "drop began", "last good", "best", "best at"]
        header += ["return", "threshold", "kept checkpoint", "rolled back at", "learning rate after"]
        parts += [f"<h2>{len(logs.events)} collapse(s) detected</h2>", _table(header, event_rows)]
    else:
        parts.append("<h2>No collapse detected</h2>")
    parts.append(f'<img alt="returns and diagnostics" src="data:image/png;base64,{image}">')
    if event_index is not None:
        chosen = logs.events[event_index - 1]
        summary_rows = []
        for name in _diagnostic_columns(logs):
            before = (chosen.diagnostics_before or {}).get(name) or {}
            during = (chosen.diagnostics_during or {}).get(name) or {}
            summary_rows.append(
                [
                    name,
                    _fmt(before.get("mean")),
                    _fmt(during.get("mean")),
                    _fmt(during.get("min")),
                    _fmt(during.get("max")),
                ]
            )
        parts += [
            f"<h2>Diagnostics around collapse {event_index}</h2>",
            "<p>before: the updates before the last good return; during: the updates from the last good "
            "return to the detection.</p>",
            _table(["diagnostic", "before (mean)", "during (mean)", "during (min)", "during (max)"], summary_rows),
        ]
        diagnosis = logs.diagnoses.get(event_index)
        if diagnosis is not None:
            from sb3_ppo_variants.collapse.diagnosis import describe

            layers = diagnosis.layers.copy()
            parts += [
                f"<h2>Diagnosis of collapse {event_index}: last good (step {diagnosis.summary.get('good_timesteps')}) "
                f"→ first bad (step {diagnosis.summary.get('bad_timesteps')}) checkpoint</h2>",
                "<p>" + html.escape(describe(diagnosis)).replace("\n", "<br>") + "</p>",
                layers.to_html(index=False, float_format=lambda value: f"{value:.3g}", border=0),
            ]
            if not diagnosis.filters.empty:
                flipping = diagnosis.filters[diagnosis.filters["flips_policy"]]
                parts += [
                    f"<h3>Filters that alone flip the policy ({len(flipping)})</h3>",
                    flipping.to_html(index=False, float_format=lambda value: f"{value:.3g}", border=0),
                ]
    if logs.settings:
        settings = {key: value for key, value in logs.settings.items() if not isinstance(value, (dict, list))}
        parts += ["<h2>Monitor settings</h2>", _table(["setting", "value"], [[k, v] for k, v in settings.items()])]
    parts.append("<p>Read: " + ", ".join(html.escape(str(file)) for file in logs.files) + "</p>")

    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:1em auto;font-size:13px}"
        "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 6px}"
        "img{max-width:100%}"
    )
    document = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(heading)}</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
    path = Path(path)
    path.write_text(document, encoding="utf-8")
    return path


# ---------------------------------------------------------------------- command


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m sb3_ppo_variants.collapse report",
        description="Draw a one-page report (PNG or HTML) of the policy collapses recorded in a run folder.",
    )
    parser.add_argument("run_dir", type=Path, help="run folder (holding collapse_monitor/) or the monitor's folder")
    parser.add_argument("-o", "--output", type=Path, required=True, help="report file, .png or .html")
    parser.add_argument(
        "--event", type=int, default=None, help="collapse (1-based) the diagnostic panels zoom on (default: the first)"
    )
    parser.add_argument("--title", default=None, help="title instead of the run folder")
    args = parser.parse_args(argv)

    suffix = args.output.suffix.lower()
    if suffix not in (".png", ".html", ".htm"):
        parser.error(f"--output must end in .png or .html, got {args.output}")
    try:
        logs = load_run(args.run_dir)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        render = render_png if suffix == ".png" else render_html
        written = render(logs, args.output, event=args.event, title=args.title)
    except (FileNotFoundError, ValueError) as error:
        print(f"collapse_report: {error}", file=sys.stderr)
        return 2
    print(f"collapse_report: {len(logs.events)} collapse(s), report written to {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
