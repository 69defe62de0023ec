"""``learn`` and ``collapse`` with ``--engine batched``: the run files, resume, and the arms refused up front.

Budgets are tiny (512 steps): these tests check the files and the grid, not learning.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch as th
from run_records import ROOT, benchmark, without_timing

from sb3_ppo_variants import VariantPPO
from sb3_ppo_variants.benchmark.__main__ import main
from sb3_ppo_variants.benchmark.algorithms import ALGORITHMS, Algorithm
from sb3_ppo_variants.benchmark.batched_runs import RefusedArms, batched_arms, split_groups
from sb3_ppo_variants.benchmark.provenance import machine
from sb3_ppo_variants.benchmark.runs import train_and_evaluate
from sb3_ppo_variants.benchmark.tasks import TASKS

TASK = "CartPole-v1"
GRID = ["--tasks", TASK, "--algorithms", "ppo", "logit", "--lr-scales", "10", "--timesteps", "512"]


def _runs(directory: Path) -> dict[str, Any]:
    return {path.name: json.loads(path.read_text()) for path in sorted(directory.rglob("*.json"))}


def _assert_same_run(first: dict[str, Any], second: dict[str, Any]) -> None:
    """The same run trained in two different groups: the same record apart from timing, and training statistics
    that agree to float rounding (the update's statistics are means over the group's stacked tensors)."""

    def statistics(record: dict[str, Any]) -> list[dict[str, float]]:
        return [evaluation.pop("train") for evaluation in record["evaluations"]]

    first, second = without_timing(first), without_timing(second)
    first_statistics, second_statistics = statistics(first), statistics(second)
    assert first == second
    for one, two in zip(first_statistics, second_statistics, strict=True):
        assert one.keys() == two.keys()
        for name, value in one.items():
            assert value == pytest.approx(two[name], rel=1e-3, abs=1e-5), name


def test_a_batched_collapse_grid_writes_runs_that_study_reads_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    th.set_num_threads(1)
    command = ["collapse", "--engine", "batched", *GRID, "--seeds", "0", "1", "2", "--runs", "runs"]
    first = benchmark(*command, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    # two groups, one per algorithm, trained side by side in two worker processes
    assert "6 of 6 runs to do (0 on disk) in 2 batched group(s), 2 at a time" in first.stdout
    runs = _runs(tmp_path / "runs" / TASK)
    assert sorted(runs) == sorted(f"{a}_lr10_seed{s}.json" for a in ("ppo", "logit") for s in (0, 1, 2))
    record = runs["logit_lr10_seed2.json"]
    assert (record["engine"], record["task"], record["algorithm"], record["seed"]) == ("batched", TASK, "logit", 2)
    assert record["compiled"] is False
    assert record["learning_rate"] == pytest.approx(1e-2) and record["timesteps"] == 512
    assert [evaluation["step"] for evaluation in record["evaluations"]] == [0, 512]
    returns, ends = record["train_episode_returns"], record["train_episode_steps"]
    assert len(returns) > 10 and sum(returns) <= 512 and all(value >= 1 for value in returns)
    # CartPole pays 1 per step: each agent's 8 environments' episodes fit in the steps they ended by
    assert len(ends) == len(returns) and ends == sorted(ends) and 8 <= ends[0] <= 512 and ends[-1] <= 512
    # the agents of a group are trained from their own seeds
    assert runs["ppo_lr10_seed0.json"]["train_episode_returns"] != runs["ppo_lr10_seed1.json"]["train_episode_returns"]

    output = tmp_path / "study"
    assert main(["study", "--runs", str(tmp_path / "runs"), "--output", str(output), "--bootstrap-reps", "20"]) == 0
    table = pd.read_csv(output / "collapse_study.csv").set_index("algorithm")
    assert table.loc["ppo", "runs"] == table.loc["logit", "runs"] == 3

    # resume: a finished run is kept as it is, a missing one is trained again, alone, to the same record
    kept = tmp_path / "runs" / TASK / "ppo_lr10_seed0.json"
    kept.write_text(json.dumps({**runs["ppo_lr10_seed0.json"], "kept": True}))
    missing = tmp_path / "runs" / TASK / "logit_lr10_seed1.json"
    missing.unlink()
    monkeypatch.chdir(tmp_path)
    assert main(command) == 0
    assert "1 of 6 runs to do (5 on disk) in 1 batched group(s), 1 at a time" in capsys.readouterr().out
    assert json.loads(kept.read_text())["kept"] is True
    _assert_same_run(json.loads(missing.read_text()), runs["logit_lr10_seed1.json"])


def test_groups_are_halved_until_every_worker_has_one() -> None:
    assert split_groups([[1, 2, 3, 4, 5]], 2) == [[1, 2], [3, 4, 5]]
    assert split_groups([[1, 2, 3, 4], [5]], 4) == [[1], [2], [3, 4], [5]]
    assert split_groups([[1], [2]], 4) == [[1], [2]]  # nothing left to split
    assert split_groups([[1, 2], [3, 4], [5, 6]], 2) == [[1, 2], [3, 4], [5, 6]]


def test_groups_are_cut_into_near_equal_pieces_of_at_most_the_group_size() -> None:
    assert split_groups([list(range(10))], 1, group_size=4) == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    assert split_groups([[1, 2], [3, 4, 5]], 1, group_size=2) == [[1, 2], [3], [4, 5]]
    assert split_groups([list(range(8))], 3, group_size=8) == [[0, 1], [2, 3], [4, 5, 6, 7]]


def test_arms_that_differ_only_in_their_loss_share_a_group_and_write_the_files_of_their_own(tmp_path: Path) -> None:
    command = ["collapse", "--engine", "batched", "--tasks", TASK, "--lr-scales", "10", "--workers", "1"]
    command += ["--algorithms", "ppo", "kl", "adam_equal_betas", "espo", "--seeds", "3", "--timesteps", "512"]
    together = benchmark(*command, "--runs", "together", cwd=tmp_path)
    assert together.returncode == 0, together.stderr
    # Adam's betas and ε are the group's: adam_equal_betas trains apart from the three others
    assert "4 of 4 runs to do (0 on disk) in 2 batched group(s), 1 at a time" in together.stdout
    assert f"{TASK} ppo+kl+espo, 3 run(s)" in together.stdout
    alone = benchmark(*command, "--group-size", "1", "--runs", "alone", cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr
    assert "in 4 batched group(s)" in alone.stdout
    one, two = _runs(tmp_path / "together"), _runs(tmp_path / "alone")
    assert len(one) == 4 and sorted(one) == sorted(two)
    for name in one:
        _assert_same_run(one[name], two[name])
    assert benchmark(*command, "--group-size", "0", "--runs", "zero", cwd=tmp_path).returncode == 2


def test_one_group_split_over_two_workers_writes_the_files_of_one_process(tmp_path: Path) -> None:
    command = ["collapse", "--engine", "batched", "--tasks", TASK, "--algorithms", "ppo", "--lr-scales", "3", "10"]
    command += ["--seeds", "4", "--timesteps", "256"]
    together = benchmark(*command, "--workers", "1", "--runs", "together", cwd=tmp_path)
    assert together.returncode == 0, together.stderr
    assert "in 1 batched group(s), 1 at a time" in together.stdout
    split = benchmark(*command, "--workers", "2", "--runs", "split", cwd=tmp_path)
    assert split.returncode == 0, split.stderr
    assert "in 2 batched group(s), 2 at a time" in split.stdout
    one, two = _runs(tmp_path / "together"), _runs(tmp_path / "split")
    assert sorted(one) == sorted(two) == ["ppo_lr10_seed4.json", "ppo_lr3_seed4.json"]
    for name in one:
        _assert_same_run(one[name], two[name])


def test_a_device_is_the_batched_engines_and_must_be_here(tmp_path: Path) -> None:
    command = ["collapse", *GRID, "--seeds", "0", "--runs", str(tmp_path)]
    with pytest.raises(SystemExit, match="--device: device 'nonsense' is not available here"):
        main([*command, "--engine", "batched", "--device", "nonsense"])
    with pytest.raises(SystemExit, match="--device is the batched engine's"):
        main([*command, "--device", "cuda"])
    assert not list(tmp_path.iterdir())


def test_compile_is_the_batched_engines_and_must_work_here(tmp_path: Path, monkeypatch) -> None:
    command = ["collapse", *GRID, "--seeds", "0", "--runs", str(tmp_path), "--compile"]
    with pytest.raises(SystemExit, match="--compile is the batched engine's"):
        main(command)

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(th, "compile", broken)
    with pytest.raises(SystemExit, match=r"--compile: compile_step: torch\.compile does not work here"):
        main([*command, "--engine", "batched"])
    assert not list(tmp_path.iterdir())


def _children(pid: int) -> set[int]:
    listing = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return {int(line) for line in listing.split()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.mark.parametrize("engine", ["batched", "sb3"])
def test_sigterm_stops_the_grids_workers_and_says_how_to_resume(tmp_path: Path, engine: str) -> None:
    """A scheduler's stop (SIGTERM) is handled as Ctrl-C: no worker process is left running."""
    command = [sys.executable, "-m", "sb3_ppo_variants.benchmark", "collapse", "--engine", engine, "--tasks", TASK]
    command += ["--algorithms", "ppo", "--lr-scales", "1", "--seeds", "0", "1", "--workers", "2"]
    command += ["--timesteps", "1000000", "--runs", str(tmp_path / "runs")]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    driver = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        workers: set[int] = set()
        while len(workers) < 3 and time.monotonic() < deadline:  # two workers and the resource tracker
            time.sleep(0.5)
            workers = _children(driver.pid)
        assert len(workers) >= 3, "the grid did not start its workers"
        time.sleep(3)  # the workers are training
        driver.send_signal(signal.SIGTERM)
        _, stderr = driver.communicate(timeout=60)
    finally:
        driver.kill()
    assert driver.returncode == 128 + signal.SIGTERM, stderr
    assert "run the same command again to resume" in stderr
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in workers if _alive(pid)]
    for pid in left:  # so that a failure leaves nothing running either
        os.kill(pid, signal.SIGKILL)
    assert not left
    assert not list((tmp_path / "runs").rglob("*.json"))


def test_a_batched_run_has_the_fields_of_an_sb3_run(tmp_path: Path) -> None:
    th.set_num_threads(1)
    command = ["learn", "--engine", "batched", "--tasks", TASK, "--algorithms", "ppo", "--lr-scales", "1"]
    assert main([*command, "--timesteps", "512", "--seeds", "0", "--runs", str(tmp_path)]) == 0
    batched = _runs(tmp_path)["ppo_lr1_seed0.json"]
    sb3 = train_and_evaluate(TASK, "ppo", seed=0, timesteps=512)
    assert (batched["engine"], sb3["engine"]) == ("batched", "sb3")
    assert set(batched) == set(sb3)
    # the machine that decided the run's rounding, the same for both here
    assert batched["machine"] == sb3["machine"] == machine()
    assert sb3["machine"]["torch_cpu_capability"] == th.backends.cpu.get_cpu_capability()
    assert sb3["machine"]["torch"] == th.__version__
    for key, value in sb3.items():
        assert type(batched[key]) is type(value), key
    for batched_evaluation, sb3_evaluation in zip(batched["evaluations"], sb3["evaluations"], strict=True):
        assert batched_evaluation["step"] == sb3_evaluation["step"]
        assert set(batched_evaluation) == set(sb3_evaluation)
        for key, value in sb3_evaluation.items():
            if value is not None:
                assert type(batched_evaluation[key]) is type(value), key
        # SB3's training statistics of the last update, a subset of its keys (none before the first update)
        assert bool(batched_evaluation["train"]) == bool(sb3_evaluation["train"])
        assert set(batched_evaluation["train"]) <= set(sb3_evaluation["train"])


def test_arms_that_cannot_run_batched_are_refused_with_their_reason_before_any_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cartpole = TASKS["CartPole-v1"]
    after_step = {"ratio_change_limit": 0.2, "ratio_change_stop": "after_step"}
    monkeypatch.setitem(ALGORITHMS, "espo_after", Algorithm("espo_after", VariantPPO, after_step))
    monkeypatch.setitem(
        TASKS,
        "test/narrow",
        dataclasses.replace(
            cartpole, hyperparameters={**cartpole.hyperparameters, "policy_kwargs": {"net_arch": [32]}}
        ),
    )
    monkeypatch.setitem(
        TASKS,
        "test/relu",
        dataclasses.replace(
            cartpole, hyperparameters={**cartpole.hyperparameters, "policy_kwargs": {"activation_fn": th.nn.ReLU}}
        ),
    )
    with pytest.raises(RefusedArms) as refusal:
        batched_arms(["CartPole-v1", "Acrobot-v1", "test/narrow", "test/relu"], ["ppo", "espo_after"])
    reasons = refusal.value.reasons
    assert set(reasons) == {
        ("CartPole-v1", "espo_after"),
        ("Acrobot-v1", "ppo"),
        ("Acrobot-v1", "espo_after"),
        ("test/narrow", "ppo"),
        ("test/narrow", "espo_after"),
        ("test/relu", "ppo"),
        ("test/relu", "espo_after"),
    }
    assert not batched_arms([TASK], ["ppo"])[TASK, "ppo"].shared_trunk
    assert batched_arms(["pilot/Acrobot-v1-shared"], ["pfo"])["pilot/Acrobot-v1-shared", "pfo"].shared_trunk
    assert "ESPO" in reasons["CartPole-v1", "espo_after"]
    assert "VecNormalize" in reasons["Acrobot-v1", "ppo"]
    assert "64-64" in reasons["test/narrow", "ppo"] and "ReLU" in reasons["test/relu", "ppo"]

    # the command names each refused arm and runs nothing, not even the arms that could run
    command = ["learn", "--engine", "batched", "--tasks", "CartPole-v1", "Acrobot-v1", "--algorithms", "ppo"]
    with pytest.raises(SystemExit, match=r"ppo on Acrobot-v1: the task normalises observations") as exit_:
        main([*command, "--timesteps", "256", "--seeds", "0", "--runs", str(tmp_path)])
    assert "ppo on CartPole-v1" not in str(exit_.value)
    assert not list(tmp_path.rglob("*.json"))
    with pytest.raises(SystemExit, match=r"unknown task\(s\) \['Pong'\]"):
        main(["collapse", "--engine", "batched", "--tasks", "Pong", "--runs", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"--algorithms: unknown algorithm 'nope'"):
        main(["collapse", "--engine", "batched", "--algorithms", "nope", "--runs", str(tmp_path)])
