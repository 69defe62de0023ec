"""The powered study's sensitivity reruns (step 6 of its preregistration in ``docs/benchmarks.md``).

An option that reduced PPO's drops is rerun with its constant one step each way (``NAME@KEY=VALUE`` arms, such
as ``kl@kl_penalty_target=0.005``) on one setting. Each neighbour is compared with PPO of the same setting by
the study's primary endpoint (any drop after competence; Fisher's exact test, Holm over the planned neighbour
arms, ``SENSITIVITY_ARMS``), beside the option at its own constant, from the study's runs of that setting. The
reading per option, fixed before the reruns ran: its reduction **holds** when every neighbour reads *reduces*;
otherwise the neighbours where it does not are named. Descriptive, not a test of the primary claim.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from sb3_ppo_variants.benchmark.algorithms import OPTIONS_SEPARATOR
from sb3_ppo_variants.benchmark.collapse_study import SETTING, score_intervals
from sb3_ppo_variants.benchmark.extension_study import (
    BASELINE,
    PREREGISTERED_ARMS,
    STUDY_SEEDS,
    binary_table,
    effects_table,
    instability_table,
    load_runs,
)

REDUCES = "reduces"
SENSITIVITY_ARMS: tuple[str, ...] = (
    "rescaled@pseudo_entropy_smoothing=0.995",
    "rescaled@pseudo_entropy_smoothing=0.98",
    "per_state@clip_range=0.1",
    "per_state@clip_range=0.3",
    "per_batch@clip_range=0.1",
    "per_batch@clip_range=0.3",
    "kl@kl_penalty_target=0.005",
    "kl@kl_penalty_target=0.02",
    "truly@kl_trust_region=0.015",
    "truly@kl_trust_region=0.06",
    "dual_clip@dual_clip=1.5",
    "dual_clip@dual_clip=6.0",
    "espo@ratio_change_limit=0.1",
    "espo@ratio_change_limit=0.4",
    "pfo@feature_drift_coef=0.5",
    "pfo@feature_drift_coef=2.0",
)
"""The 16 neighbour arms decided on 2026-12-02 before any of them ran (docs/benchmarks.md, "Sensitivity
reruns"): Holm's family, whether or not each has run yet (one not yet run counts at p = 1)."""


def option_of(name: str) -> tuple[str, str]:
    """``("kl", "kl_penalty_target=0.005")`` for ``kl@kl_penalty_target=0.005``; ``("kl", "")`` for ``kl``."""
    base, _, constants = name.partition(OPTIONS_SEPARATOR)
    return base, constants


def _order(name: str) -> tuple[int, str, tuple[int, float | str]]:
    """Arms of one option together, in the study's order: the option at its constant, then each key's values
    ascending."""
    base, constants = option_of(name)
    rank = PREREGISTERED_ARMS.index(base) if base in PREREGISTERED_ARMS else len(PREREGISTERED_ARMS)
    key, _, value = constants.partition("=")
    if not constants:
        return rank, "", (-1, 0.0)
    try:
        return rank, key, (0, float(value))
    except ValueError:
        return rank, key, (1, value)


def sensitivity_table(
    neighbours: pd.DataFrame,
    study: pd.DataFrame,
    baseline: str = BASELINE,
    reps: int = 2000,
    planned_seeds: int = STUDY_SEEDS,
) -> pd.DataFrame:
    """Per neighbour arm (``neighbours``' ``NAME@KEY=VALUE`` algorithms) and per option at its constant
    (``study``'s arm of the neighbour's base name), in the settings the neighbours ran: ``effects_table``'s
    columns against ``study``'s ``baseline`` of the same setting, with Holm over ``SENSITIVITY_ARMS`` and any
    other neighbour arm given (the options at their constants keep the study's own Holm family, so here they get
    Fisher's p without it), ``option`` / ``constants``, and the runs with whether the cell has
    ``planned_seeds`` of them."""
    arms = sorted({name for name in neighbours["algorithm"] if option_of(name)[1]}, key=_order)
    if not arms:
        return pd.DataFrame()
    options = {option_of(arm)[0] for arm in arms}
    settings = set(neighbours.loc[neighbours["algorithm"].isin(arms), SETTING].itertuples(index=False, name=None))
    in_setting = pd.Series(
        [setting in settings for setting in study[SETTING].itertuples(index=False, name=None)], index=study.index
    )
    reference = study[study["algorithm"].isin({baseline, *options}) & in_setting]
    runs = pd.concat([neighbours[neighbours["algorithm"].isin(arms)], reference], ignore_index=True)
    family = [*SENSITIVITY_ARMS, *(arm for arm in arms if arm not in SENSITIVITY_ARMS)]
    primary = binary_table(runs, "any_drop", "", baseline, family, planned_seeds)
    instability = instability_table(runs, "", baseline, family, reps)
    table = effects_table(primary, instability, score_intervals(runs, reps=reps))
    counts = primary.set_index([*SETTING, "algorithm"])[["runs", "complete"]]
    table = table.join(counts, on=[*SETTING, "algorithm"])
    table["option"] = [option_of(name)[0] for name in table["algorithm"]]
    table["constants"] = [option_of(name)[1] or "(the study's)" for name in table["algorithm"]]
    table["neighbour"] = table["algorithm"].isin(arms)
    names = [baseline, *sorted(set(table["algorithm"]) - {baseline}, key=_order)]
    table["order"] = table["algorithm"].map({name: index for index, name in enumerate(names)})
    return table.sort_values(["task", "order"]).drop(columns="order").reset_index(drop=True)


def robustness(table: pd.DataFrame) -> pd.DataFrame:
    """Per setting and option with neighbours: ``holds`` when every neighbour reads *reduces*, else the
    neighbours that do not, with their readings; ``incomplete`` while a neighbour has fewer runs than the study's
    seeds."""
    rows = []
    for (task, option), group in table[table["neighbour"]].groupby(["task", "option"], sort=False):
        others = group[group["reading"] != REDUCES]
        unfinished = group[~group["complete"].astype(bool)]
        if not unfinished.empty:
            verdict = "incomplete: " + "; ".join(
                f"{row.constants} has {row.runs} runs" for row in unfinished.itertuples()
            )
        elif others.empty:
            verdict = "holds"
        else:
            verdict = "not at " + "; ".join(f"{row.constants} ({row.reading})" for row in others.itertuples())
        rows.append(
            {
                "task": task,
                "option": option,
                "neighbours": len(group),
                "reduce": int((group["reading"] == REDUCES).sum()),
                "verdict": verdict,
            }
        )
    return pd.DataFrame(rows)


def format_sensitivity_report(table: pd.DataFrame, verdicts: pd.DataFrame) -> str:
    """The Markdown report: the verdict per option, then the table."""
    family_size = len({*SENSITIVITY_ARMS, *table.loc[table["neighbour"], "algorithm"]})
    lines = [
        "# Powered collapse study: sensitivity reruns",
        "",
        "Each option's constant one step each way against PPO of the same setting: any drop after competence, "
        f"Fisher's exact test, Holm over the {family_size} neighbour arms planned (one not yet run counts at p = 1); "
        "the option at the "
        "study's constant from the study's runs (Fisher's p without Holm). Descriptive.",
        "",
        "Machines (run files): "
        + "; ".join(f"{label} ({count})" for label, count in table.attrs.get("machines", {}).items()),
        "",
        "## Does the reduction hold one step each way?",
        "",
        *(f"- {row.task}, {row.option}: {row.verdict}" for row in verdicts.itertuples()),
        "",
        "## Per arm",
        "",
        table.to_markdown(index=False, floatfmt=".3g"),
    ]
    return "\n".join(lines)


def write_sensitivity_report(
    neighbour_directories: Sequence[Path],
    study_directories: Sequence[Path],
    output: Path,
    bootstrap_reps: int = 2000,
    planned_seeds: int = STUDY_SEEDS,
) -> pd.DataFrame:
    """``sensitivity_table`` and ``robustness`` of the runs under the directories (``load_runs``) into
    ``sensitivity.csv``, ``sensitivity_verdicts.csv`` and ``sensitivity.md`` under ``output``; the verdicts."""
    try:
        neighbours, study = load_runs(neighbour_directories), load_runs(study_directories)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    if neighbours.empty:
        raise SystemExit(f"no run files under {list(map(str, neighbour_directories))}")
    table = sensitivity_table(neighbours, study, reps=bootstrap_reps, planned_seeds=planned_seeds)
    if table.empty:
        raise SystemExit("no neighbour arm (NAME@KEY=VALUE) among the runs")
    used = pd.concat([neighbours, study[study["algorithm"].isin(set(table["algorithm"]))]])
    table.attrs["machines"] = used["machine"].value_counts().to_dict()
    verdicts = robustness(table)
    output.mkdir(parents=True, exist_ok=True)
    table.to_csv(output / "sensitivity.csv", index=False)
    verdicts.to_csv(output / "sensitivity_verdicts.csv", index=False)
    (output / "sensitivity.md").write_text(format_sensitivity_report(table, verdicts))
    return verdicts
