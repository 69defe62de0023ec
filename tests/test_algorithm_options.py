"""An algorithm with options on the benchmark's command line, ``NAME@KEY=VALUE,KEY=VALUE``: an α or ε sweep, or
the study's sensitivity reruns, without a registry entry per value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch as th

from sb3_ppo_variants import VariantPPO
from sb3_ppo_variants.benchmark.__main__ import main
from sb3_ppo_variants.benchmark.algorithms import ALGORITHMS, algorithm, parse_algorithms
from sb3_ppo_variants.benchmark.plots import label
from sb3_ppo_variants.benchmark.runs import check_arms, make_training_env
from sb3_ppo_variants.benchmark.tasks import TASKS

TASK = "CartPole-v1"


def test_options_go_on_top_of_the_algorithms_own() -> None:
    swept = algorithm("rollback@peaked_policy_loss=0.2")
    assert swept.name == "rollback@peaked_policy_loss=0.2" and swept.algorithm_class is VariantPPO
    assert swept.options == {"peaked_policy_loss": 0.2} and ALGORITHMS["rollback"].options == {
        "peaked_policy_loss": 0.3
    }
    # Python literals, else strings; several options
    mixed = algorithm("espo@value_grad_rescaling=per_state,target_kl=None,ratio_change_limit=0.1")
    assert mixed.options == {"ratio_change_limit": 0.1, "value_grad_rescaling": "per_state", "target_kl": None}
    assert (
        algorithm("adam_equal_betas@n_epochs=4").options["policy_kwargs"]
        == ALGORITHMS["adam_equal_betas"].options["policy_kwargs"]
    )
    assert algorithm("ppo") is ALGORITHMS["ppo"]
    assert label("rollback@peaked_policy_loss=0.2") == "VariantPPO α = 0.3 (peaked_policy_loss=0.2)"


def test_an_option_overrides_the_tasks_hyperparameter() -> None:
    task = TASKS[TASK]
    assert task.hyperparameters["clip_range"] == 0.2
    env = make_training_env(task, seed=0)
    model = algorithm("ppo@clip_range=0.1").build(task.policy, env, seed=0, **task.algorithm_hyperparameters())
    env.close()
    assert model.clip_range(1.0) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nope@clip_range=0.1", r"unknown algorithm 'nope@clip_range=0\.1'; choose from \[.*'rollback'"),
        ("rollback@", r"give the options after '@' as KEY=VALUE"),
        ("rollback@0.2", r"'0\.2' is not KEY=VALUE"),
        ("rollback@peaked_policy_loss=0.2,peaked_policy_loss=0.4", "peaked_policy_loss is given twice"),
        ("ppo@learning_rate=0.1", r"learning_rate is set by the grid \(policy, env, learning_rate, seed"),
        ("ppo@alpha=0.2", r"PPO has no argument 'alpha'; it accepts .*clip_range, .*n_epochs"),
        ("logit@alpha=0.2", r"LogitPPO has no argument 'alpha'; it accepts .*delta_target_policy.*peaked_policy_loss"),
    ],
)
def test_a_malformed_name_is_refused_naming_the_argument(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        algorithm(name)
    with pytest.raises(SystemExit, match=f"--algorithms: .*{message}"):
        parse_algorithms([name], ())


def test_a_value_the_class_refuses_stops_the_command_before_any_run(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"rollback@peaked_policy_loss=-1 on CartPole-v1: .*peaked_policy_loss"):
        check_arms([TASK], ["ppo", "rollback@peaked_policy_loss=-1"])
    command = ["collapse", "--tasks", TASK, "--algorithms", "ppo", "rollback@peaked_policy_loss=-1"]
    for engine in ("sb3", "batched"):
        with pytest.raises(SystemExit, match=r"rollback@peaked_policy_loss=-1 on CartPole-v1: .*peaked_policy_loss"):
            main([*command, "--engine", engine, "--seeds", "0", "--timesteps", "256", "--runs", str(tmp_path)])
    assert not list(tmp_path.iterdir())


def test_a_sweep_trains_in_one_batched_group_and_its_default_value_repeats_the_registered_arm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    threads = th.get_num_threads()
    arms = ["rollback", "rollback@peaked_policy_loss=0.3", "rollback@peaked_policy_loss=0.1"]
    command = ["collapse", "--engine", "batched", "--tasks", TASK, "--lr-scales", "10", "--seeds", "5"]
    try:
        code = main([*command, "--timesteps", "1024", "--workers", "1", "--algorithms", *arms, "--runs", str(tmp_path)])
    finally:
        th.set_num_threads(threads)
    assert code == 0
    assert "3 of 3 runs to do (0 on disk) in 1 batched group(s)" in capsys.readouterr().out
    runs = {path.name: json.loads(path.read_text()) for path in (tmp_path / TASK).glob("*.json")}
    assert set(runs) == {f"{name}_lr10_seed5.json" for name in arms}
    same, registered = runs["rollback@peaked_policy_loss=0.3_lr10_seed5.json"], runs["rollback_lr10_seed5.json"]
    assert same["algorithm"] == "rollback@peaked_policy_loss=0.3"
    assert [e["eval_returns"] for e in same["evaluations"]] == [e["eval_returns"] for e in registered["evaluations"]]
    assert same["train_episode_returns"] == registered["train_episode_returns"]
    other = runs["rollback@peaked_policy_loss=0.1_lr10_seed5.json"]
    assert other["train_episode_returns"] != registered["train_episode_returns"]


def test_the_sb3_engine_trains_an_arm_with_options_under_its_name(tmp_path: Path) -> None:
    threads = th.get_num_threads()
    command = [
        "collapse",
        "--tasks",
        TASK,
        "--algorithms",
        "ppo@clip_range=0.1,n_epochs=2",
        "--seeds",
        "0",
        "--lr-scales",
        "1",
    ]
    try:
        code = main([*command, "--timesteps", "512", "--workers", "1", "--runs", str(tmp_path)])
    finally:
        th.set_num_threads(threads)
    assert code == 0
    (path,) = (tmp_path / TASK).glob("*.json")
    assert path.name == "ppo@clip_range=0.1,n_epochs=2_lr1_seed0.json"
    record = json.loads(path.read_text())
    assert record["algorithm"] == "ppo@clip_range=0.1,n_epochs=2" and record["engine"] == "sb3"
    # the task's clip range is overridden: the logged clip range of the update is 0.1
    assert record["evaluations"][-1]["train"]["clip_range"] == pytest.approx(0.1)
