"""The power of the collapse study's comparisons, computed before any arm runs.

Each arm is compared with PPO in the same setting by the two-sided Fisher exact test (binary endpoints) or
the two-sided Mann–Whitney U test (the continuous endpoint), Holm-corrected over the ``m`` arms of a setting
at family-wise ``α``. Holm's first step tests the smallest p-value at ``α / m``, so the power of a single
comparison at ``α / m`` is what the study can promise for any one arm whatever the others do; that is the
level used here.

The Fisher power is exact: it sums the binomial probabilities of every pair of outcomes whose table the
test rejects. The Mann–Whitney power uses the normal approximation of the U statistic with its asymptotic
relative efficiency ``3/π`` to the t-test under normal data (Lehmann 1975), which is the usual planning
figure; the effect is a shift in units of the endpoint's standard deviation (Cohen's ``d``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from statistics import NormalDist

import numpy as np
from scipy.stats import binom, chi2

from sb3_ppo_variants.benchmark.collapse_study import fisher_exact


@cache
def _rejections(n_baseline: int, n_arm: int, level: float) -> np.ndarray:
    """``[x, y]`` is True where Fisher's test rejects ``x`` events of ``n_baseline`` against ``y`` of ``n_arm``."""
    rejects = np.zeros((n_baseline + 1, n_arm + 1), dtype=bool)
    for x in range(n_baseline + 1):
        for y in range(n_arm + 1):
            rejects[x, y] = fisher_exact(x, n_baseline - x, y, n_arm - y) < level
    return rejects


def fisher_power(n_baseline: int, n_arm: int, p_baseline: float, p_arm: float, level: float) -> float:
    """Exact probability that the two-sided Fisher test at ``level`` rejects, when the baseline's event rate is
    ``p_baseline`` over ``n_baseline`` runs and the arm's is ``p_arm`` over ``n_arm``."""
    baseline = binom.pmf(np.arange(n_baseline + 1), n_baseline, p_baseline)
    arm = binom.pmf(np.arange(n_arm + 1), n_arm, p_arm)
    return float(baseline @ _rejections(n_baseline, n_arm, level) @ arm)


def smallest_detectable_rate(
    n_baseline: int, n_arm: int, p_baseline: float, level: float, power: float = 0.8, step: float = 0.005
) -> float | None:
    """The highest arm rate below ``p_baseline`` that the Fisher test detects with at least ``power``.

    Scans ``p_arm`` downwards from ``p_baseline`` in steps of ``step``; ``None`` when even a rate of 0 is
    not detected with that power.
    """
    candidates = np.arange(p_baseline, -step / 2, -step)
    for p_arm in candidates:
        if fisher_power(n_baseline, n_arm, p_baseline, float(p_arm), level) >= power:
            return round(float(p_arm), 6)
    return None


def mann_whitney_detectable_effect(n_baseline: int, n_arm: int, level: float, power: float = 0.8) -> float:
    """The smallest shift (in standard deviations) the two-sided Mann–Whitney test detects with ``power``."""
    normal = NormalDist()
    z = normal.inv_cdf(1 - level / 2) + normal.inv_cdf(power)
    return z * math.sqrt(1 / n_baseline + 1 / n_arm) / math.sqrt(3 / math.pi)


def cmh_statistic(events: np.ndarray, runs: np.ndarray | int) -> np.ndarray:
    """The Cochran–Mantel–Haenszel chi-squared statistic (one degree of freedom, no continuity correction),
    vectorised as ``cochran_mantel_haenszel``; 0 where no stratum carries information."""
    events = np.asarray(events, dtype=float)
    runs = np.broadcast_to(np.asarray(runs, dtype=float), events.shape)
    total = runs.sum(axis=-1)
    with_event = events.sum(axis=-1)
    expected = runs[..., 1] * with_event / total
    variance = runs[..., 0] * runs[..., 1] * with_event * (total - with_event) / (total**2 * (total - 1))
    deviation = (events[..., 1] - expected).sum(axis=-1)
    spread = variance.sum(axis=-1)
    return np.divide(deviation**2, spread, out=np.zeros_like(spread), where=spread > 0)


def cochran_mantel_haenszel(events: np.ndarray, runs: np.ndarray | int) -> np.ndarray:
    """Two-sided p-values of the Cochran–Mantel–Haenszel test (no continuity correction), vectorised.

    ``events[..., k, g]`` events out of ``runs[..., k, g]`` runs in stratum (setting) ``k`` for group ``g``
    (0 the baseline, 1 the arm); leading axes index independent tables. Strata without both outcomes
    carry no information and add nothing.
    """
    return chi2.sf(cmh_statistic(events, runs), df=1)


def cmh_power(
    runs_per_cell: int,
    baseline_rates: list[float],
    odds_ratio: float,
    level: float,
    simulations: int = 20_000,
    seed: int = 0,
) -> float:
    """Monte Carlo power of the CMH test pooled over settings with PPO's ``baseline_rates``, when the arm's odds
    of the event are ``odds_ratio`` times PPO's in every setting (a common odds ratio, the CMH alternative)."""
    rng = np.random.default_rng(seed)
    p0 = np.asarray(baseline_rates, dtype=float)
    odds = odds_ratio * p0 / (1 - p0)
    p1 = odds / (1 + odds)
    rates = np.stack([p0, p1], axis=-1)  # (settings, 2)
    events = rng.binomial(runs_per_cell, rates, size=(simulations, *rates.shape))
    return float((cochran_mantel_haenszel(events, runs_per_cell) < level).mean())


def smallest_detectable_odds_ratio(
    runs_per_cell: int, baseline_rates: list[float], level: float, power: float = 0.8, seed: int = 0
) -> float | None:
    """The largest common odds ratio below 1 (a reduction) that the pooled CMH test detects with ``power``."""
    for odds_ratio in np.arange(0.95, 0.0, -0.01):
        if cmh_power(runs_per_cell, baseline_rates, float(odds_ratio), level, seed=seed) >= power:
            return round(float(odds_ratio), 2)
    return None


@dataclass(frozen=True)
class PowerRow:
    """One line of the power table: a baseline rate and what can be detected against it."""

    runs_per_arm: int
    p_baseline: float
    lowest_undetected: float | None
    detectable_rate: float | None
    detectable_difference: float | None


def power_table(
    runs_per_arm: list[int], baseline_rates: list[float], arms: int, alpha: float = 0.05, power: float = 0.8
) -> list[PowerRow]:
    """The smallest detectable reduction of each baseline rate, for each number of competent runs per arm,
    at Holm's first step ``alpha / arms``."""
    level = alpha / arms
    rows = []
    for n in runs_per_arm:
        for p_baseline in baseline_rates:
            rate = smallest_detectable_rate(n, n, p_baseline, level, power)
            rows.append(
                PowerRow(
                    runs_per_arm=n,
                    p_baseline=p_baseline,
                    lowest_undetected=None if rate is None else round(rate + 0.005, 6),
                    detectable_rate=rate,
                    detectable_difference=None if rate is None else round(p_baseline - rate, 6),
                )
            )
    return rows


def format_power_report(
    runs_per_arm: list[int],
    baseline_rates: list[float],
    arms: int,
    alpha: float = 0.05,
    power: float = 0.8,
    settings: int = 3,
) -> str:
    """The Markdown tables the preregistration quotes: per setting (Fisher), pooled over ``settings`` settings
    (CMH, PPO's rate the same in each, or spread over ``baseline_rates``), and the continuous endpoint."""
    level = alpha / arms
    lines = [
        f"Holm over {arms} comparisons at family-wise α = {alpha}: first step at α/{arms} = {level:.5f}; "
        f"power {power:.0%}.",
        "",
        "| competent runs per arm | PPO's rate | arm rate detected (Fisher, exact) | difference |",
        "|---|---|---|---|",
    ]
    for row in power_table(runs_per_arm, baseline_rates, arms, alpha, power):
        detected = "none, even 0" if row.detectable_rate is None else f"≤ {row.detectable_rate:.3f}"
        difference = "—" if row.detectable_difference is None else f"{row.detectable_difference:.3f}"
        lines.append(f"| {row.runs_per_arm} | {row.p_baseline:.2f} | {detected} | {difference} |")
    pooled_profiles = [[rate] * settings for rate in baseline_rates]
    if len(baseline_rates) == settings:
        pooled_profiles.append(list(baseline_rates))
    lines += [
        "",
        f"| competent runs per cell | PPO's rates in the {settings} settings | common odds ratio detected (CMH) "
        "| arm rates at that odds ratio |",
        "|---|---|---|---|",
    ]
    for n in runs_per_arm:
        for rates in pooled_profiles:
            odds_ratio = smallest_detectable_odds_ratio(n, rates, level, power)
            if odds_ratio is None:
                lines.append(f"| {n} | {', '.join(f'{r:.2f}' for r in rates)} | none | — |")
                continue
            arm = [odds_ratio * r / (1 - r) / (1 + odds_ratio * r / (1 - r)) for r in rates]
            lines.append(
                f"| {n} | {', '.join(f'{r:.2f}' for r in rates)} | ≤ {odds_ratio:.2f} | "
                f"{', '.join(f'{r:.3f}' for r in arm)} |"
            )
    lines += ["", "| runs per arm | shift detected (Mann–Whitney, in SDs) |", "|---|---|"]
    for n in runs_per_arm:
        lines.append(f"| {n} | {mann_whitney_detectable_effect(n, n, level, power):.2f} |")
    return "\n".join(lines)
