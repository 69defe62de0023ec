"""Whether two engines train alike: the same grid run by the SB3 engine and by the batched engine.

Each engine's runs are classified by the collapse study's definition (``collapse_study.classify_run``), and for
every setting (task, learning rate) and algorithm the two engines are compared on

- reaching competence, the lasting collapse and any drop (lasting or transient) among competent runs, each by
  Fisher's exact test, with the rates' Wilson 95 % intervals;
- the final normalised score: its IQM with rliable's stratified-bootstrap 95 % interval per engine, and the
  two-sided Mann–Whitney U test between the engines.

The two engines do not differ, for a cell, when no test rejects at 0.05 (unadjusted: a difference is what
this comparison looks for, so it is not corrected for the number of tests) and the final-score intervals
overlap.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from sb3_ppo_variants.benchmark.collapse_study import (
    SETTING,
    fisher_exact,
    load_outcomes,
    score_intervals,
    wilson_interval,
)
from sb3_ppo_variants.benchmark.extension_study import seed_ranges

EVENTS = {
    "competent": ("reached_competence", "runs"),
    "collapsed": ("collapsed", "competent"),
    "any_drop": ("any_drop", "competent"),
}
"""Each binary event: the outcome column counted and the runs it is a fraction of."""


def engine_outcomes(directories: dict[str, Path]) -> pd.DataFrame:
    """Every run of every engine, classified, with its ``engine`` label and ``any_drop``."""
    frames = []
    for engine, directory in directories.items():
        outcomes = load_outcomes(directory)
        if outcomes.empty:
            raise SystemExit(f"no run files under {directory}")
        outcomes["engine"] = engine
        frames.append(outcomes)
    outcomes = pd.DataFrame([record for frame in frames for record in frame.to_dict("records")])
    outcomes["any_drop"] = outcomes["collapsed"] | (outcomes["transient_drops"] > 0)
    return outcomes


def agreement_table(outcomes: pd.DataFrame, reps: int = 2000) -> pd.DataFrame:
    """One row per setting and algorithm that both engines ran: counts, rates, intervals and tests."""
    from scipy.stats import mannwhitneyu

    engines = list(dict.fromkeys(outcomes["engine"]))
    if len(engines) != 2:
        raise ValueError(f"need the runs of exactly two engines, got {engines}")
    first, second = engines
    rows = []
    for key, cell in outcomes.groupby([*SETTING, "algorithm"], sort=True):
        by_engine = {engine: cell[cell["engine"] == engine] for engine in engines}
        if any(group.empty for group in by_engine.values()):
            continue
        row: dict[str, Any] = dict(zip([*SETTING, "algorithm"], key, strict=True))
        counts: dict[str, dict[str, int]] = {}
        for engine, group in by_engine.items():
            competent = int(group["reached_competence"].sum())
            counts[engine] = {
                "runs": len(group),
                "competent": competent,
                "reached_competence": competent,
                "collapsed": int(group["collapsed"].sum()),
                "any_drop": int((group["any_drop"] & group["reached_competence"]).sum()),
            }
            row[f"{engine}_runs"] = len(group)
            row[f"{engine}_seeds"] = seed_ranges(group["seed"].tolist())
        for event, (column, base) in EVENTS.items():
            for engine in engines:
                successes, trials = counts[engine][column], counts[engine][base]
                low, high = wilson_interval(successes, trials)
                row[f"{engine}_{event}"] = successes
                row[f"{engine}_{event}_rate"] = successes / trials if trials else math.nan
                row[f"{engine}_{event}_low"], row[f"{engine}_{event}_high"] = low, high
            a, n = counts[first][column], counts[first][base]
            c, m = counts[second][column], counts[second][base]
            row[f"{event}_fisher_p"] = fisher_exact(a, n - a, c, m - c) if n and m else math.nan
        for engine, group in by_engine.items():
            interval = score_intervals(group.assign(algorithm=engine), reps=reps).iloc[0]
            row[f"{engine}_final_iqm"] = interval["final_score_iqm"]
            row[f"{engine}_final_low"] = interval["final_score_low"]
            row[f"{engine}_final_high"] = interval["final_score_high"]
        finals = [by_engine[engine]["final_score"].to_numpy(dtype=float) for engine in engines]
        row["final_mann_whitney_p"] = float(mannwhitneyu(*finals, alternative="two-sided").pvalue)
        lows = [float(row[f"{engine}_final_low"]) for engine in engines]
        highs = [float(row[f"{engine}_final_high"]) for engine in engines]
        p_values = [float(row[f"{event}_fisher_p"]) for event in EVENTS] + [row["final_mann_whitney_p"]]
        row["engines_differ"] = max(lows) > min(highs) or any(p < 0.05 for p in p_values if not math.isnan(p))
        rows.append(row)
    return pd.DataFrame(rows)


def agreement_markdown(table: pd.DataFrame, engines: list[str]) -> str:
    """The table as Markdown: per cell and engine, the counts with Wilson intervals, the IQM, and the tests."""

    def rate(row: pd.Series, engine: str, event: str) -> str:
        base = "runs" if event == "competent" else "competent"
        trials = row[f"{engine}_runs"] if base == "runs" else row[f"{engine}_competent"]
        return (
            f"{row[f'{engine}_{event}']}/{trials} [{row[f'{engine}_{event}_low']:.2f}, "
            f"{row[f'{engine}_{event}_high']:.2f}]"
        )

    header = (
        "| task | lr | algorithm | engine | seeds | competent | lasting collapse | any drop "
        "| final score IQM [95 % CI] |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    tests = []
    for _, row in table.iterrows():
        for engine in engines:
            lines.append(
                f"| {row['task']} | {row['learning_rate']:g} | {row['algorithm']} | {engine} "
                f"| {row[f'{engine}_seeds']} "
                f"| {rate(row, engine, 'competent')} | {rate(row, engine, 'collapsed')} | "
                f"{rate(row, engine, 'any_drop')} | {row[f'{engine}_final_iqm']:.2f} "
                f"[{row[f'{engine}_final_low']:.2f}, {row[f'{engine}_final_high']:.2f}] |"
            )
        tests.append(
            f"| {row['task']} | {row['learning_rate']:g} | {row['algorithm']} | {row['competent_fisher_p']:.3f} | "
            f"{row['collapsed_fisher_p']:.3f} | {row['any_drop_fisher_p']:.3f} | {row['final_mann_whitney_p']:.3f} | "
            f"{'yes' if row['engines_differ'] else 'no'} |"
        )
    test_header = (
        "| task | lr | algorithm | competence (Fisher p) | lasting collapse (Fisher p) | any drop (Fisher p) "
        "| final score (Mann–Whitney p) | engines differ |\n|---|---|---|---|---|---|---|---|\n"
    )
    return header + "\n".join(lines) + "\n\n" + test_header + "\n".join(tests) + "\n"


def write_agreement_report(directories: dict[str, Path], output: Path, reps: int = 2000) -> pd.DataFrame:
    """``agreement.csv`` and ``agreement.md`` in ``output``; returns the table."""
    outcomes = engine_outcomes(directories)
    table = agreement_table(outcomes, reps=reps)
    output.mkdir(parents=True, exist_ok=True)
    table.to_csv(output / "agreement.csv", index=False)
    (output / "agreement.md").write_text(agreement_markdown(table, list(directories)))
    return table
