"""Running a benchmark grid: in this process, in worker processes, failures, resume and atomic files.

Budgets are tiny (CartPole, 512 steps): these tests check scheduling and files, not learning.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest
from run_records import benchmark, without_timing

from sb3_ppo_variants.benchmark.executors import InProcess, ProcessPool, describe, execute
from sb3_ppo_variants.benchmark.progress import GridProgress
from sb3_ppo_variants.benchmark.runs import Run, grid, run_grid, write_run
from sb3_ppo_variants.benchmark.tasks import TASKS

TINY = ["--tasks", "CartPole-v1", "--algorithms", "ppo", "--lr-scales", "1", "--timesteps", "512", "--threads", "1"]


def read_runs(directory: Path) -> dict[str, Any]:
    return {str(path.relative_to(directory)): json.loads(path.read_text()) for path in directory.rglob("*.json")}


def square(item: int) -> dict[str, Any]:
    if item == 3:
        raise ValueError("three is not allowed")
    return {"item": item, "square": item * item, "pid": os.getpid()}


class Recorder:
    """A listener that keeps the items in the order they were started."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def started(self, item: Any) -> None:
        self.items.append(item)


@pytest.mark.parametrize("in_process", [True, False], ids=["in_process", "process_pool"])
def test_execute_returns_every_outcome_and_goes_on_after_an_error(in_process: bool) -> None:
    recorder = Recorder()
    executor = InProcess() if in_process else ProcessPool(2)
    outcomes = list(execute(executor, square, [1, 2, 3, 4, 5], recorder))

    assert sorted(outcome.item for outcome in outcomes) == [1, 2, 3, 4, 5]
    results = {outcome.item: outcome.result for outcome in outcomes if outcome.result is not None}
    assert {item: result["square"] for item, result in results.items()} == {1: 1, 2: 4, 4: 16, 5: 25}
    (failed,) = [outcome for outcome in outcomes if outcome.error is not None]
    assert failed.item == 3 and failed.result is None
    assert describe(failed.error) == "ValueError: three is not allowed"
    assert recorder.items == [1, 2, 3, 4, 5]
    pids = {result["pid"] for result in results.values()}
    if in_process:
        assert pids == {os.getpid()}
    else:
        assert os.getpid() not in pids and 1 <= len(pids) <= 2


def test_execute_keeps_at_most_capacity_items_in_flight() -> None:
    class Counting(InProcess):
        most = 0

        def wait(self, handles: list[Any]) -> list[Any]:
            Counting.most = max(Counting.most, len(handles))
            return super().wait(handles)

    outcomes = list(execute(Counting(), square, [1, 2, 4]))
    assert [outcome.item for outcome in outcomes] == [1, 2, 4]
    assert Counting.most == 1


def test_progress_counts_and_estimates_the_time_left(capsys: pytest.CaptureFixture[str]) -> None:
    progress = GridProgress(4)
    assert progress.seconds_left() is None
    for item in range(3):
        progress.started(item)
    assert (progress.running, progress.to_do) == (3, 1)
    progress.finished("first")
    progress.finished("second", failed=True)
    assert (progress.done, progress.failed, progress.running, progress.to_do) == (1, 1, 1, 1)
    assert progress.seconds_left() is not None and progress.seconds_left() >= 0.0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("first [1/4: 1 done, 2 running, 0 failed, 1 to do; ")
    assert lines[1].startswith("second [2/4: 1 done, 1 running, 1 failed, 1 to do; ")
    assert lines[1].endswith(" left]")


def test_grid_puts_seeds_outermost() -> None:
    runs = grid(["CartPole-v1"], ["ppo", "logit"], [0, 1], [1.0, 3.0])
    assert [run.seed for run in runs] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert runs[1] == Run("CartPole-v1", "logit", 1.0, 0)
    assert str(runs[1]) == "CartPole-v1 logit lr×1 seed 0"


def test_write_run_replaces_whole_files_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = Run("MinAtar/Breakout-v1", "ppo", 3.0, 2).path(tmp_path)
    write_run(path, {"a": 1})
    write_run(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [entry.name for entry in path.parent.iterdir()] == ["ppo_lr3_seed2.json"]


def test_a_failing_run_is_reported_and_the_rest_of_the_grid_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = dataclasses.replace(TASKS["CartPole-v1"], env_id="NoSuchEnvironment-v0")
    monkeypatch.setitem(TASKS, "Broken-v0", broken)

    failures = run_grid(tmp_path, ["CartPole-v1", "Broken-v0"], ["ppo"], [0], [1.0, 3.0], timesteps=256)

    assert [(str(run), error.split(":")[0]) for run, error in failures] == [
        ("Broken-v0 ppo lr×1 seed 0", "NameNotFound"),
        ("Broken-v0 ppo lr×3 seed 0", "NameNotFound"),
    ]
    assert sorted(read_runs(tmp_path)) == ["CartPole-v1/ppo_lr1_seed0.json", "CartPole-v1/ppo_lr3_seed0.json"]
    captured = capsys.readouterr()
    assert "2 of 4 runs failed:\n  Broken-v0 ppo lr×1 seed 0: NameNotFound" in captured.err
    assert "Traceback" in captured.err
    assert "Broken-v0 ppo lr×3 seed 0: FAILED, NameNotFound" in captured.out


def test_the_command_exits_non_zero_after_a_failed_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sb3_ppo_variants.benchmark.__main__ import main

    monkeypatch.setitem(TASKS, "Broken-v0", dataclasses.replace(TASKS["CartPole-v1"], env_id="NoSuchEnvironment-v0"))
    runs = tmp_path / "runs"
    arguments = ["collapse", "--runs", str(runs), "--seeds", "0", "--workers", "1", *TINY]
    assert main(arguments) == 0
    assert main([*arguments, "--tasks", "Broken-v0"]) == 1
    assert sorted(read_runs(runs)) == ["CartPole-v1/ppo_lr1_seed0.json"]


@pytest.mark.slow
def test_workers_give_the_same_files_as_one_process_and_resume(tmp_path: Path) -> None:
    seeds = ["--seeds", "0", "1", "2"]
    alone = benchmark("collapse", "--runs", str(tmp_path / "alone"), "--workers", "1", *seeds, *TINY, cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr
    assert "3 of 3 runs to do (0 on disk) in this process" in alone.stdout

    pooled = tmp_path / "pooled"
    first = benchmark("collapse", "--runs", str(pooled), "--workers", "2", "--seeds", "1", *TINY, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = benchmark("collapse", "--runs", str(pooled), "--workers", "2", "--progress", *seeds, *TINY, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "2 of 3 runs to do (1 on disk) in 2 worker processes, 1 torch thread(s) each" in again.stdout
    assert "seed 1:" not in again.stdout  # resumed: the run on disk is not run again
    assert "3/3" not in again.stdout and "2/2: 2 done, 0 running, 0 failed, 0 to do]" in again.stdout
    assert "run/s" in again.stderr or "s/run" in again.stderr  # the bar

    expected = read_runs(tmp_path / "alone")
    got = read_runs(pooled)
    assert sorted(got) == sorted(expected) == [f"CartPole-v1/ppo_lr1_seed{seed}.json" for seed in (0, 1, 2)]
    for name, record in expected.items():
        assert without_timing(got[name]) == without_timing(record), name
        assert got[name]["torch_threads"] == 1
    assert not list(pooled.rglob("*.tmp"))


def test_without_timing_drops_only_wall_clock_fields() -> None:
    record = {"wall_seconds": 1.0, "seed": 0, "evaluations": [{"step": 0, "train_seconds": 0.1, "eval_return": 9.0}]}
    assert without_timing(record) == {"seed": 0, "evaluations": [{"step": 0, "eval_return": 9.0}]}
