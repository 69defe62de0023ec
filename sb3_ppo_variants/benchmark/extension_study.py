"""The powered collapse study (``docs/benchmarks.md``, preregistration of 2026-12-01): choosing the settings
from PPO's pilot runs, and the analysis of the study's runs.

The events are those of ``collapse_study`` (competence, drops, transient drops, lasting collapse) and are
computed by its ``classify_run``. On top of them:

- the *primary event* of a competent run is *any drop*: at least one drop after competence, transient or
  lasting (``collapsed`` or ``transient_drops > 0``); a run's number of drops is ``transient_drops`` plus one
  if it collapsed;
- the *instability fraction* of a competent run is the fraction of its evaluations after the one where it
  reached competence whose normalised score is below 0.5 (undefined when competence came at the last
  evaluation);
- the *training-return series* takes, at each evaluation step ``t``, the mean return of the training episodes
  that ended in ``(t − eval_every, t]``, normalised like the evaluations, and carries the previous value when
  none ended; the evaluations before the first training episode ended have no value and are left out of the
  series, which is then classified like the evaluations.

Pilot selection (``pilot_table``, ``select_settings``): a candidate (task × learning rate) qualifies when at
least 80 % of its runs reach competence and its any-drop rate among competent runs is in [0.30, 0.70]; the
three qualifying candidates closest to 0.5 are chosen, at most one per (environment, trunk, learning rate),
taking candidates by distance to 0.5, then more competent runs, then task name, then learning rate; if none of
the three has separate actor and critic (``MlpPolicy`` without the shared trunk), the qualifying separate
candidate first in that order replaces the third.

Analysis (``write_extension_report``): per setting and arm, the rates of the binary endpoints with Wilson
intervals and Fisher's exact test against PPO; pooled over the settings, the Cochran–Mantel–Haenszel test
(no continuity correction, as in ``power.py``) with the Mantel–Haenszel common odds ratio and its
Robins–Breslow–Greenland 95 % interval; the instability fraction's IQM with rliable's stratified bootstrap
interval and the two-sided Mann–Whitney U test against PPO; as the effect size per setting, the ratio of
each arm's any-drop rate to PPO's with Koopman's score interval (``effects_table``, descriptive: the tests are
those above). Holm's correction runs over the preregistered
arms (15): an arm without runs counts as p = 1, so the correction is never weaker than planned.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from sb3_ppo_variants.benchmark.collapse_study import (
    SETTING,
    CollapseDefinition,
    RunOutcome,
    classify_run,
    fisher_exact,
    holm_adjusted,
    normalised_score,
    score_intervals,
    wilson_interval,
)

BASELINE = "ppo"
PREREGISTERED_ARMS: tuple[str, ...] = (
    "logit",
    "peaked",
    "rescaled",
    "per_state",
    "per_batch",
    "rollback",
    "spo",
    "kl",
    "truly",
    "dual_clip",
    "clip_higher",
    "tr_ppo",
    "espo",
    "pfo",
    "adam_equal_betas",
)
"""The 15 arms compared with PPO (the registry's names): Holm's family."""
STUDY_SEEDS = 50
"""Seeds 0–49 in every cell; a cell with fewer is reported as incomplete."""
PILOT_RUNS = 20
LARGEST_LEARNING_RATE = 0.05
"""The rate the pilot adds (``--lr-scales 50``) for the kinds of setting that did not qualify."""
INSTABILITY_LEVEL = 0.5
ALPHA = 0.05


@dataclass(frozen=True)
class SelectionRule:
    """The preregistered rule that chooses the study's settings from PPO's pilot."""

    min_competent_fraction: float = 0.8
    low: float = 0.3
    high: float = 0.7
    target: float = 0.5
    count: int = 3


# ----------------------------------------------------------------------------------------- per-run events


def drop_count(outcome: RunOutcome) -> int:
    """Drops after competence, transient or lasting."""
    return outcome.transient_drops + int(outcome.collapsed)


def instability_fraction(
    steps: Sequence[int], scores: Sequence[float] | np.ndarray, outcome: RunOutcome, level: float = INSTABILITY_LEVEL
) -> float:
    """Fraction of the evaluations after the one where the run reached competence whose score is below
    ``level``; NaN for a run that never reached competence or reached it at its last evaluation."""
    if outcome.competence_step is None:
        return math.nan
    after = np.asarray(scores, dtype=float)[np.asarray(steps) > outcome.competence_step]
    return float((after < level).mean()) if after.size else math.nan


def training_return_series(
    eval_steps: Sequence[int], episode_steps: Sequence[int], episode_returns: Sequence[float], window: int
) -> np.ndarray:
    """At each evaluation step ``t``, the mean return of the training episodes that ended in ``(t − window, t]``;
    the previous value when none ended there; NaN before the first episode ended."""
    ends = np.asarray(episode_steps, dtype=float)
    returns = np.asarray(episode_returns, dtype=float)
    order = np.argsort(ends, kind="stable")
    ends, returns = ends[order], returns[order]
    series = np.full(len(eval_steps), np.nan)
    previous = math.nan
    for index, step in enumerate(eval_steps):
        first = np.searchsorted(ends, step - window, side="right")
        last = np.searchsorted(ends, step, side="right")
        if last > first:
            previous = float(returns[first:last].mean())
        series[index] = previous
    return series


def classify_series(
    steps: Sequence[int], scores: Sequence[float] | np.ndarray, definition: CollapseDefinition
) -> tuple[RunOutcome | None, float]:
    """``classify_run`` and the instability fraction of a series whose leading values may be undefined (NaN):
    those are left out. ``(None, nan)`` when no value is defined."""
    scores = np.asarray(scores, dtype=float)
    defined = np.flatnonzero(~np.isnan(scores))
    if defined.size == 0:
        return None, math.nan
    steps = list(steps)[int(defined[0]) :]
    scores = scores[int(defined[0]) :]
    outcome = classify_run(steps, scores, definition)
    return outcome, instability_fraction(steps, scores, outcome)


def _events(outcome: RunOutcome | None, instability: float, prefix: str) -> dict[str, Any]:
    if outcome is None:
        return {
            f"{prefix}reached_competence": False,
            f"{prefix}collapsed": False,
            f"{prefix}transient_drops": 0,
            f"{prefix}drops": 0,
            f"{prefix}any_drop": False,
            f"{prefix}final_score": math.nan,
            f"{prefix}instability": math.nan,
        }
    return {
        f"{prefix}reached_competence": outcome.reached_competence,
        f"{prefix}collapsed": outcome.collapsed,
        f"{prefix}transient_drops": outcome.transient_drops,
        f"{prefix}drops": drop_count(outcome),
        f"{prefix}any_drop": drop_count(outcome) > 0,
        f"{prefix}final_score": outcome.final_score,
        f"{prefix}instability": instability,
    }


def machine_label(machine: dict[str, Any] | None) -> str:
    """A run file's ``machine`` in one line (processor, family/model/stepping, torch's CPU kernels);
    ``unrecorded`` for files written before run files recorded it."""
    if not machine:
        return "unrecorded"
    return f"{machine['cpu']} {machine['cpu_family_model_stepping']}, torch {machine['torch_cpu_capability']}"


def run_row(run: dict[str, Any], definition: CollapseDefinition) -> dict[str, Any]:
    """One run file's identity, its events on the evaluations and on the training returns (``train_`` columns,
    undefined without ``train_episode_steps``), and its curves."""
    from sb3_ppo_variants.benchmark.tasks import TASKS

    task = TASKS[run["task"]]
    evaluations = run["evaluations"]
    steps = [int(e["step"]) for e in evaluations]
    scores = normalised_score([e["eval_return"] for e in evaluations], task.random_score, task.max_score)
    outcome = classify_run(steps, scores, definition)
    has_training = "train_episode_steps" in run and "train_episode_returns" in run
    if has_training:
        returns = training_return_series(
            steps, run["train_episode_steps"], run["train_episode_returns"], task.eval_every
        )
        train_scores = normalised_score(returns, task.random_score, task.max_score)
        train_outcome, train_instability = classify_series(steps, train_scores, definition)
    else:
        train_scores, train_outcome, train_instability = np.full(len(steps), np.nan), None, math.nan
    return {
        "task": run["task"],
        "algorithm": run["algorithm"],
        "learning_rate": run["learning_rate"],
        "learning_rate_scale": run.get("learning_rate_scale", math.nan),
        "seed": run["seed"],
        "engine": run.get("engine", "sb3"),
        "machine": machine_label(run.get("machine")),
        "timesteps": run["timesteps"],
        **outcome.as_dict(),
        **_events(outcome, instability_fraction(steps, scores, outcome), ""),
        "has_training_returns": has_training,
        **_events(train_outcome, train_instability, "train_"),
        "steps": steps,
        "scores": scores.tolist(),
        "train_scores": train_scores.tolist(),
    }


CURVES = ["steps", "scores", "train_scores"]


RUN_KEY = ["task", "algorithm", "learning_rate", "seed"]


def run_files(directory: Path) -> list[Path]:
    """The run files of a grid's directory (``<task>/<algorithm>_lr<scale>_seed<seed>.json``), or of one of its
    task folders."""
    return sorted(directory.glob("*/*.json")) or sorted(directory.glob("*.json"))


def load_runs(directories: Path | Sequence[Path], definition: CollapseDefinition | None = None) -> pd.DataFrame:
    """``run_row`` of every run file under ``directories`` (each a grid's directory or one of its task folders:
    ``benchmark_runs/extension/pilot_CartPole-v1-shared`` and ``benchmark_runs/extension_rerun`` analyse one
    setting of the first with the other's). A run found twice is an error, not a choice."""
    definition = definition or CollapseDefinition()
    directories = [directories] if isinstance(directories, Path) else list(directories)
    rows: list[dict[str, Any]] = []
    found: dict[tuple[Any, ...], Path] = {}
    for directory in directories:
        for path in run_files(directory):
            row = run_row(json.loads(path.read_text()), definition)
            key = tuple(row[column] for column in RUN_KEY)
            if key in found:
                task, algorithm, learning_rate, seed = key
                raise ValueError(
                    f"{task} {algorithm} lr {learning_rate:g} seed {seed} is in both {found[key]} and {path}: "
                    "give each run once"
                )
            found[key] = path
            rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------ pilot selection


def task_kind(task_name: str) -> dict[str, str]:
    """The environment, trunk (``separate``: ``MlpPolicy``; ``shared``: the 64-64 ``MlpTrunk`` or
    ``MinAtarCNN``, one features extractor for both heads) and rollout shape of a task."""
    from sb3_ppo_variants.benchmark.tasks import TASKS
    from sb3_ppo_variants.policies import MinAtarCNN, MlpTrunk

    task = TASKS[task_name]
    hyperparameters = task.hyperparameters
    extractor = (hyperparameters.get("policy_kwargs") or {}).get("features_extractor_class")
    return {
        "environment": task.env_id,
        "trunk": "shared" if extractor in (MlpTrunk, MinAtarCNN) else "separate",
        "rollout": (
            f"{task.n_envs}×{hyperparameters['n_steps']}, minibatch {hyperparameters.get('batch_size', 64)}, "
            f"{hyperparameters.get('n_epochs', 10)} epochs"
        ),
    }


def pilot_table(runs: pd.DataFrame, baseline: str = BASELINE, rule: SelectionRule | None = None) -> pd.DataFrame:
    """Per candidate setting (task × learning rate) of ``baseline``'s runs: competence, the any-drop rate among
    competent runs with its Wilson interval, the lasting-collapse rate, and whether the candidate qualifies."""
    rule = rule or SelectionRule()
    rows = []
    for (task, learning_rate), group in runs[runs["algorithm"] == baseline].groupby(SETTING, sort=True):
        competent = group[group["reached_competence"]]
        n, k = len(competent), int(competent["any_drop"].sum())
        collapsed = int(competent["collapsed"].sum())
        rate = k / n if n else math.nan
        low, high = wilson_interval(k, n)
        rows.append(
            {
                "task": task,
                **task_kind(task),
                "learning_rate": learning_rate,
                "runs": len(group),
                "competent": n,
                "competent_fraction": n / len(group),
                "any_drop": k,
                "rate": rate,
                "rate_low": low,
                "rate_high": high,
                "collapsed": collapsed,
                "collapse_rate": collapsed / n if n else math.nan,
                "mean_drops": float(competent["drops"].mean()) if n else math.nan,
                "qualifies": bool(
                    n > 0
                    and n / len(group) >= rule.min_competent_fraction - 1e-12
                    and rule.low - 1e-12 <= rate <= rule.high + 1e-12
                ),
                "distance": round(abs(rate - rule.target), 12) if n else math.nan,  # k/n ties stay ties
            }
        )
    return pd.DataFrame(rows)


def _selection_order(table: pd.DataFrame) -> pd.DataFrame:
    """Candidates by distance to the target rate, then more competent runs, then task, then learning rate."""
    return table.assign(_fewer=-table["competent"]).sort_values(
        ["distance", "_fewer", "task", "learning_rate"], kind="stable"
    )


@dataclass(frozen=True)
class PilotSelection:
    """The candidates, the chosen settings (in order of choice) and what the rule says is missing."""

    table: pd.DataFrame
    chosen: pd.DataFrame
    replaced: str | None
    missing: list[str]

    @property
    def enough(self) -> bool:
        return not self.missing


def _slot(candidate: pd.Series) -> tuple[Any, ...]:
    """The rule's slot of a candidate: at most one chosen setting per (environment, trunk, learning rate)."""
    return (candidate["environment"], candidate["trunk"], candidate["learning_rate"])


def select_settings(
    table: pd.DataFrame, rule: SelectionRule | None = None, keep: Sequence[tuple[str, float]] = ()
) -> PilotSelection:
    """Apply the preregistered rule to ``pilot_table``'s candidates.

    ``keep`` lists (task, learning rate) settings chosen earlier, on which the study already runs: they stay
    chosen, first and in that order, whatever later candidates show, and the rule fills the remaining slots
    (the second amendment of 2026-12-01). A kept setting must be a qualifying candidate of ``table``."""
    rule = rule or SelectionRule()
    qualifying = _selection_order(table[table["qualifies"]])
    chosen: list[int] = []
    slots: set[tuple[Any, ...]] = set()
    for task, learning_rate in keep:
        match = qualifying[(qualifying["task"] == task) & np.isclose(qualifying["learning_rate"], learning_rate)]
        if match.empty:
            allowed = ", ".join(f"{row.task}:{row.learning_rate:g}" for row in qualifying.itertuples()) or "none"
            raise ValueError(
                f"keep: {task} at lr {learning_rate:g} is not a qualifying candidate; qualifying: {allowed}"
            )
        index = match.index[0]
        slot = _slot(qualifying.loc[index])
        if slot in slots:
            raise ValueError(f"keep: {task} at lr {learning_rate:g} takes a slot already kept")
        chosen.append(index)
        slots.add(slot)
    kept = len(chosen)
    for index, row in qualifying.iterrows():
        if len(chosen) >= rule.count:
            break
        slot = _slot(row)
        if slot in slots:
            continue
        chosen.append(index)
        slots.add(slot)
    replaced = None
    separate = qualifying[qualifying["trunk"] == "separate"]
    if len(chosen) > kept and not (table.loc[chosen, "trunk"] == "separate").any() and not separate.empty:
        third = chosen.pop()
        replaced = f"{table.loc[third, 'task']} at lr {table.loc[third, 'learning_rate']:g}"
        chosen.append(separate.index[0])
    missing = []
    if len(chosen) < rule.count:
        missing.append(f"only {len(chosen)} of the {rule.count} settings qualify")
    if separate.empty:
        missing.append("no candidate with separate actor and critic (MlpPolicy) qualifies")
    return PilotSelection(table, table.loc[chosen].drop(columns=["_fewer"], errors="ignore"), replaced, missing)


def missing_kinds(selection: PilotSelection) -> list[tuple[str, str]]:
    """The (environment, trunk) pairs without a qualifying candidate, which the rule extends to lr 5e-2 when
    settings are missing: every pair when fewer than three qualify, the separate ones when only those lack."""
    if not selection.missing:
        return []
    table = selection.table
    qualifying = {(row.environment, row.trunk) for row in table[table["qualifies"]].itertuples()}
    kinds = sorted({(row.environment, row.trunk) for row in table.itertuples()} - qualifying)
    if len(selection.chosen) >= SelectionRule().count:  # only MlpPolicy is missing
        kinds = [kind for kind in kinds if kind[1] == "separate"]
    return kinds


def format_pilot_report(selection: PilotSelection, runs_directory: Path | None = None) -> str:
    """The candidates' table, the chosen settings and, when the rule asks for it, the lr 5e-2 extension."""
    table = selection.table
    lines = [
        "| task | trunk | rollout | lr | runs | competent | any drop (Wilson 95 %) | lasting collapse | "
        "mean drops | qualifies |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table.itertuples():
        rate = "—" if math.isnan(row.rate) else f"{row.any_drop}/{row.competent} = {row.rate:.2f} "
        interval = "" if math.isnan(row.rate) else f"[{row.rate_low:.2f}, {row.rate_high:.2f}]"
        collapse = "—" if math.isnan(row.collapse_rate) else f"{row.collapsed} ({row.collapse_rate:.2f})"
        drops = "—" if math.isnan(row.mean_drops) else f"{row.mean_drops:.2f}"
        complete = "" if row.runs >= PILOT_RUNS else f" (incomplete: {PILOT_RUNS} planned)"
        lines.append(
            f"| {row.task} | {row.trunk} | {row.rollout} | {row.learning_rate:g} | {row.runs}{complete} | "
            f"{row.competent} ({row.competent_fraction:.0%}) | {rate}{interval} | {collapse} | {drops} | "
            f"{'yes' if row.qualifies else 'no'} |"
        )
    from sb3_ppo_variants.benchmark.tasks import TASKS

    lines += ["", "Chosen settings, in the order the rule takes them:"]
    if selection.chosen.empty:
        lines.append("- none")
    for row in selection.chosen.itertuples():
        scale = row.learning_rate / TASKS[row.task].hyperparameters["learning_rate"]
        lines.append(
            f"- {row.task} at lr {row.learning_rate:g} (`--tasks {row.task} --lr-scales {scale:g}`): "
            f"any-drop rate {row.rate:.2f} ({row.trunk} trunk)"
        )
    if selection.replaced:
        lines.append(f"- {selection.replaced} was replaced by the closest qualifying MlpPolicy candidate")
    for reason in selection.missing:
        lines.append(f"- Not enough: {reason}.")
    kinds = missing_kinds(selection)
    kind = table[["environment", "trunk"]].apply(tuple, axis=1)
    largest = np.isclose(table["learning_rate"], LARGEST_LEARNING_RATE)
    done = sorted(set(kind[largest]) & set(kinds))
    to_run = [pair for pair in kinds if pair not in done]
    if done:
        lines.append(
            "- lr 5e-2 has run for "
            + ", ".join(f"{environment} ({trunk})" for environment, trunk in done)
            + ": the study runs on the settings that qualify, and says so."
        )
    if selection.missing and not kinds:
        lines.append("- Every (environment, trunk) run so far has a qualifying setting: run the pilot's other tasks.")
    if to_run:
        tasks = sorted(set(table.loc[kind.isin(to_run), "task"]))
        lines.append(
            "- The rule adds lr 5e-2 for "
            + ", ".join(f"{environment} ({trunk})" for environment, trunk in to_run)
            + ": `python -m sb3_ppo_variants.benchmark collapse --engine batched --runs "
            + f"{runs_directory or '<runs>'} --tasks {' '.join(tasks)} --algorithms ppo --lr-scales 50 "
            + "--seeds $(seq 1000 1019) --threads 1`, then this command again."
        )
    return "\n".join(lines) + "\n"


def write_pilot_report(
    directory: Path, output: Path, name: str = "pilot", keep: Sequence[tuple[str, float]] = ()
) -> PilotSelection:
    """``pilot_table`` and ``select_settings`` of the PPO runs under ``directory``, as CSV and Markdown."""
    runs = load_runs(directory)
    if runs.empty:
        raise SystemExit(f"no run files under {directory}")
    selection = select_settings(pilot_table(runs), keep=keep)
    output.mkdir(parents=True, exist_ok=True)
    selection.table.to_csv(output / f"{name}.csv", index=False)
    selection.chosen.to_csv(output / f"{name}_chosen.csv", index=False)
    (output / f"{name}.md").write_text(format_pilot_report(selection, directory))
    return selection


# ------------------------------------------------------------------------------------------------ statistics


@dataclass(frozen=True)
class MantelHaenszel:
    """The pooled comparison of an arm with the baseline over strata (settings)."""

    strata: int
    statistic: float
    p_value: float
    odds_ratio: float
    low: float
    high: float


def mantel_haenszel(
    arm_events: Sequence[int], arm_runs: Sequence[int], base_events: Sequence[int], base_runs: Sequence[int]
) -> MantelHaenszel:
    """Cochran–Mantel–Haenszel test (two-sided, no continuity correction: ``power.cmh_statistic``) and the
    Mantel–Haenszel common odds ratio of the arm against the baseline, with its 95 % interval from the
    Robins–Breslow–Greenland variance of its logarithm. Strata where a group has no runs are left out."""
    from scipy.stats import chi2

    from sb3_ppo_variants.benchmark.power import cmh_statistic

    a, n1, c, n0 = (np.asarray(values, dtype=float) for values in (arm_events, arm_runs, base_events, base_runs))
    keep = (n1 > 0) & (n0 > 0)
    a, n1, c, n0 = a[keep], n1[keep], c[keep], n0[keep]
    if not keep.any():
        return MantelHaenszel(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    statistic = float(cmh_statistic(np.stack([c, a], axis=-1), np.stack([n0, n1], axis=-1)))
    informative = ((a + c) > 0) & ((a + c) < (n0 + n1))
    p_value = float(chi2.sf(statistic, df=1)) if informative.any() else math.nan
    b, d, n = n1 - a, n0 - c, n0 + n1
    r, s = a * d / n, b * c / n
    p, q = (a + d) / n, (b + c) / n
    big_r, big_s = r.sum(), s.sum()
    if big_r > 0 and big_s > 0:
        odds_ratio = float(big_r / big_s)
        variance = (
            (p * r).sum() / (2 * big_r**2)
            + (p * s + q * r).sum() / (2 * big_r * big_s)
            + (q * s).sum() / (2 * big_s**2)
        )
        z = NormalDist().inv_cdf(0.975)
        half = z * math.sqrt(variance)
        low, high = odds_ratio * math.exp(-half), odds_ratio * math.exp(half)
    else:
        odds_ratio = 0.0 if big_s > 0 else (math.inf if big_r > 0 else math.nan)
        low, high = math.nan, math.nan
    return MantelHaenszel(int(keep.sum()), statistic, p_value, odds_ratio, low, high)


def holm_over_family(p_values: Sequence[float], family_size: int) -> list[float]:
    """Holm-adjusted p-values over a family of ``family_size`` comparisons of which ``p_values`` ran; those that
    did not run count as p = 1 (NaN, an untestable comparison, too)."""
    filled = [1.0 if math.isnan(p) else p for p in p_values]
    padded = filled + [1.0] * max(0, family_size - len(filled))
    adjusted = holm_adjusted(padded)[: len(filled)]
    return [math.nan if math.isnan(p) else value for p, value in zip(p_values, adjusted, strict=True)]


def reading(p_holm: float, arm_effect: float, baseline_effect: float, alpha: float = ALPHA) -> str:
    """The preregistered wording: ``reduces`` / ``increases`` when the Holm-adjusted p is below ``alpha``, in the
    direction of the arm's rate (or odds ratio) against the baseline's; otherwise no detectable difference."""
    if not math.isnan(p_holm) and p_holm < alpha and arm_effect != baseline_effect:
        return "reduces" if arm_effect < baseline_effect else "increases"
    return "no detectable difference at this sample size"


def rate_ratio_interval(
    arm_events: int, arm_runs: int, base_events: int, base_runs: int, level: float = 0.95
) -> tuple[float, float, float]:
    """The ratio of two binomial rates, ``(arm_events / arm_runs) / (base_events / base_runs)``, with Koopman's
    (1984) score interval: the ratios θ whose score statistic
    ``(p̂₁ − θ p̂₀) / sqrt(p̃₁(1 − p̃₁)/n₁ + θ² p̃₀(1 − p̃₀)/n₀)`` lies within the normal quantile, ``p̃₁ = θ p̃₀``
    being the rates' maximum likelihood under that ratio. Unlike the log (Katz) interval it is defined when a
    group has no events: the lower bound is 0 when the arm has none, the upper bound infinite when the baseline
    has none; NaNs when neither has any, or a group has no runs."""
    from scipy.optimize import brentq

    k1, n1, k0, n0 = (int(value) for value in (arm_events, arm_runs, base_events, base_runs))
    if n1 <= 0 or n0 <= 0 or k1 + k0 == 0:
        return (math.nan, math.nan, math.nan)
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p1, p0 = k1 / n1, k0 / n0

    def score(log_ratio: float) -> float:
        ratio = math.exp(log_ratio)
        # the restricted maximum likelihood of the baseline's rate: the smaller root of
        # θ(n₁ + n₀) p² − (θ(n₁ + k₀) + k₁ + n₀) p + (k₁ + k₀) = 0, in its cancellation-free form
        b = ratio * (n1 + k0) + k1 + n0
        c = k1 + k0
        p0_tilde = 2 * c / (b + math.sqrt(max(b * b - 4 * ratio * (n1 + n0) * c, 0.0)))
        p1_tilde = min(ratio * p0_tilde, 1.0)
        variance = p1_tilde * (1 - p1_tilde) / n1 + ratio**2 * p0_tilde * (1 - p0_tilde) / n0
        difference = p1 - ratio * p0
        if variance <= 0:
            return 0.0 if difference == 0 else math.copysign(math.inf, difference)
        return difference / math.sqrt(variance)

    # the statistic falls as the ratio grows, through 0 near the estimate; each bound is bracketed by stepping
    # out from the estimate (with half an event for a group that has none) and found by Brent's method
    centre = math.log(((k1 or 0.5) / n1) / ((k0 or 0.5) / n0))

    def bound(level_score: float) -> float:
        def f(log_ratio: float) -> float:
            return score(log_ratio) - level_score

        below, above = centre - 1.0, centre + 1.0
        while f(below) <= 0:
            below -= 2 * (centre - below)
        while f(above) >= 0:
            above += 2 * (above - centre)
        return math.exp(brentq(f, below, above, xtol=1e-12))

    ratio = p1 / p0 if k0 else math.inf
    low = bound(z) if k1 else 0.0
    high = bound(-z) if k0 else math.inf
    return (ratio, low, high)


def seed_ranges(seeds: Sequence[int]) -> str:
    """``0–11, 14`` for the seeds 0 to 11 and 14."""
    values = sorted(set(int(seed) for seed in seeds))
    parts, start = [], None
    for index, value in enumerate(values):
        if start is None:
            start = value
        if index + 1 == len(values) or values[index + 1] != value + 1:
            parts.append(str(start) if start == value else f"{start}–{value}")
            start = None
    return ", ".join(parts)


def _arms_in(runs: pd.DataFrame, baseline: str, arms: Sequence[str]) -> list[str]:
    present = set(runs["algorithm"])
    return [baseline, *[arm for arm in arms if arm in present], *sorted(present - {baseline, *arms})]


def binary_table(
    runs: pd.DataFrame,
    event: str,
    prefix: str = "",
    baseline: str = BASELINE,
    arms: Sequence[str] = PREREGISTERED_ARMS,
    planned_seeds: int = STUDY_SEEDS,
) -> pd.DataFrame:
    """Per setting and algorithm: runs, seeds, competent runs, the ``prefix + event`` count among them, its rate
    with the Wilson interval, Fisher's exact test against ``baseline`` with Holm over ``arms``, and the reading.
    Algorithms outside ``arms`` get Fisher's p but no Holm-adjusted p."""
    competent_column, event_column = f"{prefix}reached_competence", f"{prefix}{event}"
    rows = []
    for (task, learning_rate), setting in runs.groupby(SETTING, sort=True):
        names = [name for name in _arms_in(runs, baseline, arms) if name in set(setting["algorithm"])]
        counts = {}
        for name in names:
            group = setting[setting["algorithm"] == name]
            competent = group[group[competent_column].astype(bool)]
            counts[name] = (len(competent), int(competent[event_column].astype(bool).sum()))
        reference = counts.get(baseline)
        rows_here = []
        for name in names:
            group = setting[setting["algorithm"] == name]
            n, k = counts[name]
            low, high = wilson_interval(k, n)
            p = (
                fisher_exact(k, n - k, reference[1], reference[0] - reference[1])
                if name != baseline and reference is not None and n > 0 and reference[0] > 0
                else math.nan
            )
            rows_here.append(
                {
                    "task": task,
                    "learning_rate": learning_rate,
                    "algorithm": name,
                    "runs": len(group),
                    "seeds": seed_ranges(group["seed"]),
                    "complete": len(group) >= planned_seeds,
                    "competent": n,
                    "competent_fraction": n / len(group),
                    "events": k,
                    "rate": k / n if n else math.nan,
                    "rate_low": low,
                    "rate_high": high,
                    "p_fisher": p,
                }
            )
        family = [row for row in rows_here if row["algorithm"] in arms]
        for row, adjusted in zip(family, holm_over_family([r["p_fisher"] for r in family], len(arms)), strict=True):
            row["p_holm"] = adjusted
        base_rate = next((row["rate"] for row in rows_here if row["algorithm"] == baseline), math.nan)
        for row in rows_here:
            row.setdefault("p_holm", math.nan)
            row["reading"] = (
                ""
                if row["algorithm"] == baseline or row["algorithm"] not in arms
                else reading(row["p_holm"], row["rate"], base_rate)
            )
        rows += rows_here
    return pd.DataFrame(rows)


def pooled_table(
    per_setting: pd.DataFrame, baseline: str = BASELINE, arms: Sequence[str] = PREREGISTERED_ARMS
) -> pd.DataFrame:
    """Per arm, from ``binary_table``'s rows: the CMH test against ``baseline`` stratified by setting, Holm over
    ``arms``, the Mantel–Haenszel common odds ratio with its interval, and the reading."""
    if per_setting.empty:
        return pd.DataFrame()
    rows = []
    base = per_setting[per_setting["algorithm"] == baseline].set_index(SETTING)
    for arm in [name for name in arms if name in set(per_setting["algorithm"])]:
        cells = per_setting[per_setting["algorithm"] == arm].set_index(SETTING)
        shared = cells.index.intersection(base.index)
        cells, reference = cells.loc[shared], base.loc[shared]
        result = mantel_haenszel(cells["events"], cells["competent"], reference["events"], reference["competent"])
        rows.append(
            {
                "algorithm": arm,
                "settings": result.strata,
                "events": int(cells["events"].sum()),
                "competent": int(cells["competent"].sum()),
                "baseline_events": int(reference["events"].sum()),
                "baseline_competent": int(reference["competent"].sum()),
                "incomplete_cells": int((~cells["complete"]).sum()) + (len(base) - len(shared)),
                "cmh_statistic": result.statistic,
                "p_cmh": result.p_value,
                "odds_ratio": result.odds_ratio,
                "odds_ratio_low": result.low,
                "odds_ratio_high": result.high,
            }
        )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["p_holm"] = holm_over_family(table["p_cmh"].tolist(), len(arms))
    table["reading"] = [reading(p, odds, 1.0) for p, odds in zip(table["p_holm"], table["odds_ratio"], strict=True)]
    return table


def iqm_interval(values: np.ndarray, reps: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """IQM with rliable's stratified-bootstrap 95 % interval (as ``score_intervals``); NaNs without values."""
    from rliable import library as rly
    from rliable import metrics

    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return (math.nan, math.nan, math.nan)
    np.random.seed(seed)  # noqa: NPY002 (rliable's bootstrap draws from NumPy's global generator)
    point, interval = rly.get_interval_estimates(
        {"run": values[:, None]}, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=reps
    )
    return float(point["run"][0]), float(interval["run"][0, 0]), float(interval["run"][1, 0])


def instability_table(
    runs: pd.DataFrame,
    prefix: str = "",
    baseline: str = BASELINE,
    arms: Sequence[str] = PREREGISTERED_ARMS,
    reps: int = 2000,
) -> pd.DataFrame:
    """Per setting and algorithm, over the competent runs with a defined instability fraction: its IQM with the
    bootstrap interval, and the two-sided Mann–Whitney U test against ``baseline`` (SciPy's, ``method="auto"``)
    with Holm over ``arms``."""
    from scipy.stats import mannwhitneyu

    column = f"{prefix}instability"
    rows = []
    for (task, learning_rate), setting in runs.groupby(SETTING, sort=True):
        names = [name for name in _arms_in(runs, baseline, arms) if name in set(setting["algorithm"])]
        values = {
            name: setting.loc[setting["algorithm"] == name, column].dropna().to_numpy(dtype=float) for name in names
        }
        rows_here = []
        for name in names:
            iqm, low, high = iqm_interval(values[name], reps)
            reference = values.get(baseline)
            if name != baseline and reference is not None and reference.size and values[name].size:
                test = mannwhitneyu(values[name], reference, alternative="two-sided")
                statistic, p = float(test.statistic), float(test.pvalue)
            else:
                statistic, p = math.nan, math.nan
            rows_here.append(
                {
                    "task": task,
                    "learning_rate": learning_rate,
                    "algorithm": name,
                    "runs": len(values[name]),
                    "iqm": iqm,
                    "iqm_low": low,
                    "iqm_high": high,
                    "median": float(np.median(values[name])) if values[name].size else math.nan,
                    "u_statistic": statistic,
                    "p_mann_whitney": p,
                }
            )
        family = [row for row in rows_here if row["algorithm"] in arms]
        p_values = [row["p_mann_whitney"] for row in family]
        for row, adjusted in zip(family, holm_over_family(p_values, len(arms)), strict=True):
            row["p_holm"] = adjusted
        for row in rows_here:
            row.setdefault("p_holm", math.nan)
        rows += rows_here
    return pd.DataFrame(rows)


def effects_table(
    primary: pd.DataFrame, instability: pd.DataFrame, scores: pd.DataFrame, baseline: str = BASELINE
) -> pd.DataFrame:
    """The answer in one table, per setting and algorithm: the any-drop rate, its ratio to the baseline's with
    Koopman's score interval (``rate_ratio_interval``), Fisher's Holm-adjusted p and the reading (from
    ``binary_table``), the instability fraction's IQM (``instability_table``) and the final score's IQM
    (``score_intervals``), each with its 95 % interval."""
    if primary.empty:
        return pd.DataFrame()
    key = [*SETTING, "algorithm"]
    stability = instability.set_index(key) if not instability.empty else pd.DataFrame()
    final = scores.set_index(key) if not scores.empty else pd.DataFrame()
    base = primary[primary["algorithm"] == baseline].set_index(SETTING)
    rows = []
    for row in primary.itertuples():
        setting = (row.task, row.learning_rate)
        reference = base.loc[setting] if setting in base.index else None
        if row.algorithm != baseline and reference is not None:
            ratio = rate_ratio_interval(row.events, row.competent, reference["events"], reference["competent"])
        else:
            ratio = (math.nan, math.nan, math.nan)
        here = (*setting, row.algorithm)
        iqm = (
            stability.loc[here, ["iqm", "iqm_low", "iqm_high"]].to_numpy(dtype=float)
            if here in stability.index
            else [math.nan] * 3
        )
        score = (
            final.loc[here, ["final_score_iqm", "final_score_low", "final_score_high"]].to_numpy(dtype=float)
            if here in final.index
            else [math.nan] * 3
        )
        rows.append(
            {
                "task": row.task,
                "learning_rate": row.learning_rate,
                "algorithm": row.algorithm,
                "competent": row.competent,
                "any_drop": row.events,
                "rate": row.rate,
                "rate_ratio": ratio[0],
                "rate_ratio_low": ratio[1],
                "rate_ratio_high": ratio[2],
                "p_holm": row.p_holm,
                "reading": row.reading,
                "instability_iqm": float(iqm[0]),
                "instability_low": float(iqm[1]),
                "instability_high": float(iqm[2]),
                "final_score_iqm": float(score[0]),
                "final_score_low": float(score[1]),
                "final_score_high": float(score[2]),
            }
        )
    return pd.DataFrame(rows)


def drops_table(runs: pd.DataFrame, prefix: str = "") -> pd.DataFrame:
    """Per setting and algorithm, over competent runs: the mean number of drops and how many runs had 0, 1, 2, …"""
    rows = []
    competent = runs[runs[f"{prefix}reached_competence"].astype(bool)]
    for (task, learning_rate, algorithm), group in competent.groupby([*SETTING, "algorithm"], sort=True):
        counts = group[f"{prefix}drops"].astype(int).value_counts().sort_index()
        rows.append(
            {
                "task": task,
                "learning_rate": learning_rate,
                "algorithm": algorithm,
                "competent": len(group),
                "mean_drops": float(group[f"{prefix}drops"].mean()),
                "distribution": ", ".join(f"{drops}: {count}" for drops, count in counts.items()),
            }
        )
    return pd.DataFrame(rows)


def engine_cross_check(runs: pd.DataFrame, sb3_runs: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
    """Per setting, the baseline's any-drop and lasting-collapse counts from the study's engine against the SB3
    runner's, with Fisher's exact test (a difference is reported, not corrected)."""
    rows = []
    study, reference = runs[runs["algorithm"] == baseline], sb3_runs[sb3_runs["algorithm"] == baseline]
    for (task, learning_rate), group in study.groupby(SETTING, sort=True):
        other = reference[(reference["task"] == task) & (reference["learning_rate"] == learning_rate)]
        if other.empty:
            continue
        row: dict[str, Any] = {"task": task, "learning_rate": learning_rate}
        for label, frame in (("engine", group), ("sb3", other)):
            competent = frame[frame["reached_competence"]]
            row[f"{label}_runs"] = len(frame)
            row[f"{label}_competent"] = len(competent)
            row[f"{label}_any_drop"] = int(competent["any_drop"].sum())
            row[f"{label}_collapsed"] = int(competent["collapsed"].sum())
        for event in ("any_drop", "collapsed"):
            k0, n0, k1, n1 = (
                row["engine_" + event],
                row["engine_competent"],
                row["sb3_" + event],
                row["sb3_competent"],
            )
            row[f"p_{event}"] = fisher_exact(k0, n0 - k0, k1, n1 - k1) if n0 and n1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def rate_differences(per_setting: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
    """Per setting and arm, the arm's rate minus the baseline's with Newcombe's hybrid score interval (from the
    two Wilson intervals)."""
    if per_setting.empty:
        return pd.DataFrame()
    rows = []
    for key, setting in per_setting.groupby(SETTING, sort=True):
        base = setting[setting["algorithm"] == baseline]
        if base.empty or base["competent"].iloc[0] == 0:
            continue
        p0, l0, u0 = (float(base[column].iloc[0]) for column in ("rate", "rate_low", "rate_high"))
        for row in setting[(setting["algorithm"] != baseline) & (setting["competent"] > 0)].itertuples():
            difference = row.rate - p0
            rows.append(
                {
                    **dict(zip(SETTING, key, strict=True)),
                    "algorithm": row.algorithm,
                    "difference": difference,
                    "low": difference - math.sqrt((row.rate - row.rate_low) ** 2 + (u0 - p0) ** 2),
                    "high": difference + math.sqrt((row.rate_high - row.rate) ** 2 + (p0 - l0) ** 2),
                }
            )
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------- reports


def sentences(pooled: pd.DataFrame, per_setting: pd.DataFrame, planned_seeds: int = STUDY_SEEDS) -> list[str]:
    """One sentence per arm in the preregistered wording, on the pooled primary test."""
    from sb3_ppo_variants.benchmark.plots import label

    lines = []
    for row in pooled.itertuples():
        interval = (
            f"[{row.odds_ratio_low:.2f}, {row.odds_ratio_high:.2f}]"
            if not math.isnan(row.odds_ratio_low)
            else "(interval undefined: no events in one group)"
        )
        verb = row.reading
        subject = "drops" if verb != "no detectable difference at this sample size" else ""
        claim = f"{verb} {subject}".strip()
        cells = per_setting[per_setting["algorithm"] == row.algorithm]
        incomplete = [
            f"{c.task} lr {c.learning_rate:g}: seeds {c.seeds}" for c in cells.itertuples() if c.runs < planned_seeds
        ]
        note = f" Incomplete ({'; '.join(incomplete)})." if incomplete else ""
        if row.incomplete_cells and not incomplete:
            note = f" Incomplete ({row.incomplete_cells} setting(s) without runs)."
        lines.append(
            f"- {label(row.algorithm)}: {claim} (any drop in {row.events}/{row.competent} competent runs against "
            f"PPO's {row.baseline_events}/{row.baseline_competent}; Mantel–Haenszel odds ratio {row.odds_ratio:.2f} "
            f"{interval}, CMH p = {row.p_cmh:.3g}, Holm-adjusted {row.p_holm:.3g}).{note}"
        )
    return lines


def _markdown(table: pd.DataFrame) -> str:
    return table.to_markdown(index=False, floatfmt=".3g") + "\n" if not table.empty else "(no rows)\n"


def plot_forest(pooled: pd.DataFrame, path: Path) -> None:
    """The Mantel–Haenszel common odds ratio of each arm against PPO with its 95 % interval, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sb3_ppo_variants.benchmark.plots import colour, label

    figure, axis = plt.subplots(figsize=(7.2, 1.0 + 0.34 * max(1, len(pooled))))
    finite = pooled[np.isfinite(pooled["odds_ratio"]) & (pooled["odds_ratio"] > 0)]
    bounds = pd.concat([finite["odds_ratio_low"], finite["odds_ratio_high"], finite["odds_ratio"]]).dropna()
    low, high = (float(bounds.min()), float(bounds.max())) if not bounds.empty else (0.1, 10.0)
    low, high = min(low, 0.5) / 1.5, max(high, 2.0) * 1.5
    for position, row in enumerate(pooled.itertuples()):
        if not math.isnan(row.odds_ratio_low):
            axis.plot([row.odds_ratio_low, row.odds_ratio_high], [position] * 2, color=colour(row.algorithm), lw=3)
        if np.isfinite(row.odds_ratio) and row.odds_ratio > 0:
            axis.plot(row.odds_ratio, position, "o", color=colour(row.algorithm))
        else:
            axis.annotate(f"OR = {row.odds_ratio:g}", (low, position), va="center", fontsize=7)
        axis.text(
            1.02, position, f"Holm p {row.p_holm:.2g}", va="center", fontsize=7, transform=axis.get_yaxis_transform()
        )
    axis.axvline(1.0, color="grey", lw=0.8, ls="--")
    axis.set_xscale("log")
    axis.set_xlim(low, high)
    axis.set_yticks(range(len(pooled)), [label(name) for name in pooled["algorithm"]])
    axis.set_ylim(len(pooled) - 0.5, -0.5)
    axis.set_xlabel("common odds ratio of any drop vs PPO (Mantel–Haenszel, 95 % RBG interval)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_rate_differences(differences: pd.DataFrame, path: Path) -> None:
    """Each arm's any-drop rate minus PPO's, per setting, with Newcombe's interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sb3_ppo_variants.benchmark.plots import label

    arms = list(dict.fromkeys(differences["algorithm"]))
    settings = sorted(differences.groupby(SETTING).groups)
    figure, axis = plt.subplots(figsize=(6.4, 0.8 + 0.34 * max(1, len(arms))))
    offsets = np.linspace(-0.25, 0.25, len(settings)) if len(settings) > 1 else [0.0]
    for offset, (task, learning_rate), marker in zip(offsets, settings, "osD^v<>ph", strict=False):
        rows = differences[(differences["task"] == task) & (differences["learning_rate"] == learning_rate)]
        positions = [arms.index(name) + offset for name in rows["algorithm"]]
        axis.errorbar(
            rows["difference"].to_numpy(),
            positions,
            xerr=np.vstack([rows["difference"] - rows["low"], rows["high"] - rows["difference"]]),
            fmt=marker,
            ms=4,
            capsize=2,
            label=f"{task.split('/')[-1]}, lr {learning_rate:g}",
        )
    axis.axvline(0.0, color="grey", lw=0.8, ls="--")
    axis.set_yticks(range(len(arms)), [label(name) for name in arms])
    axis.invert_yaxis()
    axis.set_xlim(-1, 1)
    axis.set_xlabel("any-drop rate minus PPO's (Newcombe 95 %)")
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


@dataclass(frozen=True)
class ExtensionReport:
    """Every table of the analysis."""

    runs: pd.DataFrame
    primary: pd.DataFrame
    pooled: pd.DataFrame
    effects: pd.DataFrame
    collapse: pd.DataFrame
    drops: pd.DataFrame
    instability: pd.DataFrame
    scores: pd.DataFrame
    training_primary: pd.DataFrame
    training_pooled: pd.DataFrame
    training_collapse: pd.DataFrame
    training_drops: pd.DataFrame
    training_instability: pd.DataFrame
    cross_check: pd.DataFrame
    sentences: list[str]
    skipped_training: int


def analyse(
    runs: pd.DataFrame,
    sb3_runs: pd.DataFrame | None = None,
    baseline: str = BASELINE,
    arms: Sequence[str] = PREREGISTERED_ARMS,
    reps: int = 2000,
    planned_seeds: int = STUDY_SEEDS,
) -> ExtensionReport:
    """Every endpoint of the preregistration from ``load_runs``' rows."""
    primary = binary_table(runs, "any_drop", "", baseline, arms, planned_seeds)
    pooled = pooled_table(primary, baseline, arms)
    instability = instability_table(runs, "", baseline, arms, reps)
    scores = score_intervals(runs, reps=reps)
    training = runs[runs["has_training_returns"].astype(bool)]
    training_primary = binary_table(training, "any_drop", "train_", baseline, arms, planned_seeds)
    return ExtensionReport(
        runs=runs,
        primary=primary,
        pooled=pooled,
        effects=effects_table(primary, instability, scores, baseline),
        collapse=binary_table(runs, "collapsed", "", baseline, arms, planned_seeds),
        drops=drops_table(runs),
        instability=instability,
        scores=scores,
        training_primary=training_primary,
        training_pooled=pooled_table(training_primary, baseline, arms),
        training_collapse=binary_table(training, "collapsed", "train_", baseline, arms, planned_seeds),
        training_drops=drops_table(training, "train_"),
        training_instability=instability_table(training, "train_", baseline, arms, reps),
        cross_check=engine_cross_check(runs, sb3_runs, baseline) if sb3_runs is not None else pd.DataFrame(),
        sentences=sentences(pooled, primary, planned_seeds),
        skipped_training=int((~runs["has_training_returns"].astype(bool)).sum()),
    )


def format_extension_report(report: ExtensionReport) -> str:
    """The Markdown report: the readings, then every table."""
    engines = ", ".join(f"{engine}: {count}" for engine, count in report.runs["engine"].value_counts().items())
    sections = [
        "# Powered collapse study: analysis",
        "",
        f"{len(report.runs)} runs ({engines}). Primary event: any drop after competence. Tests against PPO: "
        "Cochran–Mantel–Haenszel pooled over the settings (no continuity correction), Fisher exact per setting, "
        f"Mann–Whitney U for the instability fraction; Holm over the {len(PREREGISTERED_ARMS)} preregistered arms.",
        "",
        "Machines (run files per setting; `unrecorded` for files written before run files recorded the machine):",
        "",
        *(
            f"- {task}: " + "; ".join(f"{label} ({count})" for label, count in group["machine"].value_counts().items())
            for task, group in report.runs.groupby("task", sort=True)
        ),
        "",
        "## Readings (primary, pooled)",
        "",
        *(report.sentences or ["(no arm besides PPO)"]),
        "",
    ]
    parts = [
        ("Primary, pooled: CMH and Mantel–Haenszel odds ratio", report.pooled),
        ("Effects per setting: any-drop rate ratio against PPO, instability and final score", report.effects),
        ("Primary per setting: any drop among competent runs", report.primary),
        ("Lasting collapse per setting", report.collapse),
        ("Drops per competent run", report.drops),
        ("Instability fraction (evaluations after competence below 0.5)", report.instability),
        ("Best and final normalised score (IQM)", report.scores),
        ("Engine cross-check: PPO, study engine against the SB3 runner", report.cross_check),
    ]
    training = [
        ("Training returns, primary pooled", report.training_pooled),
        ("Training returns, any drop per setting", report.training_primary),
        ("Training returns, lasting collapse per setting", report.training_collapse),
        ("Training returns, drops per competent run", report.training_drops),
        ("Training returns, instability fraction", report.training_instability),
    ]
    for title, table in parts:
        empty = "(no SB3 runner's runs given: `--sb3-runs`)\n" if table is report.cross_check else "(no rows)\n"
        sections += [f"## {title}", "", _markdown(table) if not table.empty else empty]
    sections += [
        "## Training-return endpoints",
        "",
        f"Runs without training-episode records (left out of these tables): {report.skipped_training}.",
        "",
    ]
    for title, table in training:
        sections += [f"### {title}", "", _markdown(table)]
    return "\n".join(sections)


TABLES = {
    "pooled": "pooled",
    "effects": "effects",
    "primary": "any_drop",
    "collapse": "collapse",
    "drops": "drops",
    "instability": "instability",
    "scores": "scores",
    "cross_check": "cross_check",
    "training_pooled": "training_pooled",
    "training_primary": "training_any_drop",
    "training_collapse": "training_collapse",
    "training_drops": "training_drops",
    "training_instability": "training_instability",
}


def write_extension_report(
    directories: Path | Sequence[Path],
    output: Path,
    plots: Path | None = None,
    sb3_directory: Path | None = None,
    bootstrap_reps: int = 2000,
    arms: Sequence[str] = PREREGISTERED_ARMS,
) -> ExtensionReport:
    """``analyse`` the runs under ``directories`` (``load_runs``; and the SB3 runner's PPO under
    ``sb3_directory``) into CSV tables, ``extension.md`` and the figures ``extension_forest.png`` and
    ``extension_rate_differences.png``."""
    try:
        runs = load_runs(directories)
        sb3_runs = load_runs(sb3_directory) if sb3_directory is not None else None
    except ValueError as error:
        raise SystemExit(str(error)) from None
    if runs.empty:
        raise SystemExit(f"no run files under {directories}")
    report = analyse(runs, sb3_runs, arms=arms, reps=bootstrap_reps)
    output.mkdir(parents=True, exist_ok=True)
    runs.drop(columns=CURVES).to_csv(output / "extension_runs.csv", index=False)
    for attribute, name in TABLES.items():
        getattr(report, attribute).to_csv(output / f"extension_{name}.csv", index=False)
    (output / "extension.md").write_text(format_extension_report(report))
    plots = plots or output
    if not report.pooled.empty:
        plot_forest(report.pooled, plots / "extension_forest.png")
    differences = rate_differences(report.primary)
    if not differences.empty:
        plot_rate_differences(differences, plots / "extension_rate_differences.png")
    return report
