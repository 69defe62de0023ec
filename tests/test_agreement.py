"""``agreement``: two engines' runs of one grid compared cell by cell, on hand-made evaluation curves."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from run_records import write_pilot_run
from scipy import stats as scipy_stats

from sb3_ppo_variants.benchmark.__main__ import main
from sb3_ppo_variants.benchmark.agreement import agreement_table, engine_outcomes

GOOD = [500.0] * 8
COLLAPSING = [500.0] * 4 + [9.0] * 4  # competent at the 3rd evaluation, then below 0.2 for good
TRANSIENT = [500.0] * 3 + [9.0] * 3 + [500.0] * 3  # a drop, then competence regained
NEVER = [20.0] * 8


def _grid(tmp_path: Path) -> dict[str, Path]:
    sb3, batched = tmp_path / "sb3", tmp_path / "batched"
    # ppo: sb3 has 5 lasting collapses and 1 transient drop in 8; batched has no drop in 8
    for seed, curve in enumerate([COLLAPSING] * 5 + [TRANSIENT] + [GOOD] * 2):
        write_pilot_run(sb3, "ppo", seed, curve)
    for seed in range(8):
        write_pilot_run(batched, "ppo", seed, GOOD)
    # logit: the same curves in both engines, one never competent
    for directory in (sb3, batched):
        for seed, curve in enumerate([GOOD] * 4 + [NEVER]):
            write_pilot_run(directory, "logit", seed, curve)
    write_pilot_run(sb3, "spo", 0, GOOD)  # an algorithm only one engine ran is left out
    return {"sb3": sb3, "batched": batched}


def test_the_engines_are_compared_cell_by_cell_with_independent_tests(tmp_path: Path) -> None:
    table = agreement_table(engine_outcomes(_grid(tmp_path)), reps=50).set_index("algorithm")
    assert sorted(table.index) == ["logit", "ppo"]
    ppo = table.loc["ppo"]
    assert (ppo["sb3_runs"], ppo["sb3_competent"], ppo["sb3_collapsed"], ppo["sb3_any_drop"]) == (8, 8, 5, 6)
    assert (ppo["batched_competent"], ppo["batched_collapsed"], ppo["batched_any_drop"]) == (8, 0, 0)
    assert ppo["sb3_seeds"] == "0–7"
    assert ppo["collapsed_fisher_p"] == pytest.approx(scipy_stats.fisher_exact([[5, 3], [0, 8]]).pvalue)
    assert ppo["any_drop_fisher_p"] == pytest.approx(scipy_stats.fisher_exact([[6, 2], [0, 8]]).pvalue)
    sb3_finals = [(9.0 - 23.7) / (500 - 23.7)] * 5 + [1.0] * 3
    expected = scipy_stats.mannwhitneyu(sb3_finals, [1.0] * 8, alternative="two-sided").pvalue
    assert ppo["final_mann_whitney_p"] == pytest.approx(expected)
    assert ppo["any_drop_fisher_p"] < 0.05 and bool(ppo["engines_differ"])
    low, high = scipy_stats.binomtest(6, 8).proportion_ci(method="wilson")
    assert (ppo["sb3_any_drop_low"], ppo["sb3_any_drop_high"]) == pytest.approx((low, high))

    logit = table.loc["logit"]
    assert (logit["sb3_runs"], logit["sb3_competent"], logit["batched_competent"]) == (5, 4, 4)
    assert logit["competent_fisher_p"] == logit["collapsed_fisher_p"] == 1.0
    assert logit["sb3_final_iqm"] == logit["batched_final_iqm"]
    assert not logit["engines_differ"]


def test_the_command_writes_the_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directories = _grid(tmp_path)
    runs = [f"{engine}={directory}" for engine, directory in directories.items()]
    output = tmp_path / "out"
    assert main(["agreement", "--runs", *runs, "--output", str(output), "--bootstrap-reps", "50"]) == 0
    table = pd.read_csv(output / "agreement.csv")
    assert sorted(table["algorithm"]) == ["logit", "ppo"]
    printed = capsys.readouterr().out
    assert "| pilot/CartPole-v1-shared | 0.01 | ppo | sb3 | 0–7 | 8/8 [0.68, 1.00] | 5/8" in printed
    assert printed == (output / "agreement.md").read_text()
    with pytest.raises(SystemExit, match="ENGINE=DIR"):
        main(["agreement", "--runs", str(directories["sb3"]), "b=x", "--output", str(output)])
