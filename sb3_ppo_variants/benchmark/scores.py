"""Normalised scores, IQM with stratified-bootstrap confidence intervals, and the collapse criterion.

The interquartile mean is ``rliable.metrics.aggregate_iqm``. The interval is rliable's
stratified bootstrap (Agarwal et al. 2021, arXiv:2108.13264): runs are resampled with
replacement within each task, the IQM is recomputed on every resample, and the 2.5 and 97.5
percentiles bound the 95 % interval. It is written out here because ``rliable.library``
1.2 cannot be imported next to pandas 3 (its dependency ``arch`` 7.2 fails at import, and
``arch`` 8 no longer accepts the ``random_state`` keyword that rliable passes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import trim_mean

try:
    from rliable.metrics import aggregate_iqm
except ImportError:  # rliable is optional (the bench extra); its IQM is scipy's 25 % trimmed mean

    def aggregate_iqm(scores: np.ndarray) -> float:
        return float(trim_mean(scores, proportiontocut=0.25, axis=None))


# Normalised-score levels of the collapse criterion; see ``collapse_events``.
NEAR_BEST = 0.9
NEAR_RANDOM = 0.1
RECOVERED = 0.5
LEARNED = 0.5


def iqm_interval(scores: np.ndarray, reps: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """IQM of a ``(runs, tasks)`` score matrix and its stratified-bootstrap 95 % interval."""
    scores = np.asarray(scores, dtype=float)
    if scores.ndim == 1:
        scores = scores[:, None]
    n_runs, n_tasks = scores.shape
    generator = np.random.default_rng(seed)
    indices = generator.integers(0, n_runs, size=(reps, n_runs, n_tasks))
    resampled = scores[indices, np.arange(n_tasks)]
    estimates = trim_mean(resampled.reshape(reps, -1), proportiontocut=0.25, axis=1)
    low, high = np.percentile(estimates, [2.5, 97.5])
    return float(aggregate_iqm(scores)), float(low), float(high)


def iqm_curve(curves: np.ndarray, reps: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IQM over runs at every evaluation of a ``(runs, evaluations)`` matrix, with bootstrap 95 % bands."""
    curves = np.asarray(curves, dtype=float)
    generator = np.random.default_rng(seed)
    indices = generator.integers(0, curves.shape[0], size=(reps, curves.shape[0]))
    estimates = trim_mean(curves[indices], proportiontocut=0.25, axis=1)
    low, high = np.percentile(estimates, [2.5, 97.5], axis=0)
    return trim_mean(curves, proportiontocut=0.25, axis=0), low, high


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
