"""The collapse study: what counts as a collapse, and the statistics that compare variants with PPO.

The definition and the analysis plan are written down in ``docs/benchmarks.md`` ("Collapse study")
before any variant is run in the collapsing settings, and this module is their one implementation.

A run is a sequence of evaluations (mean greedy return at a training step). With the return normalised
between a uniform random policy (0) and the task's reference (1):

- the run *reached competence* at the first evaluation where the moving average over ``window``
  evaluations is at least ``competent``;
- after that, a *drop* starts at an evaluation that begins ``patience`` consecutive evaluations below
  ``low``;
- a drop after which the moving average regains ``competent`` is *transient*; one that never does before
  the end of the run is a *collapse*, dated by the drop's first evaluation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class CollapseDefinition:
    """Thresholds on the normalised return (0: random policy, 1: the task's reference score).

    :param competent: level of the moving average that counts as competent
    :param low: level below which an evaluation counts as collapsed
    :param window: evaluations in the moving average
    :param patience: consecutive evaluations below ``low`` that start a drop
    """

    competent: float = 0.8
    low: float = 0.2
    window: int = 3
    patience: int = 3

    def __post_init__(self) -> None:
        if not 0 <= self.low < self.competent:
            raise ValueError(f"need 0 <= low < competent, got low={self.low}, competent={self.competent}")
        for name in ("window", "patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class RunOutcome:
    """How one run went, under a ``CollapseDefinition``."""

    reached_competence: bool
    competence_step: int | None
    collapsed: bool
    collapse_step: int | None
    transient_drops: int
    best_score: float
    final_score: float

    @property
    def steps_to_collapse(self) -> int | None:
        """Environment steps from competence to the collapse's first evaluation."""
        if self.collapse_step is None or self.competence_step is None:
            return None
        return self.collapse_step - self.competence_step

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "steps_to_collapse": self.steps_to_collapse}


def normalised_score(returns: Sequence[float] | np.ndarray, random_score: float, max_score: float) -> np.ndarray:
    """``(R − R_random) / (R_max − R_random)``."""
    return (np.asarray(returns, dtype=float) - random_score) / (max_score - random_score)


def moving_average(scores: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` scores at each evaluation; NaN until ``window`` evaluations exist."""
    averages = np.full(len(scores), np.nan)
    if len(scores) >= window:
        averages[window - 1 :] = np.convolve(scores, np.ones(window) / window, mode="valid")
    return averages


def _next_drop(scores: np.ndarray, after: int, definition: CollapseDefinition) -> int | None:
    """The first evaluation after index ``after`` that starts ``patience`` consecutive ones below ``low``."""
    below = scores < definition.low
    return next(
        (
            start
            for start in range(after + 1, len(scores) - definition.patience + 1)
            if below[start : start + definition.patience].all()
        ),
        None,
    )


def first_drop(scores: Sequence[float] | np.ndarray, definition: CollapseDefinition) -> tuple[int, int] | None:
    """The evaluation where the run reached competence and the one that starts its first drop (indices), or
    ``None`` for a run without a drop."""
    scores = np.asarray(scores, dtype=float)
    competent = np.flatnonzero(moving_average(scores, definition.window) >= definition.competent)
    if competent.size == 0:
        return None
    drop = _next_drop(scores, int(competent[0]), definition)
    return None if drop is None else (int(competent[0]), drop)


def classify_run(
    steps: Sequence[int], scores: Sequence[float] | np.ndarray, definition: CollapseDefinition
) -> RunOutcome:
    """Apply the definition to one run's normalised evaluation scores."""
    scores = np.asarray(scores, dtype=float)
    average = moving_average(scores, definition.window)
    competent = np.flatnonzero(average >= definition.competent)
    best, final = float(scores.max()), float(scores[-1])
    if competent.size == 0:
        return RunOutcome(False, None, False, None, 0, best, final)
    index = int(competent[0])
    competence_step = int(steps[index])
    transient = 0
    while True:
        drop = _next_drop(scores, index, definition)
        if drop is None:
            return RunOutcome(True, competence_step, False, None, transient, best, final)
        regained = np.flatnonzero(average[drop + 1 :] >= definition.competent)
        if regained.size == 0:
            return RunOutcome(True, competence_step, True, int(steps[drop]), transient, best, final)
        transient += 1
        index = drop + 1 + int(regained[0])


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927); ``(nan, nan)`` without trials."""
    if trials == 0:
        return (math.nan, math.nan)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    proportion = successes / trials
    centre = (proportion + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(proportion * (1 - proportion) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    # the bounds are exactly 0 with no successes and 1 with no failures (the formula rounds to ±1e-17 there)
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return (low, high)


def fisher_exact(a: int, b: int, c: int, d: int) -> float:
    """Two-sided p-value of Fisher's exact test on the 2×2 table ``[[a, b], [c, d]]``.

    Sums the hypergeometric probabilities of every table with the same margins that is no more
    likely than the observed one (the convention of R's ``fisher.test`` and SciPy).
    """
    row, column, total = a + b, a + c, a + b + c + d

    def probability(x: int) -> float:
        return math.comb(column, x) * math.comb(total - column, row - x) / math.comb(total, row)

    observed = probability(a)
    support = range(max(0, row + column - total), min(row, column) + 1)
    return min(1.0, sum(p for p in map(probability, support) if p <= observed * (1 + 1e-7)))


def holm_adjusted(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (Holm 1979), in the input's order; NaN stays NaN."""
    finite = [(p, i) for i, p in enumerate(p_values) if not math.isnan(p)]
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(finite)):
        running = max(running, min(1.0, (len(finite) - rank) * p))
        adjusted[i] = running
    return adjusted


def load_outcomes(directory: Path, definition: CollapseDefinition | None = None) -> pd.DataFrame:
    """One row per run file under ``directory``: the run's identity, its ``RunOutcome``, and its evaluation
    steps and normalised scores (``CURVE_COLUMNS``)."""
    from sb3_ppo_variants.benchmark.tasks import TASKS

    definition = definition or CollapseDefinition()
    rows = []
    for path in sorted(directory.glob("*/*.json")):
        run = json.loads(path.read_text())
        task = TASKS[run["task"]]
        evaluations = run["evaluations"]
        scores = normalised_score([e["eval_return"] for e in evaluations], task.random_score, task.max_score)
        outcome = classify_run([e["step"] for e in evaluations], scores, definition)
        rows.append(
            {
                "task": run["task"],
                "algorithm": run["algorithm"],
                "learning_rate": run["learning_rate"],
                "seed": run["seed"],
                "timesteps": run["timesteps"],
                **outcome.as_dict(),
                "steps": [e["step"] for e in evaluations],
                "scores": scores.tolist(),
            }
        )
    return pd.DataFrame(rows)


SETTING = ["task", "learning_rate"]
CURVE_COLUMNS = ["steps", "scores"]


def collapse_table(outcomes: pd.DataFrame, baseline: str = "ppo") -> pd.DataFrame:
    """Per setting and algorithm: runs, competent runs, collapses, transient drops, the collapse rate among
    competent runs with its Wilson 95 % interval, and Fisher's exact test against ``baseline`` in the same
    setting with Holm's correction over the algorithms compared in that setting."""
    groups = outcomes.groupby([*SETTING, "algorithm"], sort=True)
    table = groups.agg(
        runs=("seed", "size"),
        competent=("reached_competence", "sum"),
        collapsed=("collapsed", "sum"),
        runs_with_transient_drops=("transient_drops", lambda drops: int((drops > 0).sum())),
        median_steps_to_collapse=("steps_to_collapse", "median"),
    ).reset_index()
    table["collapse_rate"] = table["collapsed"] / table["competent"].where(table["competent"] > 0)
    intervals = [wilson_interval(int(c), int(n)) for c, n in zip(table["collapsed"], table["competent"], strict=True)]
    table["rate_low"], table["rate_high"] = zip(*intervals, strict=True) if intervals else ((), ())
    table["p_vs_" + baseline] = math.nan
    table["p_holm"] = math.nan
    for _, setting in table.groupby(SETTING):
        reference = setting[setting["algorithm"] == baseline]
        if reference.empty:
            continue
        ref_collapsed, ref_competent = int(reference["collapsed"].iloc[0]), int(reference["competent"].iloc[0])
        others = setting[setting["algorithm"] != baseline]
        p_values = [
            fisher_exact(int(c), int(n) - int(c), ref_collapsed, ref_competent - ref_collapsed)
            if n > 0 and ref_competent > 0
            else math.nan
            for c, n in zip(others["collapsed"], others["competent"], strict=True)
        ]
        table.loc[others.index, "p_vs_" + baseline] = p_values
        table.loc[others.index, "p_holm"] = holm_adjusted(p_values)
    return table


def score_intervals(outcomes: pd.DataFrame, reps: int = 2000, seed: int = 0) -> pd.DataFrame:
    """IQM of the best and the final normalised score per setting and algorithm, with rliable's
    stratified-bootstrap 95 % intervals (a variant that avoids collapse by never learning shows here)."""
    from rliable import library as rly
    from rliable import metrics

    rows = []
    for key, group in outcomes.groupby([*SETTING, "algorithm"], sort=True):
        row = dict(zip([*SETTING, "algorithm"], key, strict=True))
        for column in ("best_score", "final_score"):
            scores = {"run": group[column].to_numpy(dtype=float)[:, None]}
            np.random.seed(seed)  # noqa: NPY002 (rliable's bootstrap draws from NumPy's global generator)
            point, interval = rly.get_interval_estimates(
                scores, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=reps
            )
            row[f"{column}_iqm"] = float(point["run"][0])
            row[f"{column}_low"], row[f"{column}_high"] = (float(v) for v in interval["run"][:, 0])
        rows.append(row)
    return pd.DataFrame(rows)


def plot_collapse_rates(table: pd.DataFrame, path: Path) -> None:
    """Collapse rate among competent runs with its Wilson 95 % interval, one panel per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sb3_ppo_variants.benchmark.plots import colour, label

    settings = list(table.groupby(SETTING, sort=True))
    figure, axes = plt.subplots(
        1, len(settings), figsize=(5.2 * len(settings), 0.5 + 0.32 * table["algorithm"].nunique()), squeeze=False
    )
    for axis, ((task, learning_rate), rows) in zip(axes[0], settings, strict=True):
        rows = rows.reset_index(drop=True)
        for position, row in rows.iterrows():
            rate = 0.0 if pd.isna(row.collapse_rate) else row.collapse_rate
            axis.plot(
                [row.rate_low, row.rate_high],
                [position, position],
                color=colour(row.algorithm),
                linewidth=5,
                alpha=0.35,
            )
            axis.plot(rate, position, "o", color=colour(row.algorithm))
            axis.annotate(
                f"{int(row.collapsed)}/{int(row.competent)}",
                (1.02, position),
                va="center",
                fontsize=8,
                annotation_clip=False,
            )
        axis.set_yticks(range(len(rows)), [label(name) for name in rows["algorithm"]])
        axis.set_xlim(0, 1)
        axis.invert_yaxis()
        axis.set_xlabel("collapse rate among competent runs (Wilson 95 %)")
        axis.set_title(f"{task}, lr {learning_rate:g}", fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_run_curves(outcomes: pd.DataFrame, path: Path) -> None:
    """Every run's normalised evaluation score: one row per setting, one panel per algorithm, collapses marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sb3_ppo_variants.benchmark.plots import colour, label

    settings = sorted(outcomes.groupby(SETTING).groups)
    algorithms = sorted(outcomes["algorithm"].unique(), key=lambda name: (name != "ppo", name))
    figure, axes = plt.subplots(
        len(settings), len(algorithms), figsize=(2.6 * len(algorithms), 2.2 * len(settings)), squeeze=False, sharey=True
    )
    for row, (task, learning_rate) in enumerate(settings):
        for column, algorithm in enumerate(algorithms):
            axis = axes[row][column]
            chosen = outcomes[
                (outcomes.task == task) & (outcomes.learning_rate == learning_rate) & (outcomes.algorithm == algorithm)
            ]
            for outcome in chosen.itertuples():
                axis.plot(
                    outcome.steps,
                    outcome.scores,
                    color="#d62728" if outcome.collapsed else colour(algorithm),
                    linewidth=0.7,
                    alpha=0.7,
                )
            axis.set_title(f"{label(algorithm)} ({int(chosen.collapsed.sum())}/{len(chosen)} collapsed)", fontsize=7)
            axis.tick_params(labelsize=6)
            if column == 0:
                axis.set_ylabel(f"{task.split('/')[-1]}\nlr {learning_rate:g}", fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_study_report(
    directory: Path, output: Path, plots: Path, name: str, bootstrap_reps: int = 2000
) -> pd.DataFrame:
    """Outcomes per run, the collapse table and the score intervals (CSV and Markdown), and the two figures."""
    outcomes = load_outcomes(directory)
    if outcomes.empty:
        raise SystemExit(f"no run files under {directory}")
    output.mkdir(parents=True, exist_ok=True)
    outcomes.drop(columns=CURVE_COLUMNS).to_csv(output / f"{name}_runs.csv", index=False)
    table = collapse_table(outcomes)
    scores = score_intervals(outcomes, reps=bootstrap_reps)
    merged = table.merge(scores, on=[*SETTING, "algorithm"])
    merged.to_csv(output / f"{name}.csv", index=False)
    (output / f"{name}.md").write_text(merged.to_markdown(index=False, floatfmt=".3g") + "\n")
    plot_collapse_rates(table, plots / f"{name}_rates.png")
    plot_run_curves(outcomes, plots / f"{name}_curves.png")
    return merged
