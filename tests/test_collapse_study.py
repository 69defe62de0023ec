"""The collapse study's definition and statistics, against hand-made runs and SciPy's implementations."""

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from run_records import write_pilot_run

from sb3_ppo_variants.benchmark.collapse_study import (
    CollapseDefinition,
    classify_run,
    collapse_table,
    fisher_exact,
    holm_adjusted,
    load_outcomes,
    moving_average,
    normalised_score,
    wilson_interval,
)

scipy_stats = pytest.importorskip("scipy.stats")

DEFINITION = CollapseDefinition(competent=0.8, low=0.2, window=3, patience=3)
STEPS = [10 * i for i in range(12)]


def test_moving_average_needs_a_full_window() -> None:
    averages = moving_average(np.array([0.0, 0.3, 0.6, 0.9]), 3)
    assert np.isnan(averages[:2]).all()
    np.testing.assert_allclose(averages[2:], [0.3, 0.6])


def test_a_run_that_never_becomes_competent_cannot_collapse() -> None:
    outcome = classify_run(STEPS, [0.1, 0.5, 0.9, 0.7, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], DEFINITION)
    assert not outcome.reached_competence and not outcome.collapsed
    assert outcome.best_score == 0.9 and outcome.final_score == 0.0


def test_a_permanent_drop_is_a_collapse_dated_by_its_first_evaluation() -> None:
    scores = [0.9, 0.9, 0.9, 1.0, 0.1, 0.1, 0.15, 0.5, 0.3, 0.1, 0.0, 0.1]
    outcome = classify_run(STEPS, scores, DEFINITION)
    assert outcome.reached_competence and outcome.competence_step == 20
    assert outcome.collapsed and outcome.collapse_step == 40 and outcome.steps_to_collapse == 20
    assert outcome.transient_drops == 0


def test_a_drop_that_recovers_is_transient_and_a_later_permanent_one_still_counts() -> None:
    scores = [0.9, 0.9, 0.9, 0.0, 0.0, 0.0, 0.9, 0.9, 0.9, 0.1, 0.1, 0.1]
    outcome = classify_run(STEPS, scores, DEFINITION)
    assert outcome.transient_drops == 1
    assert outcome.collapsed and outcome.collapse_step == 90


def test_dips_shorter_than_the_patience_are_not_drops() -> None:
    scores = [0.9, 0.9, 0.9, 0.0, 0.0, 0.9, 0.0, 0.0, 0.9, 0.9, 0.0, 0.0]
    outcome = classify_run(STEPS, scores, DEFINITION)
    assert not outcome.collapsed and outcome.transient_drops == 0


def test_a_drop_that_regains_only_a_middling_level_is_still_a_collapse() -> None:
    scores = [0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7]
    assert classify_run(STEPS, scores, DEFINITION).collapsed


def test_bad_definitions_are_refused() -> None:
    with pytest.raises(ValueError, match="low < competent"):
        CollapseDefinition(competent=0.2, low=0.5)
    with pytest.raises(ValueError, match="patience"):
        CollapseDefinition(patience=0)


def test_normalised_score_maps_random_to_zero_and_reference_to_one() -> None:
    np.testing.assert_allclose(normalised_score([23.7, 500.0, 261.85], 23.7, 500.0), [0.0, 1.0, 0.5])


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 60), st.integers(0, 60))
def test_wilson_interval_matches_scipy(successes: int, extra: int) -> None:
    trials = successes + extra
    if trials == 0:
        assert all(math.isnan(v) for v in wilson_interval(0, 0))
        return
    expected = scipy_stats.binomtest(successes, trials).proportion_ci(confidence_level=0.95, method="wilson")
    np.testing.assert_allclose(wilson_interval(successes, trials), (expected.low, expected.high), atol=1e-9)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 25), st.integers(0, 25), st.integers(0, 25), st.integers(0, 25))
def test_fisher_exact_matches_scipy(a: int, b: int, c: int, d: int) -> None:
    if a + b + c + d == 0:
        return
    expected = scipy_stats.fisher_exact([[a, b], [c, d]], alternative="two-sided").pvalue
    assert fisher_exact(a, b, c, d) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_holm_adjustment_by_hand() -> None:
    # sorted 0.01, 0.02, 0.04 → 3·0.01, max(0.03, 2·0.02), max(0.04, 1·0.04)
    assert holm_adjusted([0.04, 0.01, 0.02, math.nan]) == pytest.approx([0.04, 0.03, 0.04, math.nan], nan_ok=True)
    assert holm_adjusted([0.5, 0.6]) == [1.0, 1.0]


def test_collapse_table_counts_rates_and_tests_against_ppo(tmp_path) -> None:
    good, collapsing, never = [500.0] * 8, [500.0] * 4 + [9.0] * 4, [20.0] * 8
    for seed in range(4):
        write_pilot_run(tmp_path, "ppo", seed, collapsing if seed < 3 else good)
        write_pilot_run(tmp_path, "logit", seed, good if seed < 3 else never)
    table = collapse_table(load_outcomes(tmp_path)).set_index("algorithm")
    assert table.loc["ppo", ["runs", "competent", "collapsed"]].tolist() == [4, 4, 3]
    assert table.loc["logit", ["runs", "competent", "collapsed"]].tolist() == [4, 3, 0]
    assert table.loc["ppo", "collapse_rate"] == 0.75 and table.loc["logit", "collapse_rate"] == 0.0
    assert table.loc["ppo", "median_steps_to_collapse"] == 200
    expected_p = scipy_stats.fisher_exact([[0, 3], [3, 1]]).pvalue
    assert table.loc["logit", "p_vs_ppo"] == pytest.approx(expected_p)
    assert table.loc["logit", "p_holm"] == pytest.approx(expected_p)
    assert pd.isna(table.loc["ppo", "p_vs_ppo"])
    low, high = scipy_stats.binomtest(3, 4).proportion_ci(method="wilson")
    assert (table.loc["ppo", "rate_low"], table.loc["ppo", "rate_high"]) == pytest.approx((low, high))


def test_the_study_command_writes_tables_and_figures(tmp_path, capsys) -> None:
    from sb3_ppo_variants.benchmark.__main__ import main

    for seed in range(3):
        write_pilot_run(tmp_path / "runs", "ppo", seed, [500.0] * 4 + [9.0] * 4)
        write_pilot_run(tmp_path / "runs", "logit", seed, [500.0] * 8)
    args = ["study", "--runs", str(tmp_path / "runs"), "--output", str(tmp_path / "out"), "--bootstrap-reps", "50"]
    assert main(args) == 0
    table = pd.read_csv(tmp_path / "out" / "collapse_study.csv").set_index("algorithm")
    assert table.loc["ppo", "collapsed"] == 3 and table.loc["logit", "collapsed"] == 0
    assert table.loc["logit", "p_vs_ppo"] == pytest.approx(scipy_stats.fisher_exact([[0, 3], [3, 0]]).pvalue)
    for name in (
        "collapse_study_runs.csv",
        "collapse_study.md",
        "collapse_study_rates.png",
        "collapse_study_curves.png",
    ):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert "pilot/CartPole-v1-shared" in capsys.readouterr().out


def test_wilson_bounds_are_exact_at_the_edges() -> None:
    assert wilson_interval(0, 11)[0] == 0.0
    assert wilson_interval(7, 7)[1] == 1.0
