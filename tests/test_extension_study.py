"""The powered collapse study's pilot selection and analysis, against hand-made runs and independent
implementations (statsmodels' CMH, SciPy's Mann–Whitney)."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch as th
from scipy.stats import fisher_exact as scipy_fisher_exact
from scipy.stats import mannwhitneyu
from statsmodels.stats.contingency_tables import StratifiedTable
from statsmodels.stats.proportion import confint_proportions_2indep

from sb3_ppo_variants.benchmark.__main__ import main
from sb3_ppo_variants.benchmark.collapse_study import CollapseDefinition
from sb3_ppo_variants.benchmark.extension_study import (
    classify_series,
    format_pilot_report,
    holm_over_family,
    instability_table,
    load_runs,
    machine_label,
    mantel_haenszel,
    missing_kinds,
    pilot_table,
    rate_ratio_interval,
    select_settings,
    training_return_series,
    write_extension_report,
)
from sb3_ppo_variants.benchmark.provenance import machine
from sb3_ppo_variants.benchmark.replication import compare_runs, format_comparison
from sb3_ppo_variants.benchmark.sensitivity import SENSITIVITY_ARMS, write_sensitivity_report
from sb3_ppo_variants.benchmark.tasks import SB3_ROLLOUT_SHAPE, TASKS

SHARED = "pilot/CartPole-v1-shared"
SEPARATE = "pilot/CartPole-v1-separate"


def scores(*pieces: tuple[float, int]) -> list[float]:
    """``(0.9, 4), (0.1, 3)`` → four evaluations at 0.9 then three at 0.1."""
    return [value for value, count in pieces for _ in range(count)]


# competence at the 4th evaluation (index 3: the average of 0.9, 0.9, 0.9), 31 evaluations in all
TRANSIENT = scores((0.1, 1), (0.9, 4), (0.1, 3), (0.9, 23))  # a drop at index 5, regained at index 10
LASTING = scores((0.1, 1), (0.9, 10), (0.0, 20))  # a drop at index 11 that never recovers
TWO_DROPS = scores((0.1, 1), (0.9, 4), (0.1, 3), (0.9, 5), (0.05, 18))  # transient, then lasting from index 13
NEVER = scores((0.5, 31))
STEADY = scores((0.1, 1), (0.95, 30))
SHORT_DIP = scores((0.1, 1), (0.9, 4), (0.1, 2), (0.9, 24))  # 2 evaluations below 0.2: not a drop


def write_run(
    root: Path,
    task: str,
    algorithm: str,
    seed: int,
    curve: list[float],
    lr_scale: float = 10.0,
    training: tuple[list[float], list[int]] | None = None,
) -> None:
    spec = TASKS[task]
    steps = [spec.eval_every * index for index in range(len(curve))]
    returns = [spec.random_score + value * (spec.max_score - spec.random_score) for value in curve]
    record = {
        "task": task,
        "algorithm": algorithm,
        "seed": seed,
        "learning_rate_scale": lr_scale,
        "learning_rate": 1e-3 * lr_scale,
        "timesteps": steps[-1],
        "evaluations": [
            {"step": step, "eval_return": value, "eval_returns": [value], "train_return": None, "train": {}}
            for step, value in zip(steps, returns, strict=True)
        ],
        "engine": "batched",
    }
    if training is not None:
        record["train_episode_returns"], record["train_episode_steps"] = training
    path = root / task.replace("/", "_") / f"{algorithm}_lr{lr_scale:g}_seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def test_the_events_of_hand_made_runs(tmp_path: Path) -> None:
    for seed, curve in enumerate([TRANSIENT, LASTING, TWO_DROPS, NEVER, STEADY, SHORT_DIP]):
        write_run(tmp_path, SHARED, "ppo", seed, curve)
    runs = load_runs(tmp_path).set_index("seed")
    assert runs["reached_competence"].tolist() == [True, True, True, False, True, True]
    assert runs["competence_step"].tolist()[:3] == [30_000, 30_000, 30_000]
    assert runs["any_drop"].tolist() == [True, True, True, False, False, False]
    assert runs["collapsed"].tolist() == [False, True, True, False, False, False]
    assert runs["transient_drops"].tolist() == [1, 0, 1, 0, 0, 0]
    assert runs["drops"].tolist() == [1, 1, 2, 0, 0, 0]
    # after the competence evaluation (index 3) come 27 evaluations: 3 below 0.5 in the transient drop,
    # 20 in the lasting collapse, 3 + 18 in the run with both, 2 in the short dip, none in the steady run
    instability = runs["instability"].tolist()
    assert instability[:3] == pytest.approx([3 / 27, 20 / 27, 21 / 27])
    assert math.isnan(instability[3])
    assert instability[4:] == pytest.approx([0.0, 2 / 27])
    # none of these files has training episodes
    assert not runs["has_training_returns"].any() and runs["train_instability"].isna().all()


def test_the_training_return_series_averages_the_episodes_of_each_window_and_carries_the_last() -> None:
    series = training_return_series(
        eval_steps=[0, 10, 20, 30, 40], episode_steps=[5, 10, 10, 25, 41], episode_returns=[1, 2, 3, 4, 5], window=10
    )
    # t=0: nothing ended yet; t=10: (0, 10] holds the episodes ending at 5, 10, 10; t=20: none, carried;
    # t=30: the one ending at 25; t=40: none in (30, 40] (41 is after it), carried
    assert np.isnan(series[0])
    np.testing.assert_allclose(series[1:], [2.0, 2.0, 4.0, 4.0])


def test_a_training_series_is_classified_from_its_first_defined_value() -> None:
    steps = [10 * index for index in range(9)]
    outcome, instability = classify_series(
        steps, [np.nan, np.nan, 0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.3], CollapseDefinition()
    )
    assert outcome is not None
    assert outcome.competence_step == 40 and outcome.collapsed and outcome.collapse_step == 50
    assert instability == pytest.approx(1.0)  # the 4 evaluations after step 40 are all below 0.5
    nothing, fraction = classify_series(steps, [np.nan] * 9, CollapseDefinition())
    assert nothing is None and math.isnan(fraction)


def test_run_files_with_training_episodes_give_the_training_endpoints(tmp_path: Path) -> None:
    # CartPole's random policy scores 23.7, its reference 500: returns of 500 score 1, of 23.7 score 0
    ends = [10_000 * index - 5 for index in range(1, 31)]  # one episode per window, ending just before each t
    good_then_bad = [500.0] * 10 + [23.7] * 20
    write_run(tmp_path, SHARED, "ppo", 0, STEADY, training=(good_then_bad, ends))
    write_run(tmp_path, SHARED, "ppo", 1, STEADY)
    runs = load_runs(tmp_path).set_index("seed")
    assert runs.loc[0, "has_training_returns"] and not runs.loc[1, "has_training_returns"]
    # the series starts at t = 10k (index 1): competent at 30k, below 0.2 from 110k on, never recovers
    assert runs.loc[0, "train_reached_competence"] and runs.loc[0, "train_collapsed"]
    assert runs.loc[0, "train_drops"] == 1 and runs.loc[0, "train_instability"] == pytest.approx(20 / 27)
    assert not runs.loc[0, "any_drop"]  # the greedy evaluations did not see it


def candidates(*rows: tuple[str, float, int, int, int]) -> pd.DataFrame:
    """PPO runs for ``pilot_table``: (task, learning rate, runs, competent runs, of which with a drop)."""
    records = []
    for task, learning_rate, runs, competent, events in rows:
        for seed in range(runs):
            records.append(
                {
                    "task": task,
                    "learning_rate": learning_rate,
                    "algorithm": "ppo",
                    "seed": seed,
                    "reached_competence": seed < competent,
                    "any_drop": seed < events,
                    "collapsed": seed < events // 2,
                    "drops": int(seed < events),
                }
            )
    return pd.DataFrame(records)


def chosen(selection) -> list[tuple[str, float]]:
    return list(zip(selection.chosen["task"], selection.chosen["learning_rate"], strict=True))


def test_a_candidate_qualifies_with_80_percent_competent_and_a_rate_from_30_to_70_percent() -> None:
    table = pilot_table(
        candidates(
            (SHARED, 0.003, 20, 16, 5),  # 16/20 competent, rate 5/16 = 0.31: qualifies
            (SHARED, 0.01, 20, 15, 6),  # 15/20 competent: does not
            (SHARED, 0.03, 20, 20, 6),  # rate 0.30 exactly: qualifies
            (SEPARATE, 0.003, 20, 20, 14),  # rate 0.70 exactly: qualifies
            (SEPARATE, 0.01, 20, 20, 15),  # 0.75: does not
            (SEPARATE, 0.03, 20, 0, 0),  # never competent: does not
        )
    ).set_index(["task", "learning_rate"])
    assert table["qualifies"].tolist() == [True, False, False, True, False, True]  # sorted by task, then lr
    assert table.loc[(SEPARATE, 0.003), "rate_low"] == pytest.approx(0.4810, abs=1e-4)  # Wilson, 14 of 20
    assert table.loc[(SHARED, 0.003), "trunk"] == "shared" and table.loc[(SEPARATE, 0.01), "trunk"] == "separate"


def test_the_three_closest_to_half_are_chosen_one_per_environment_trunk_and_learning_rate() -> None:
    table = pilot_table(
        candidates(
            (SHARED, 0.01, 20, 20, 10),  # 0.50
            (SHARED + "-zoo", 0.01, 20, 20, 10),  # 0.50, same slot, loses on the name
            (SEPARATE, 0.01, 20, 20, 9),  # 0.45, 20 competent
            (SEPARATE + "-zoo", 0.003, 20, 18, 8),  # 8/18 = 0.444: farther than 0.45
            ("pilot/Acrobot-v1-shared", 0.01, 20, 20, 11),  # 0.55, ties with 0.45 at 20 competent: name decides
            ("pilot/Acrobot-v1-separate", 0.03, 20, 19, 10),  # 10/19 = 0.526
        )
    )
    selection = select_settings(table)
    assert chosen(selection) == [(SHARED, 0.01), ("pilot/Acrobot-v1-separate", 0.03), ("pilot/Acrobot-v1-shared", 0.01)]
    assert selection.enough and selection.replaced is None


def test_more_competent_runs_break_a_tie_in_distance() -> None:
    table = pilot_table(
        candidates(
            ("pilot/Acrobot-v1-shared", 0.01, 20, 16, 8),  # 0.5 with 16 competent
            (SHARED, 0.01, 20, 18, 9),  # 0.5 with 18 competent: first
            (SEPARATE, 0.01, 20, 20, 8),  # 0.4
        )
    )
    assert chosen(select_settings(table))[:2] == [(SHARED, 0.01), ("pilot/Acrobot-v1-shared", 0.01)]


def test_a_separate_trunk_replaces_the_third_when_none_of_the_three_has_one() -> None:
    table = pilot_table(
        candidates(
            (SHARED, 0.003, 20, 20, 10),
            (SHARED, 0.01, 20, 20, 11),
            ("pilot/Acrobot-v1-shared", 0.01, 20, 20, 9),
            (SHARED, 0.03, 20, 20, 12),
            (SEPARATE, 0.01, 20, 20, 13),  # 0.65: the separate candidate closest to 0.5
            (SEPARATE, 0.03, 20, 20, 14),  # 0.70
        )
    )
    selection = select_settings(table)
    # by distance: 0.50, then 0.45 and 0.55 tie (20 competent runs each; Acrobot's name first), 0.60, ...
    assert chosen(selection) == [(SHARED, 0.003), ("pilot/Acrobot-v1-shared", 0.01), (SEPARATE, 0.01)]
    assert selection.replaced == f"{SHARED} at lr 0.01"
    assert selection.enough


def test_too_few_qualifying_settings_ask_for_the_larger_learning_rate() -> None:
    runs = candidates(
        (SHARED, 0.01, 20, 20, 10),
        (SHARED + "-zoo", 0.01, 20, 20, 9),  # same slot as the first
        (SEPARATE, 0.01, 20, 20, 2),  # 0.1: does not qualify
        ("pilot/Acrobot-v1-shared", 0.01, 20, 20, 1),
    )
    table = pilot_table(runs)
    selection = select_settings(table)
    assert chosen(selection) == [(SHARED, 0.01)]
    assert not selection.enough and len(selection.missing) == 2
    assert missing_kinds(selection) == [("Acrobot-v1", "shared"), ("CartPole-v1", "separate")]
    report = format_pilot_report(selection, Path("benchmark_runs/pilot_extension"))
    assert (
        "--lr-scales 50" in report
        and "--tasks pilot/Acrobot-v1-shared pilot/CartPole-v1-separate --algorithms" in report
    )
    assert "only 1 of the 3" in report and "MlpPolicy" in report
    # after lr 5e-2 ran for the separate trunk only, the rule asks for Acrobot's shared trunk alone
    larger = select_settings(pilot_table(pd.concat([runs, candidates((SEPARATE, 0.05, 20, 20, 1))])))
    report = format_pilot_report(larger)
    assert "lr 5e-2 has run for CartPole-v1 (separate)" in report
    assert "--tasks pilot/Acrobot-v1-shared --algorithms ppo --lr-scales 50" in report


def test_kept_settings_stay_chosen_and_the_rule_fills_the_rest() -> None:
    table = pilot_table(
        candidates(
            (SHARED, 0.01, 20, 20, 8),  # 0.40, kept
            ("pilot/Acrobot-v1-separate", 0.01, 20, 20, 6),  # 0.30, kept
            (SHARED, 0.02, 20, 20, 10),  # 0.50: third
            ("pilot/Acrobot-v1-separate-zoo", 0.02, 20, 20, 11),  # 0.55: would have come second without keep
            (SHARED + "-zoo", 0.01, 20, 20, 10),  # 0.50, but the first kept setting's slot
        )
    )
    assert chosen(select_settings(table))[:2] == [(SHARED, 0.02), (SHARED + "-zoo", 0.01)]
    kept = [(SHARED, 0.01), ("pilot/Acrobot-v1-separate", 0.01)]
    selection = select_settings(table, keep=kept)
    assert chosen(selection) == [*kept, (SHARED, 0.02)] and selection.enough
    # nothing else qualifies: the kept two, and the rule says the third is missing
    alone = select_settings(table[table["learning_rate"] == 0.01].iloc[:2], keep=kept)
    assert chosen(alone) == kept and alone.missing == ["only 2 of the 3 settings qualify"]
    with pytest.raises(ValueError, match=r"keep: pilot/CartPole-v1-shared at lr 0\.03 is not a qualifying"):
        select_settings(table, keep=[(SHARED, 0.03)])
    with pytest.raises(ValueError, match="slot already kept"):
        select_settings(table, keep=[(SHARED, 0.01), (SHARED + "-zoo", 0.01)])


def test_the_pooled_test_and_odds_ratio_agree_with_statsmodels() -> None:
    arm_events, arm_runs = [4, 9, 12], [40, 45, 50]
    base_events, base_runs = [15, 20, 31], [42, 48, 50]
    result = mantel_haenszel(arm_events, arm_runs, base_events, base_runs)
    tables = np.array(
        [[[a, n - a], [c, m - c]] for a, n, c, m in zip(arm_events, arm_runs, base_events, base_runs, strict=True)]
    ).transpose(1, 2, 0)
    reference = StratifiedTable(tables)
    test = reference.test_null_odds(correction=False)
    assert result.strata == 3
    assert result.statistic == pytest.approx(test.statistic, rel=1e-10)
    assert result.p_value == pytest.approx(test.pvalue, rel=1e-8)
    assert result.odds_ratio == pytest.approx(reference.oddsratio_pooled, rel=1e-12)
    assert (result.low, result.high) == pytest.approx(reference.oddsratio_pooled_confint(), rel=1e-10)
    assert result.odds_ratio < 1


def test_a_stratum_without_runs_in_a_group_is_left_out() -> None:
    full = mantel_haenszel([3, 7, 5], [20, 20, 0], [9, 12, 4], [20, 20, 20])
    dropped = mantel_haenszel([3, 7], [20, 20], [9, 12], [20, 20])
    assert full.strata == 2 and full.p_value == pytest.approx(dropped.p_value)
    assert full.odds_ratio == pytest.approx(dropped.odds_ratio)
    none = mantel_haenszel([0, 0], [10, 10], [4, 6], [10, 10])
    assert none.odds_ratio == 0.0 and math.isnan(none.low)


def test_holm_runs_over_the_whole_family_with_missing_arms_at_one() -> None:
    adjusted = holm_over_family([0.01, math.nan, 0.02], family_size=5)
    assert adjusted[0] == pytest.approx(0.05) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.08)


@pytest.mark.parametrize(
    "counts",
    [
        (3, 40, 10, 45),
        (12, 44, 21, 47),
        (1, 50, 1, 50),
        (40, 40, 20, 45),
        (45, 45, 3, 49),
        (0, 40, 10, 45),
        (5, 40, 0, 45),
    ],
)
def test_the_rate_ratio_interval_is_koopmans_score_interval(counts: tuple[int, int, int, int]) -> None:
    arm_events, arm_runs, base_events, base_runs = counts
    ratio, low, high = rate_ratio_interval(*counts)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = confint_proportions_2indep(*counts, method="score", compare="ratio", correction=False)
    assert ratio == (pytest.approx((arm_events / arm_runs) / (base_events / base_runs)) if base_events else math.inf)
    assert low == pytest.approx(max(float(expected[0]), 0.0), abs=1e-9, rel=1e-7)
    assert high == pytest.approx(float(expected[1]), rel=1e-7)


def test_the_rate_ratio_interval_at_the_boundaries() -> None:
    # every run of both groups has the event: the score statistic is sqrt(n1 (1 - θ) / θ) below 1, so the lower
    # bound solves (1 - θ) / θ = z² / n1
    z = 1.959963984540054
    ratio, low, high = rate_ratio_interval(50, 50, 50, 50)
    assert ratio == 1.0 and low == pytest.approx(1 / (1 + z**2 / 50)) and high == pytest.approx(1 + z**2 / 50)
    # swapping the groups inverts the interval
    _, low, high = rate_ratio_interval(10, 45, 3, 40)
    _, swapped_low, swapped_high = rate_ratio_interval(3, 40, 10, 45)
    assert (low, high) == (pytest.approx(1 / swapped_high), pytest.approx(1 / swapped_low))
    assert all(math.isnan(value) for value in rate_ratio_interval(0, 50, 0, 50))
    assert all(math.isnan(value) for value in rate_ratio_interval(3, 0, 4, 50))


def test_the_instability_test_is_scipys_mann_whitney_on_the_same_runs() -> None:
    values = {
        "ppo": [0.4, 0.5, 0.6, 0.7, 0.65],
        "logit": [0.1, 0.2, 0.3],
        "peaked": [0.0, 0.0, 0.45, 0.5, 0.9, np.nan],  # NaN: competence at the last evaluation, left out
    }
    runs = pd.DataFrame(
        [
            {"task": SHARED, "learning_rate": 0.01, "algorithm": name, "seed": seed, "instability": value}
            for name, series in values.items()
            for seed, value in enumerate(series)
        ]
    )
    table = instability_table(runs, arms=("logit", "peaked"), reps=50).set_index("algorithm")
    # every logit value is below every ppo value: U = 0, exact two-sided p = 2 / C(8, 3)
    assert table.loc["logit", "u_statistic"] == 0 and table.loc["logit", "p_mann_whitney"] == pytest.approx(2 / 56)
    peaked = mannwhitneyu([0.0, 0.0, 0.45, 0.5, 0.9], values["ppo"], alternative="two-sided")
    assert table.loc["peaked", "p_mann_whitney"] == pytest.approx(peaked.pvalue)
    assert table.loc["peaked", "runs"] == 5
    assert table.loc["logit", "p_holm"] == pytest.approx(min(1.0, 2 * 2 / 56))
    assert table.loc["ppo", "iqm"] == pytest.approx(np.mean([0.5, 0.6, 0.65]))  # the middle half of 5 runs


def test_the_pilot_and_extension_commands_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pilot = tmp_path / "pilot"
    for seed in range(10):  # 10 competent, 5 with a drop: rate 0.5
        write_run(pilot, SHARED, "ppo", 1000 + seed, TRANSIENT if seed < 5 else STEADY)
    assert main(["pilot", "--runs", str(pilot), "--output", str(tmp_path / "pilot_out")]) == 0
    printed = capsys.readouterr().out
    assert "pilot/CartPole-v1-shared at lr 0.01" in printed and "only 1 of the 3" in printed
    assert pd.read_csv(tmp_path / "pilot_out" / "pilot.csv")["rate"].tolist() == [0.5]
    keep = ["pilot", "--runs", str(pilot), "--output", str(tmp_path / "pilot_out"), "--keep"]
    assert main([*keep, f"{SHARED}:0.01"]) == 0 and "only 1 of the 3" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"keep: pilot/CartPole-v1-shared at lr 0\.02 is not a qualifying"):
        main([*keep, f"{SHARED}:0.02"])
    with pytest.raises(SystemExit):  # not TASK:LR
        main([*keep, "CartPole-v1"])
    capsys.readouterr()

    study = tmp_path / "study"
    ends = [10_000 * index - 5 for index in range(1, 31)]
    for task in (SHARED, SEPARATE):
        for seed in range(6):  # PPO: 4 of 6 with a drop; logit: 1 of 5 competent runs, and one never competent
            write_run(study, task, "ppo", seed, [TRANSIENT, LASTING, TWO_DROPS, TRANSIENT, STEADY, STEADY][seed])
            logit = [STEADY, STEADY, SHORT_DIP, STEADY, LASTING, NEVER][seed]
            write_run(study, task, "logit", seed, logit, training=([500.0] * 30, ends) if seed < 3 else None)
    sb3 = tmp_path / "sb3"
    for seed, curve in enumerate([STEADY, STEADY, STEADY, LASTING]):  # the SB3 runner's PPO, shared trunk only
        write_run(sb3, SHARED, "ppo", seed, curve)
    output = tmp_path / "out"
    command = ["extension", "--runs", str(study), "--sb3-runs", str(sb3), "--output", str(output)]
    assert main([*command, "--bootstrap-reps", "50"]) == 0
    printed = capsys.readouterr().out
    assert "LogitPPO: no detectable difference at this sample size (any drop in 2/10 competent runs against " in (
        printed
    )
    assert "PPO's 8/12" in printed and "Incomplete" in printed
    assert "18 runs without training-episode records" in printed  # 3 logit runs per setting have them
    per_setting = pd.read_csv(output / "extension_any_drop.csv").set_index(["task", "algorithm"])
    assert per_setting.loc[(SHARED, "logit"), ["competent", "events"]].tolist() == [5, 1]
    fisher = scipy_fisher_exact([[1, 4], [4, 2]]).pvalue
    assert per_setting.loc[(SHARED, "logit"), "p_fisher"] == pytest.approx(fisher)
    assert per_setting.loc[(SHARED, "logit"), "p_holm"] == pytest.approx(1.0)  # × 15 arms
    collapse = pd.read_csv(output / "extension_collapse.csv").set_index(["task", "algorithm"])
    assert collapse.loc[(SEPARATE, "ppo"), "events"] == 2 and collapse.loc[(SEPARATE, "logit"), "events"] == 1
    drops = pd.read_csv(output / "extension_drops.csv").set_index(["task", "algorithm"])
    assert drops.loc[(SHARED, "ppo"), "distribution"] == "0: 2, 1: 3, 2: 1"
    pooled = pd.read_csv(output / "extension_pooled.csv")
    assert pooled["settings"].tolist() == [2] and pooled["odds_ratio"].iloc[0] < 1
    training = pd.read_csv(output / "extension_training_any_drop.csv")
    assert training["competent"].tolist() == [3, 3] and training["events"].tolist() == [0, 0]
    effects = pd.read_csv(output / "extension_effects.csv").set_index(["task", "algorithm"])
    logit = effects.loc[(SHARED, "logit")]
    assert logit[["competent", "any_drop"]].tolist() == [5, 1] and logit["p_holm"] == pytest.approx(1.0)
    assert logit["rate_ratio"] == pytest.approx((1 / 5) / (4 / 6))
    assert (logit["rate_ratio_low"], logit["rate_ratio_high"]) == pytest.approx(rate_ratio_interval(1, 5, 4, 6)[1:])
    instability = pd.read_csv(output / "extension_instability.csv").set_index(["task", "algorithm"])
    assert logit["instability_iqm"] == pytest.approx(instability.loc[(SHARED, "logit"), "iqm"])
    assert logit["reading"] == "no detectable difference at this sample size"
    assert math.isnan(effects.loc[(SHARED, "ppo"), "rate_ratio"]) and effects.loc[(SHARED, "ppo"), "rate"] == 4 / 6
    assert effects["final_score_iqm"].notna().all()
    cross_check = pd.read_csv(output / "extension_cross_check.csv")
    assert cross_check["task"].tolist() == [SHARED]
    assert cross_check[["engine_any_drop", "engine_competent", "sb3_any_drop", "sb3_competent"]].values.tolist() == [
        [4, 6, 1, 4]
    ]
    assert cross_check["p_any_drop"].iloc[0] == pytest.approx(scipy_fisher_exact([[4, 2], [1, 3]]).pvalue)
    for name in ("extension.md", "extension_forest.png", "extension_rate_differences.png", "extension_runs.csv"):
        assert (output / name).stat().st_size > 0


def test_the_runs_may_come_from_several_grids_and_task_folders_each_run_once(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for seed in range(3):
        write_run(first, SHARED, "ppo", seed, STEADY)
        write_run(first, SEPARATE, "ppo", seed, STEADY)
        write_run(second, SEPARATE, "ppo", seed, LASTING)
    # the first grid's shared-trunk setting with the second's separate one
    runs = load_runs([first / SHARED.replace("/", "_"), second])
    assert sorted(runs["task"]) == [SEPARATE] * 3 + [SHARED] * 3
    assert runs.loc[runs["task"] == SEPARATE, "collapsed"].all()
    assert not runs.loc[runs["task"] == SHARED, "collapsed"].any()
    assert set(runs["machine"]) == {"unrecorded"}  # these files have no "machine"
    with pytest.raises(ValueError, match=r"pilot/CartPole-v1-separate ppo lr 0\.01 seed 0 is in both"):
        load_runs([first, second])
    with pytest.raises(SystemExit, match="is in both"):
        main(["extension", "--runs", str(first), str(second), "--output", str(tmp_path / "out")])


def test_the_report_names_the_machines_of_its_runs(tmp_path: Path) -> None:
    for seed in range(4):
        write_run(tmp_path / "runs", SHARED, "ppo", seed, STEADY)
    path = tmp_path / "runs" / SHARED.replace("/", "_") / "ppo_lr10_seed0.json"
    record = json.loads(path.read_text())
    record["machine"] = machine()
    path.write_text(json.dumps(record))
    runs = load_runs(tmp_path / "runs")
    label = machine_label(machine())
    assert sorted(runs["machine"]) == sorted([label, "unrecorded", "unrecorded", "unrecorded"])
    assert th.backends.cpu.get_cpu_capability() in label
    write_extension_report(tmp_path / "runs", tmp_path / "out", bootstrap_reps=20)
    report = (tmp_path / "out" / "extension.md").read_text()
    assert f"- {SHARED}: unrecorded (3); {label} (1)" in report


def test_the_sensitivity_reruns_against_the_studys_ppo_and_option(tmp_path: Path) -> None:
    study, reruns = tmp_path / "study", tmp_path / "reruns"
    for seed in range(12):
        write_run(study, SEPARATE, "ppo", seed, TRANSIENT if seed < 10 else STEADY)  # 10/12 drop
        write_run(study, SEPARATE, "kl", seed, STEADY)  # 0/12
        write_run(study, SEPARATE, "logit", seed, TRANSIENT)  # not rerun: not in the table
        write_run(reruns, SEPARATE, "kl@kl_penalty_target=0.02", seed, TRANSIENT if seed < 9 else STEADY)  # 9/12
        write_run(reruns, SEPARATE, "kl@kl_penalty_target=0.005", seed, TRANSIENT if seed < 1 else STEADY)  # 1/12
        write_run(study, SHARED, "ppo", seed, STEADY)  # a setting the reruns did not run: not in the table
        write_run(study, SHARED, "kl", seed, STEADY)
    output = tmp_path / "out"
    # the command plans the study's 50 seeds: 12 are not yet an answer
    command = ["sensitivity", "--runs", str(reruns), "--study", str(study), "--output", str(output)]
    assert main([*command, "--bootstrap-reps", "20"]) == 0
    assert pd.read_csv(output / "sensitivity_verdicts.csv")["verdict"].tolist() == [
        "incomplete: kl_penalty_target=0.005 has 12 runs; kl_penalty_target=0.02 has 12 runs"
    ]
    write_sensitivity_report([reruns], [study], output, bootstrap_reps=20, planned_seeds=12)
    table = pd.read_csv(output / "sensitivity.csv")
    assert set(table["task"]) == {SEPARATE}
    assert table["algorithm"].tolist() == [
        "ppo",
        "kl",
        "kl@kl_penalty_target=0.005",
        "kl@kl_penalty_target=0.02",
    ]
    assert table["any_drop"].tolist() == [10, 0, 1, 9] and table["competent"].tolist() == [12] * 4
    p_low = scipy_fisher_exact([[1, 11], [10, 2]]).pvalue
    p_high = scipy_fisher_exact([[9, 3], [10, 2]]).pvalue
    # Holm over the 16 planned neighbour arms, those not run at p = 1; the option at its constant keeps the
    # study's family (no Holm here)
    assert table["p_holm"].iloc[2:].tolist() == pytest.approx([16 * p_low, 1.0])
    assert math.isnan(table["p_holm"].iloc[1])
    assert table["reading"].iloc[2:].tolist() == ["reduces", "no detectable difference at this sample size"]
    assert table["rate_ratio"].iloc[2] == pytest.approx((1 / 12) / (10 / 12))
    assert p_high > 0.05 and 16 * p_low < 0.05
    verdicts = pd.read_csv(output / "sensitivity_verdicts.csv")
    assert verdicts["verdict"].tolist() == [
        "not at kl_penalty_target=0.02 (no detectable difference at this sample size)"
    ]
    report = (output / "sensitivity.md").read_text()
    assert "- pilot/CartPole-v1-separate, kl: not at kl_penalty_target=0.02" in report
    assert "Holm over the 16 neighbour arms planned" in report
    # every neighbour reducing: the reduction holds
    for seed in range(12):
        write_run(reruns, SEPARATE, "kl@kl_penalty_target=0.02", seed, STEADY)
    verdicts = write_sensitivity_report([reruns], [study], output, bootstrap_reps=20, planned_seeds=12)
    assert verdicts["verdict"].tolist() == ["holds"]
    with pytest.raises(SystemExit, match="no neighbour arm"):
        main(["sensitivity", "--runs", str(study), "--study", str(study), "--output", str(output)])


def test_compare_runs_finds_the_step_where_two_grids_runs_of_a_seed_part(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for seed in range(3):
        write_run(first, SEPARATE, "ppo", seed, STEADY)
    write_run(second, SEPARATE, "ppo", 0, STEADY)  # the same run
    write_run(second, SEPARATE, "ppo", 1, [*STEADY[:5], 0.5, *STEADY[6:]])  # parts at the 6th evaluation
    write_run(second, SEPARATE, "ppo", 2, STEADY[:10])  # the same over the 10 evaluations it has
    write_run(second, SEPARATE, "ppo", 3, STEADY)  # not in the first grid
    table = compare_runs(first, second / SEPARATE.replace("/", "_")).set_index("seed")
    assert table.index.tolist() == [0, 1, 2]
    assert table["common_evaluations"].tolist() == [31, 31, 10]
    assert table["parts_at_step"].isna().tolist() == [True, False, True]
    assert table.loc[1, "parts_at_step"] == 5 * TASKS[SEPARATE].eval_every
    assert (table["first_machine"] == "unrecorded").all()
    assert main(["compare-runs", str(first), str(second), "--output", str(tmp_path / "table.csv")]) == 0
    step = 5 * TASKS[SEPARATE].eval_every
    assert capsys.readouterr().out == (
        f"{SEPARATE} ppo: 3 runs in both, 2 the same at every evaluation step they share (10 or more); "
        f"1 part, at step (runs) {step}: 1\n"
    )
    assert len(pd.read_csv(tmp_path / "table.csv")) == 3
    assert format_comparison(compare_runs(first, tmp_path / "nothing")) == "no run is in both grids\n"


def test_the_sensitivity_family_is_the_documented_command_s_arms() -> None:
    document = (Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md").read_text()
    (command,) = [
        line
        for line in document.splitlines()
        if line.startswith("python -m sb3_ppo_variants.benchmark collapse")
        and "--runs benchmark_runs/extension_sensitivity --tasks pilot/" in line
    ]
    assert tuple(command.split("--algorithms ")[1].split()) == SENSITIVITY_ARMS


def test_the_third_shape_is_sb3s_own_ppo_rollout_and_competes_for_the_same_slots() -> None:
    import inspect

    from stable_baselines3 import PPO

    from sb3_ppo_variants.benchmark.extension_study import task_kind

    defaults = {name: parameter.default for name, parameter in inspect.signature(PPO).parameters.items()}
    for environment in ("CartPole-v1", "Acrobot-v1"):
        for trunk in ("separate", "shared"):
            task = TASKS[f"pilot/{environment}-{trunk}-2048"]
            assert task.n_envs == 1
            for name in ("n_steps", "batch_size", "n_epochs"):
                assert task.hyperparameters[name] == defaults[name]
            # the pilot's task in its first shape, but for the shape
            other = TASKS[f"pilot/{environment}-{trunk}"]
            assert {**other.hyperparameters, **SB3_ROLLOUT_SHAPE} == task.hyperparameters
            assert (task.timesteps, task.eval_every, task.threshold) == (
                other.timesteps,
                other.eval_every,
                other.threshold,
            )
            kind = task_kind(f"pilot/{environment}-{trunk}-2048")
            assert kind == {**task_kind(f"pilot/{environment}-{trunk}"), "rollout": "1×2048, minibatch 64, 10 epochs"}
    # a qualifying candidate in the new shape at a kept setting's slot cannot be the third
    table = pilot_table(
        candidates(
            (SHARED, 0.01, 20, 20, 8),
            (SHARED + "-2048", 0.01, 20, 20, 10),
            ("pilot/Acrobot-v1-shared-2048", 0.02, 20, 20, 7),
        )
    )
    assert chosen(select_settings(table, keep=[(SHARED, 0.01)])) == [
        (SHARED, 0.01),
        ("pilot/Acrobot-v1-shared-2048", 0.02),
    ]
