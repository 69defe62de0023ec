"""Whether two grids' runs of the same seeds are the same runs, and from which evaluation they part.

On one machine a run is deterministic, whichever agents share its batched group. On two machines, or with the
compiled and the eager step, float rounding makes a seed's two runs part after the first updates, and from
there they are two samples of the same distribution. ``compare_runs`` tells which: for every run in both grids
(the same task, algorithm, learning-rate scale and seed), the first evaluation whose episode returns differ.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from sb3_ppo_variants.benchmark.extension_study import machine_label, run_files

KEY = ("task", "algorithm", "learning_rate_scale", "seed")


def _runs(directory: Path) -> dict[tuple[Any, ...], dict[str, Any]]:
    runs = {}
    for path in run_files(directory):
        run = json.loads(path.read_text())
        runs[tuple(run[key] for key in KEY)] = run
    return runs


def compare_runs(first: Path, second: Path) -> pd.DataFrame:
    """Per run in both grids (grid directories or task folders): how many evaluation steps the two have in
    common, the first of them at which their episode returns differ (``None`` where none does), and each run's
    machine (``machine_label``)."""
    ones, others = _runs(first), _runs(second)
    rows = []
    for key in sorted(ones.keys() & others.keys(), key=str):
        other = {evaluation["step"]: evaluation["eval_returns"] for evaluation in others[key]["evaluations"]}
        common = [evaluation for evaluation in ones[key]["evaluations"] if evaluation["step"] in other]
        parted = next((e["step"] for e in common if e["eval_returns"] != other[e["step"]]), None)
        rows.append(
            {
                **dict(zip(KEY, key, strict=True)),
                "common_evaluations": len(common),
                "parts_at_step": parted,
                "first_machine": machine_label(ones[key].get("machine")),
                "second_machine": machine_label(others[key].get("machine")),
            }
        )
    columns = [*KEY, "common_evaluations", "parts_at_step", "first_machine", "second_machine"]
    return pd.DataFrame(rows, columns=columns)


def format_comparison(table: pd.DataFrame) -> str:
    """One line per (task, algorithm): how many runs are the same over their common evaluations, and at which
    steps the others part."""
    if table.empty:
        return "no run is in both grids\n"
    lines = []
    for (task, algorithm), group in table.groupby(["task", "algorithm"], sort=True):
        equal = group[group["parts_at_step"].isna()]
        parted = group[group["parts_at_step"].notna()]
        steps = ", ".join(
            f"{int(step)}: {count}" for step, count in parted["parts_at_step"].value_counts().sort_index().items()
        )
        lines.append(
            f"{task} {algorithm}: {len(group)} runs in both, {len(equal)} the same at every evaluation step they share"
            + (f" ({int(equal['common_evaluations'].min())} or more)" if len(equal) else "")
            + (f"; {len(parted)} part, at step (runs) {steps}" if len(parted) else "")
        )
    return "\n".join(lines) + "\n"
