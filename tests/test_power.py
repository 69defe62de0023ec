"""The study's power calculations against independent computations (SciPy, statsmodels, closed forms)."""

import math

import numpy as np
import pytest
from scipy.stats import binom, fisher_exact
from statsmodels.stats.contingency_tables import StratifiedTable

from sb3_ppo_variants.benchmark.power import (
    cmh_power,
    cochran_mantel_haenszel,
    fisher_power,
    mann_whitney_detectable_effect,
    smallest_detectable_rate,
)


def test_fisher_power_is_the_exact_sum_over_outcomes():
    n0, n1, p0, p1, level = 6, 7, 0.6, 0.1, 0.05
    expected = sum(
        binom.pmf(x, n0, p0) * binom.pmf(y, n1, p1)
        for x in range(n0 + 1)
        for y in range(n1 + 1)
        if fisher_exact([[x, n0 - x], [y, n1 - y]]).pvalue < level
    )
    assert fisher_power(n0, n1, p0, p1, level) == pytest.approx(expected, rel=1e-9)


def test_fisher_power_under_the_null_is_at_most_the_level():
    for rate in (0.1, 0.5, 0.8):
        assert fisher_power(30, 30, rate, rate, 0.05) <= 0.05


def test_smallest_detectable_rate_is_where_power_crosses():
    rate = smallest_detectable_rate(50, 50, 0.5, 0.05 / 15)
    assert rate is not None
    assert fisher_power(50, 50, 0.5, rate, 0.05 / 15) >= 0.8 > fisher_power(50, 50, 0.5, rate + 0.005, 0.05 / 15)
    assert smallest_detectable_rate(12, 12, 0.17, 0.05 / 15) is None  # the old study could detect nothing


def test_cmh_matches_statsmodels():
    events = np.array([[3, 9], [5, 12], [2, 7]])  # per setting: PPO, arm
    runs = np.array([[20, 25], [30, 30], [15, 18]])
    tables = np.stack([[[events[k, 1], runs[k, 1] - events[k, 1]], [events[k, 0], runs[k, 0] - events[k, 0]]]
                       for k in range(3)], axis=-1)  # fmt: skip
    expected = StratifiedTable(tables).test_null_odds(correction=False).pvalue
    assert cochran_mantel_haenszel(events, runs) == pytest.approx(expected, rel=1e-9)


def test_cmh_power_is_the_level_under_the_null_and_grows_with_the_effect():
    level = 0.05
    null = cmh_power(40, [0.3, 0.5, 0.7], 1.0, level, simulations=20_000)
    assert null == pytest.approx(level, abs=0.01)
    assert cmh_power(40, [0.5] * 3, 0.5, level) < cmh_power(40, [0.5] * 3, 0.3, level)


def test_mann_whitney_effect_is_the_t_test_effect_over_the_efficiency():
    t_test = (1.959964 + 0.841621) * math.sqrt(2 / 50)
    assert mann_whitney_detectable_effect(50, 50, 0.05) == pytest.approx(t_test / math.sqrt(3 / math.pi), rel=1e-5)
