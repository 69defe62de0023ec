"""Tables and figures from the per-run JSON files written by ``learn`` and ``collapse``.

Writes into the output directory:

- ``learning_curves.csv``: every evaluation of every run (long format, the raw data of the plots);
- ``final_scores.csv``: per task and algorithm at the tuned learning rate, the IQM of the final score
  with its 95 % stratified-bootstrap interval, and the steps and wall-clock to the threshold;
- ``aggregate_scores.csv``: the IQM of normalised final scores over all tasks;
- ``collapse.csv``: per algorithm and learning-rate scale, the runs that collapsed;
- ``tables.md``: the same tables in Markdown;
- ``provenance.json``: versions, hardware and date of the report;

and the PNGs ``learning_curves.png``, ``final_scores.png``, ``collapse.png``, ``collapse_curves.png``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sb3_ppo_variants.benchmark import plots
from sb3_ppo_variants.benchmark.algorithms import ALGORITHMS
from sb3_ppo_variants.benchmark.provenance import provenance
from sb3_ppo_variants.benchmark.scores import collapse_events, iqm_interval, normalised
from sb3_ppo_variants.benchmark.tasks import TASKS

# The final score of a run is its mean evaluation return over its last FINAL_EVALUATIONS evaluations.
FINAL_EVALUATIONS = 3


def load_runs(directory: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per run (``runs``) and one row per evaluation (``curves``)."""
    runs, curves = [], []
    for path in sorted(directory.glob("*/*.json")):
        run = json.loads(path.read_text())
        key = {name: run[name] for name in ("task", "algorithm", "learning_rate_scale", "seed")}
        evaluations = run["evaluations"]
        final = float(np.mean([entry["eval_return"] for entry in evaluations[-FINAL_EVALUATIONS:]]))
        runs.append(
            {
                **key,
                "learning_rate": run["learning_rate"],
                "timesteps": run["timesteps"],
                "train_seconds": run["train_seconds"],
                "final_return": final,
            }
        )
        for entry in evaluations:
            curves.append(
                {
                    **key,
                    "step": entry["step"],
                    "train_seconds": entry["train_seconds"],
                    "eval_return": entry["eval_return"],
                    "train_return": entry["train_return"],
                }
            )
    return pd.DataFrame(runs), pd.DataFrame(curves)


def _algorithm_order(names: Any) -> list[str]:
    return [name for name in ALGORITHMS if name in set(names)]


def final_scores(runs: pd.DataFrame, curves: pd.DataFrame, reps: int) -> pd.DataFrame:
    """Final-score IQM with its interval and time to threshold, per task and algorithm (learning rate ×1)."""
    rows = []
    tuned = runs[runs.learning_rate_scale == 1.0]
    for task in [name for name in TASKS if name in set(tuned.task)]:
        spec = TASKS[task]
        for algorithm in _algorithm_order(tuned[tuned.task == task].algorithm):
            group = tuned[(tuned.task == task) & (tuned.algorithm == algorithm)]
            iqm, low, high = iqm_interval(group.final_return.to_numpy(), reps=reps)
            steps_to, seconds_to = [], []
            for seed in group.seed:
                curve = curves[
                    (curves.task == task)
                    & (curves.algorithm == algorithm)
                    & (curves.learning_rate_scale == 1.0)
                    & (curves.seed == seed)
                ].sort_values("step")
                reached = curve[(curve.eval_return >= spec.threshold) & (curve.step > 0)]
                if len(reached):
                    steps_to.append(int(reached.step.iloc[0]))
                    seconds_to.append(float(reached.train_seconds.iloc[0]))
            rows.append(
                {
                    "task": task,
                    "algorithm": algorithm,
                    "runs": len(group),
                    "seeds": " ".join(str(seed) for seed in sorted(group.seed)),
                    "timesteps": int(group.timesteps.median()),
                    "iqm_final_return": round(iqm, 2),
                    "ci_low": round(low, 2),
                    "ci_high": round(high, 2),
                    "mean_final_return": round(float(group.final_return.mean()), 2),
                    "threshold": spec.threshold,
                    "runs_reaching_threshold": len(steps_to),
                    "median_steps_to_threshold": int(np.median(steps_to)) if steps_to else None,
                    "median_seconds_to_threshold": round(float(np.median(seconds_to)), 1) if seconds_to else None,
                    "median_train_seconds": round(float(group.train_seconds.median()), 1),
                }
            )
    return pd.DataFrame(rows)


def aggregate_scores(runs: pd.DataFrame, reps: int) -> pd.DataFrame:
    """IQM of normalised final scores over every task, with the stratified-bootstrap interval.

    Each algorithm uses the seeds that every task has finished, so the score matrix is rectangular.
    """
    tuned = runs[runs.learning_rate_scale == 1.0].copy()
    tasks = [name for name in TASKS if name in set(tuned.task)]
    tuned["score"] = [
        float(normalised(row.final_return, TASKS[row.task].random_score, TASKS[row.task].max_score))
        for row in tuned.itertuples()
    ]
    rows = []
    for algorithm in _algorithm_order(tuned.algorithm):
        group = tuned[tuned.algorithm == algorithm]
        seed_sets = [set(group[group.task == task].seed) for task in tasks]
        seeds = sorted(set.intersection(*seed_sets)) if seed_sets else []
        if not seeds:
            continue
        matrix = np.array(
            [[group[(group.task == task) & (group.seed == seed)].score.iloc[0] for task in tasks] for seed in seeds]
        )
        iqm, low, high = iqm_interval(matrix, reps=reps)
        rows.append(
            {
                "algorithm": algorithm,
                "tasks": len(tasks),
                "seeds": len(seeds),
                "iqm_normalised": round(iqm, 3),
                "ci_low": round(low, 3),
                "ci_high": round(high, 3),
            }
        )
    return pd.DataFrame(rows)


def collapse_table(curves: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per run, the collapse criterion's verdict; and per task, algorithm and scale, the counts."""
    verdicts = []
    for (task, algorithm, scale, seed), curve in curves.groupby(["task", "algorithm", "learning_rate_scale", "seed"]):
        spec = TASKS[task]
        curve = curve.sort_values("step")
        scores = normalised(curve.eval_return.to_numpy(), spec.random_score, spec.max_score)
        events = collapse_events(curve.step.to_numpy(), scores)
        verdicts.append(
            {
                "task": task,
                "algorithm": algorithm,
                "learning_rate_scale": scale,
                "seed": seed,
                "best_normalised": round(events.best, 3),
                "final_normalised": round(float(np.mean(scores[-FINAL_EVALUATIONS:])), 3),
                "collapsed": events.collapsed,
                "collapse_step": events.collapse_step,
                "transient_drops": events.transient_drops,
            }
        )
    verdicts_frame = pd.DataFrame(verdicts)
    # a sweep is a task with more than one learning-rate scale
    sweeps = verdicts_frame.groupby("task").learning_rate_scale.nunique()
    swept = verdicts_frame[verdicts_frame.task.isin(sweeps[sweeps > 1].index)]
    rows = []
    for (task, scale), group in swept.groupby(["task", "learning_rate_scale"]):
        for algorithm in _algorithm_order(group.algorithm):
            runs = group[group.algorithm == algorithm]
            rows.append(
                {
                    "task": task,
                    "learning_rate_scale": scale,
                    "algorithm": algorithm,
                    "runs": len(runs),
                    "collapsed": int(runs.collapsed.sum()),
                    "collapsed_fraction": round(float(runs.collapsed.mean()), 3),
                    "runs_with_transient_drops": int((runs.transient_drops > 0).sum()),
                    "runs_fell_to_random": int((runs.collapsed | (runs.transient_drops > 0)).sum()),
                    "never_learned": int((runs.best_normalised < 0.5).sum()),
                    "iqm_final_normalised": round(float(iqm_interval(runs.final_normalised.to_numpy())[0]), 3),
                }
            )
    return verdicts_frame, pd.DataFrame(rows)


def _markdown(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "(no runs)\n"
    columns = list(frame.columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in frame.itertuples(index=False):
        cells = ["" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value) for value in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _number(value: float, digits: int) -> str:
    return f"{value:.{digits}f}"


def learning_markdown(scores: pd.DataFrame) -> str:
    """The final-score table as it appears in docs/benchmarks.md."""
    rows = []
    for row in scores.itertuples():
        digits = 1 if abs(row.iqm_final_return) < 100 else 0
        reached = row.runs_reaching_threshold
        rows.append(
            {
                "task (steps)": f"{row.task} ({row.timesteps:,})",
                "algorithm": row.algorithm,
                "IQM final return [95 % CI]": f"{_number(row.iqm_final_return, digits)} "
                f"[{_number(row.ci_low, digits)}, {_number(row.ci_high, digits)}]",
                "mean": _number(row.mean_final_return, digits),
                "runs ≥ threshold": f"{reached}/{row.runs} (≥ {row.threshold:g})",
                "steps to threshold (median)": f"{int(row.median_steps_to_threshold):,}" if reached else "—",
                "train s to threshold (median)": f"{row.median_seconds_to_threshold:.1f}" if reached else "—",
                "train s per run (median)": f"{row.median_train_seconds:.1f}",
            }
        )
    return _markdown(pd.DataFrame(rows))


def aggregate_markdown(aggregate: pd.DataFrame) -> str:
    rows = [
        {
            "algorithm": row.algorithm,
            "IQM normalised final score [95 % CI]": f"{row.iqm_normalised:.3f} [{row.ci_low:.3f}, {row.ci_high:.3f}]",
            "tasks × seeds": f"{row.tasks} × {row.seeds}",
        }
        for row in aggregate.itertuples()
    ]
    return _markdown(pd.DataFrame(rows))


def collapse_markdown(collapse: pd.DataFrame) -> str:
    """Collapsed runs per algorithm (rows) and learning-rate scale (columns): ``collapsed/runs (drops)``."""
    if collapse.empty:
        return "(no sweep)\n"
    rows = []
    for task in dict.fromkeys(collapse.task):
        frame = collapse[collapse.task == task]
        scales = sorted(frame.learning_rate_scale.unique())
        for algorithm in _algorithm_order(frame.algorithm):
            entry = {"task": task, "algorithm": algorithm}
            for scale in scales:
                match = frame[(frame.algorithm == algorithm) & (frame.learning_rate_scale == scale)]
                if match.empty:
                    entry[f"lr ×{scale:g}"] = "—"
                    continue
                cell = match.iloc[0]
                entry[f"lr ×{scale:g}"] = (
                    f"{cell.collapsed}/{cell.runs} ({cell.runs_with_transient_drops}) · {cell.iqm_final_normalised:.2f}"
                )
            rows.append(entry)
    return _markdown(pd.DataFrame(rows))


def write_report(runs_directory: Path, output: Path, plots_directory: Path, bootstrap_reps: int = 2000) -> None:
    """Read every run under ``runs_directory``; write tables into ``output`` and PNGs into ``plots_directory``."""
    output.mkdir(parents=True, exist_ok=True)
    plots_directory.mkdir(parents=True, exist_ok=True)
    runs, curves = load_runs(runs_directory)
    if runs.empty:
        raise SystemExit(f"no runs under {runs_directory}")
    curves.to_csv(output / "learning_curves.csv", index=False)
    scores = final_scores(runs, curves, bootstrap_reps)
    scores.to_csv(output / "final_scores.csv", index=False)
    aggregate = aggregate_scores(runs, bootstrap_reps)
    aggregate.to_csv(output / "aggregate_scores.csv", index=False)
    verdicts, collapse = collapse_table(curves)
    verdicts.to_csv(output / "collapse_runs.csv", index=False)
    collapse.to_csv(output / "collapse.csv", index=False)
    (output / "provenance.json").write_text(json.dumps(provenance(), indent=2))
    (output / "tables.md").write_text(
        "## Final scores (learning rate ×1)\n\n"
        + learning_markdown(scores)
        + "\n## Aggregate IQM of normalised final scores\n\n"
        + aggregate_markdown(aggregate)
        + "\n## Collapse sweep: collapsed/runs (runs with transient drops) · IQM final normalised score\n\n"
        + collapse_markdown(collapse)
    )

    plots.plot_learning_curves(curves[curves.learning_rate_scale == 1.0], plots_directory / "learning_curves.png")
    plots.plot_final_scores(scores, aggregate, plots_directory / "final_scores.png")
    if not collapse.empty:
        plots.plot_collapse(collapse, plots_directory / "collapse.png")
        swept = curves[curves.task.isin(collapse.task.unique())]
        plots.plot_collapse_curves(swept, verdicts, plots_directory / "collapse_curves.png")
    print(f"report: {len(runs)} runs; tables in {output}, plots in {plots_directory}", flush=True)
