"""Normalised scores, IQM with stratified-bootstrap confidence intervals, and the collapse criterion.

The interquartile mean and its stratified-bootstrap 95 % interval (Agarwal et al. 2021,
arXiv:2108.13264) come from ``rliable``: runs are resampled with replacement within each task,
the IQM is recomputed on every resample, and the percentiles bound the interval.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from rliable import library as rly
from rliable import metrics

# Normalised-score levels of the collapse criterion; see ``collapse_events``.
NEAR_BEST = 0.9
NEAR_RANDOM = 0.1
RECOVERED = 0.5
LEARNED = 0.5


def _interval_estimates(scores: np.ndarray, statistic, reps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings():
        # arch deprecates the RandomState that rliable hands it; the resampling is unchanged
        warnings.simplefilter("ignore", FutureWarning)
        point, interval = rly.get_interval_estimates(
            {"scores": scores}, statistic, reps=reps, random_state=np.random.RandomState(seed)
        )
    return point["scores"], interval["scores"]


def iqm_interval(scores: np.ndarray, reps: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """IQM of a ``(runs, tasks)`` score matrix and its stratified-bootstrap 95 % interval."""
    scores = np.asarray(scores, dtype=float)
    if scores.ndim == 1:
        scores = scores[:, None]
    point, interval = _interval_estimates(scores, lambda x: np.array([metrics.aggregate_iqm(x)]), reps, seed)
    return float(point[0]), float(interval[0, 0]), float(interval[1, 0])


def iqm_curve(curves: np.ndarray, reps: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IQM over runs at every evaluation of a ``(runs, evaluations)`` matrix, with bootstrap 95 % bands."""
    curves = np.asarray(curves, dtype=float)[:, None, :]  # (runs, one task, evaluations)

    def iqm_per_evaluation(x: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(x[..., j]) for j in range(x.shape[-1])])

    point, interval = _interval_estimates(curves, iqm_per_evaluation, reps, seed)
    return point, interval[0], interval[1]


def normalised(returns: np.ndarray, random_score: float, max_score: float) -> np.ndarray:
    """``(R − R_random) / (R_max − R_random)``: 0 is the uniform random policy, 1 the reference maximum."""
    return (np.asarray(returns, dtype=float) - random_score) / (max_score - random_score)


@dataclass(frozen=True)
class CollapseEvents:
    """What the collapse criterion found in one run's evaluation curve."""

    best: float
    collapsed: bool
    transient_drops: int
    collapse_step: int | None


def collapse_events(steps: np.ndarray, scores: np.ndarray) -> CollapseEvents:
    """Apply the collapse criterion to one run's normalised evaluation scores.

    The evaluation before any update (step 0) is ignored: a greedy untrained policy can score
    well by accident, and that is not a learned peak. With ``b`` the best remaining score, the
    run **collapses** if ``b ≥ LEARNED`` and, after some evaluation scoring at least
    ``NEAR_BEST · b``, an evaluation scores at most ``NEAR_RANDOM`` and every evaluation from
    there to the end stays below ``RECOVERED · b``. A drop to ``NEAR_RANDOM`` that is followed by
    a score of ``RECOVERED · b`` or more is a **transient drop**.
    """
    steps = np.asarray(steps)
    scores = np.asarray(scores, dtype=float)
    keep = steps > 0
    steps, scores = steps[keep], scores[keep]
    if len(scores) == 0:
        return CollapseEvents(float("nan"), False, 0, None)
    best = float(scores.max())
    if best < LEARNED:
        return CollapseEvents(best, False, 0, None)
    near_best_seen = False
    transient_drops = 0
    index = 0
    while index < len(scores):
        if scores[index] >= NEAR_BEST * best:
            near_best_seen = True
        elif near_best_seen and scores[index] <= NEAR_RANDOM:
            later = scores[index:]
            if np.all(later < RECOVERED * best):
                return CollapseEvents(best, True, transient_drops, int(steps[index]))
            transient_drops += 1
            near_best_seen = False
            # skip to the recovery, so one drop is counted once
            index += int(np.argmax(later >= RECOVERED * best))
            continue
        index += 1
    return CollapseEvents(best, False, transient_drops, None)
