"""PNG figures of the benchmark results (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from sb3_ppo_variants.benchmark.algorithms import (
    ALGORITHMS,
    CONTRIB_ALGORITHMS,
    CONTRIB_LABELS,
    LABELS,
    OPTIONS_SEPARATOR,
)

# One colour per algorithm, in the registry's order, the same in every figure; SB3's PPO is black.
COLOURS = {
    "ppo": "#000000",
    **{
        name: matplotlib.colors.to_hex(plt.get_cmap("tab20")(index % 20))
        for index, name in enumerate(name for name in ALGORITHMS if name != "ppo")
    },
    **{
        name: matplotlib.colors.to_hex(plt.get_cmap("Dark2")(index % 8))
        for index, name in enumerate(name for name in CONTRIB_ALGORITHMS)
    },
}
# the settings of the cost benchmark, in the order of its plot
COST_SETTING_ORDER = ("mlp", "cnn", "masked", "recurrent")


def label(name: str) -> str:
    """How tables and plots name an algorithm; one with options (``NAME@KEY=VALUE``) as ``NAME``'s label with
    them."""
    base, separator, options = name.partition(OPTIONS_SEPARATOR)
    if separator and base in LABELS:
        return f"{LABELS[base]} ({options.replace(',', ', ')})"
    return LABELS.get(name) or CONTRIB_LABELS.get(name, name)


def colour(name: str) -> str:
    return COLOURS.get(name, "#17becf")


def plot_cost(summary: list[dict[str, Any]], path: Path) -> None:
    """Median time ratio (variant / the setting's reference) with its interquartile range, per setting and measure."""
    present = list(dict.fromkeys(entry["setting"] for entry in summary))
    settings = [name for name in COST_SETTING_ORDER if name in present]
    settings += [name for name in present if name not in settings]
    measures = [name for name in ("train", "learn") if any(entry["measure"] == name for entry in summary)]
    figure, axes = plt.subplots(
        len(settings), len(measures), figsize=(5.6 * len(measures), 3.4 * len(settings)), squeeze=False
    )
    for row, setting in enumerate(settings):
        for column, measure in enumerate(measures):
            axis = axes[row][column]
            entries = [e for e in summary if e["setting"] == setting and e["measure"] == measure]
            positions = np.arange(len(entries))
            medians = np.array([e["median_ratio"] for e in entries])
            errors = np.array([[m - e["ratio_q25"], e["ratio_q75"] - m] for e, m in zip(entries, medians, strict=True)])
            axis.barh(positions, medians - 1.0, left=1.0, color=[colour(e["algorithm"]) for e in entries], alpha=0.8)
            axis.errorbar(medians, positions, xerr=errors.T, fmt="none", ecolor="black", capsize=3, linewidth=1)
            for position, entry, median in zip(positions, entries, medians, strict=True):
                axis.annotate(
                    f"×{median:.3f} ({entry['pairs']})",
                    (max(median, entry["ratio_q75"]), position),
                    xytext=(4, 0),
                    textcoords="offset points",
                    va="center",
                    fontsize=7,
                )
            axis.axvline(1.0, color="black", linewidth=1)
            axis.axvline(1.03, color="grey", linestyle="--", linewidth=1, label="+3 %")
            axis.set_yticks(positions, [label(e["algorithm"]) for e in entries])
            axis.invert_yaxis()
            low = min(0.95, float(min(e["ratio_q25"] for e in entries)) - 0.01)
            high = max(1.08, float(max(e["ratio_q75"] for e in entries)) + 0.04)
            axis.set_xlim(low, high)
            what = "train() on one rollout" if measure == "train" else "learn() wall-clock (1 / FPS)"
            threads = entries[0]["threads"]
            axis.set_title(f"{setting.upper()}: {what}, {threads} torch thread{'s' if threads > 1 else ''}", fontsize=9)
            reference = label(entries[0].get("reference", "ppo")).removesuffix(" (SB3)").removesuffix(" (sb3-contrib)")
            axis.set_xlabel(f"time ratio variant / {reference}: median, IQR (pairs)", fontsize=8)
            axis.tick_params(labelsize=8)
            axis.legend(loc="lower right", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _task_panels(count: int, width: float = 4.6, height: float = 3.4) -> tuple[Any, list[Any]]:
    columns = min(count, 2)
    rows = int(np.ceil(count / columns))
    # the last quarter of the width holds the legend
    figure, axes = plt.subplots(rows, columns, figsize=(width * columns / 0.75, height * rows + 0.4), squeeze=False)
    for axis in axes.flat[count:]:
        axis.set_visible(False)
    return figure, list(axes.flat)


def plot_learning_curves(curves: Any, path: Path) -> None:
    """Evaluation return against environment steps: IQM over seeds with a 95 % bootstrap band, per task."""
    from sb3_ppo_variants.benchmark.scores import iqm_curve
    from sb3_ppo_variants.benchmark.tasks import TASKS

    tasks = [task for task in TASKS if task in set(curves.task)]
    figure, axes = _task_panels(len(tasks), width=4.8)
    for axis, task in zip(axes, tasks, strict=False):
        spec = TASKS[task]
        frame = curves[curves.task == task]
        for algorithm in [name for name in COLOURS if name in set(frame.algorithm)]:
            table = frame[frame.algorithm == algorithm].pivot_table(index="seed", columns="step", values="eval_return")
            table = table.dropna(axis=1)
            middle, low, high = iqm_curve(table.to_numpy())
            steps = table.columns.to_numpy()
            axis.plot(steps, middle, color=colour(algorithm), label=f"{label(algorithm)} ({len(table)})", linewidth=1.4)
            axis.fill_between(steps, low, high, color=colour(algorithm), alpha=0.1, linewidth=0)
        axis.axhline(spec.random_score, color="grey", linestyle=":", linewidth=1)
        axis.axhline(spec.threshold, color="grey", linestyle="--", linewidth=1)
        axis.set_title(task, fontsize=10)
        axis.set_xlabel("environment steps")
        axis.set_ylabel("greedy evaluation return")
        axis.ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(
        handles,
        labels,
        loc="center left",
        bbox_to_anchor=(0.76, 0.5),
        fontsize=8,
        title="algorithm (seeds)",
        title_fontsize=8,
    )
    figure.suptitle("IQM over seeds with 95 % bootstrap band\ndotted: random policy; dashed: threshold", fontsize=10)
    figure.tight_layout(rect=(0, 0, 0.75, 0.96))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_final_scores(scores: Any, aggregate: Any, path: Path) -> None:
    """IQM of the final score with its 95 % stratified-bootstrap interval, per task and aggregated."""
    tasks = list(dict.fromkeys(scores.task))
    panels = len(tasks) + (1 if not aggregate.empty else 0)
    figure, axes = plt.subplots(1, panels, figsize=(2.9 * panels, 3.2), squeeze=False)
    entries = [(task, scores[scores.task == task], "iqm_final_return", "final return") for task in tasks]
    if not aggregate.empty:
        entries.append(("all tasks, normalised", aggregate, "iqm_normalised", "normalised score"))
    for axis, (title, frame, column, xlabel) in zip(axes[0], entries, strict=True):
        frame = frame.reset_index(drop=True)
        positions = np.arange(len(frame))
        for position, row in zip(positions, frame.itertuples(), strict=True):
            value = getattr(row, column)
            axis.plot(
                [row.ci_low, row.ci_high], [position, position], color=colour(row.algorithm), linewidth=6, alpha=0.4
            )
            axis.plot([value], [position], marker="|", markersize=14, color=colour(row.algorithm))
        axis.set_yticks(positions, [label(name) for name in frame.algorithm] if axis is axes[0][0] else [])
        axis.set_ylim(len(frame) - 0.5, -0.5)
        axis.set_title(title, fontsize=9)
        axis.set_xlabel(f"IQM {xlabel}", fontsize=8)
        axis.tick_params(labelsize=8)
        axis.grid(axis="x", alpha=0.3)
    figure.suptitle("Final score (mean of the last 3 evaluations): IQM and 95 % stratified-bootstrap CI", fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.94))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_collapse(collapse: Any, path: Path) -> None:
    """Per algorithm against the learning-rate scale: collapsed runs, runs with any drop to near random, final score."""
    tasks = list(dict.fromkeys(collapse.task))
    measures = (
        ("collapsed_fraction", "fraction of runs that collapsed", "collapsed (no recovery)"),
        ("dropped_fraction", "fraction of runs that fell to near random", "any drop to near random"),
        ("iqm_final_normalised", "IQM final normalised score", "final score"),
    )
    figure, axes = plt.subplots(
        len(tasks), len(measures), figsize=(4.1 * len(measures), 3.6 * len(tasks) + 0.6), squeeze=False
    )
    for row, task in enumerate(tasks):
        frame = collapse[collapse.task == task].copy()
        frame["dropped_fraction"] = frame.runs_fell_to_random / frame.runs
        scales = sorted(frame.learning_rate_scale.unique())
        algorithms = [name for name in COLOURS if name in set(frame.algorithm)]
        offsets = np.linspace(-0.05, 0.05, len(algorithms))
        for axis, (column, ylabel, title) in zip(axes[row], measures, strict=True):
            for offset, algorithm in zip(offsets, algorithms, strict=True):
                rows = frame[frame.algorithm == algorithm].sort_values("learning_rate_scale")
                x = rows.learning_rate_scale.to_numpy() * 10**offset
                axis.plot(x, rows[column], marker="o", markersize=4, color=colour(algorithm), label=label(algorithm))
            axis.set_xscale("log")
            axis.set_xticks(scales, [f"×{scale:g}" for scale in scales])
            axis.minorticks_off()
            axis.set_xlabel("learning rate, multiple of the tuned value")
            axis.set_ylabel(ylabel)
            axis.set_title(f"{task}: {title} ({int(frame.runs.min())} seeds)", fontsize=9)
            axis.grid(alpha=0.3)
            if column != "iqm_final_normalised":
                axis.set_ylim(-0.05, 1.05)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=7, fontsize=8)
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_collapse_curves(curves: Any, verdicts: Any, path: Path) -> None:
    """Every run of the sweep: rows are learning-rate scales, columns algorithms; collapsed runs in red."""
    from sb3_ppo_variants.benchmark.tasks import TASKS

    task = next(iter(dict.fromkeys(curves.task)))
    curves = curves[curves.task == task]
    scales = sorted(curves.learning_rate_scale.unique())
    algorithms = [name for name in COLOURS if name in set(curves.algorithm)]
    figure, axes = plt.subplots(
        len(scales),
        len(algorithms),
        figsize=(1.9 * len(algorithms), 1.7 * len(scales)),
        sharex=True,
        sharey=True,
        squeeze=False,
    )
    collapsed = {
        (row.algorithm, row.learning_rate_scale, row.seed)
        for row in verdicts[(verdicts.task == task) & verdicts.collapsed].itertuples()
    }
    for row_index, scale in enumerate(scales):
        for column_index, algorithm in enumerate(algorithms):
            axis = axes[row_index][column_index]
            frame = curves[(curves.learning_rate_scale == scale) & (curves.algorithm == algorithm)]
            for seed, run in frame.groupby("seed"):
                run = run.sort_values("step")
                is_collapsed = (algorithm, scale, seed) in collapsed
                axis.plot(
                    run.step,
                    run.eval_return,
                    linewidth=1.6 if is_collapsed else 0.8,
                    color="#d62728" if is_collapsed else "#555555",
                    alpha=0.9 if is_collapsed else 0.6,
                )
            axis.axhline(TASKS[task].random_score, color="grey", linestyle=":", linewidth=0.8)
            if row_index == 0:
                axis.set_title(label(algorithm), fontsize=8)
            if column_index == 0:
                axis.set_ylabel(f"lr ×{scale:g}", fontsize=9)
            axis.tick_params(labelsize=6)
            axis.ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
    figure.suptitle(f"{task}: greedy evaluation return of every run (red: collapsed)", fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.95))
    figure.savefig(path, dpi=100)
    plt.close(figure)
