"""The benchmark command runs end to end on a tiny budget and writes its tables and plots.

These are not benchmarks: the budgets are far too small to say anything about learning.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("pandas")

from run_records import benchmark


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as file:
        return list(csv.DictReader(file))


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n"), path
    assert len(data) > 10_000, f"{path} is only {len(data)} bytes"


@pytest.mark.slow
def test_learn_collapse_and_report_write_tables_and_plots(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    tiny = ["--algorithms", "ppo", "logit", "--seeds", "0", "1", "--runs", str(runs)]
    sweep = benchmark(
        "collapse", "--tasks", "CartPole-v1", "--lr-scales", "1", "3", "--timesteps", "512", *tiny, cwd=tmp_path
    )
    assert sweep.returncode == 0, sweep.stderr
    learn = benchmark("learn", "--tasks", "Acrobot-v1", "--timesteps", "4096", *tiny, cwd=tmp_path)
    assert learn.returncode == 0, learn.stderr
    assert len(list(runs.glob("*/*.json"))) == 2 * 2 * 2 + 2 * 2

    run = json.loads((runs / "CartPole-v1" / "logit_lr3_seed1.json").read_text())
    assert run["learning_rate"] == pytest.approx(3e-3)
    assert run["evaluations"][0]["step"] == 0
    assert run["evaluations"][-1]["step"] == run["timesteps"] >= 512
    assert len(run["evaluations"][-1]["eval_returns"]) == 5

    # finished runs are skipped, so an interrupted sweep resumes
    again = benchmark("learn", "--tasks", "Acrobot-v1", "--timesteps", "4096", *tiny, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "seed" not in again.stdout

    output = tmp_path / "report"
    report = benchmark("report", "--runs", str(runs), "--output", str(output), "--bootstrap-reps", "200", cwd=tmp_path)
    assert report.returncode == 0, report.stderr

    scores = read_csv(output / "final_scores.csv")
    assert {(row["task"], row["algorithm"]) for row in scores} == {
        (task, algorithm) for task in ("CartPole-v1", "Acrobot-v1") for algorithm in ("ppo", "logit")
    }
    for row in scores:
        assert row["runs"] == "2"
        assert float(row["ci_low"]) <= float(row["iqm_final_return"]) <= float(row["ci_high"])
    collapse = read_csv(output / "collapse.csv")
    assert sorted({float(row["learning_rate_scale"]) for row in collapse}) == [1.0, 3.0]
    assert all(0.0 <= float(row["collapsed_fraction"]) <= 1.0 for row in collapse)
    assert "| CartPole-v1 | ppo |" in (output / "tables.md").read_text()
    assert json.loads((output / "provenance.json").read_text())["packages"]["stable-baselines3"]
    for name in ("learning_curves", "final_scores", "collapse", "collapse_curves"):
        assert_png(output / f"{name}.png")


@pytest.mark.slow
def test_cost_writes_ratios_and_plot(tmp_path: Path) -> None:
    output = tmp_path / "cost"
    result = benchmark(
        "cost",
        "--output",
        str(output),
        "--setting",
        "mlp",
        "--algorithms",
        "variant",
        "--repeats",
        "1",
        "--fps-repeats",
        "1",
        "--fps-timesteps",
        "64",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    rows = read_csv(output / "cost.csv")
    assert {(row["measure"], row["algorithm"]) for row in rows} == {("train", "variant"), ("learn", "variant")}
    for row in rows:
        assert float(row["median_ratio"]) > 0.0
        assert row["threads"] == "1"
    raw = read_csv(output / "cost_raw.csv")
    assert all(
        row["reference"] == "ppo" and float(row["reference_seconds"]) > 0.0 and float(row["variant_seconds"]) > 0.0
        for row in raw
    )
    assert_png(output / "cost.png")
