"""``python -m sb3_ppo_variants.benchmark diagnose``: the drop it finds, the models it compares, the run it observes."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from sb3_ppo_variants.benchmark import runs
from sb3_ppo_variants.benchmark.__main__ import main
from sb3_ppo_variants.benchmark.collapse_study import CollapseDefinition, classify_run, first_drop
from sb3_ppo_variants.benchmark.diagnose import diagnose_setting, format_diagnosis
from sb3_ppo_variants.benchmark.extension_study import drop_count
from sb3_ppo_variants.benchmark.tasks import TASKS

TASK = "pilot/CartPole-v1-shared"


def test_the_first_drop_is_the_first_of_patience_evaluations_below_low_after_competence():
    definition = CollapseDefinition()
    # competent once the mean of 3 evaluations reaches 0.8 (index 3); below 0.2 three times from index 5
    scores = [0.0, 0.9, 0.9, 0.9, 0.95, 0.1, 0.05, 0.1, 0.9, 0.9, 0.9, 0.1, 0.1, 0.1]
    assert first_drop(scores, definition) == (3, 5)
    assert first_drop([0.0, 0.1, 0.0, 0.1, 0.0, 0.1], definition) is None  # never competent
    assert first_drop([0.0, 0.9, 0.9, 0.9, 0.1, 0.1, 0.9], definition) is None  # two below, not three
    # on any series, a first drop exists exactly when the study counts a drop
    generator = np.random.default_rng(0)
    for _ in range(300):
        series = np.where(generator.random(30) < 0.7, generator.uniform(0.8, 1.0, 30), generator.uniform(0, 0.2, 30))
        outcome = classify_run(list(range(30)), series, definition)
        assert (first_drop(series, definition) is not None) == (drop_count(outcome) > 0)


@pytest.fixture
def frequent_evaluations(monkeypatch):
    """The task evaluated after every update (1,024 steps), for runs of 8 updates of 2 epochs."""
    task = TASKS[TASK]
    hyperparameters = {**task.hyperparameters, "n_epochs": 2}
    monkeypatch.setitem(
        TASKS, TASK, dataclasses.replace(task, eval_every=1024, timesteps=8192, hyperparameters=hyperparameters)
    )


def test_a_drop_is_diagnosed_between_the_last_good_and_the_first_bad_model(tmp_path, monkeypatch, frequent_evaluations):
    # the evaluations are scripted by step (a drop at 5,120 steps); the models, probe and diagnosis are real
    scripted = {0: 20.0, 5120: 9.0, 6144: 9.0, 7168: 9.0}
    monkeypatch.setattr(runs, "evaluate", lambda model, task, seed: [scripted.get(model.num_timesteps, 500.0)] * 5)
    result = diagnose_setting(TASK, ["ppo", "logit"], 10, [3], tmp_path)
    diagnosed = result["diagnosed"]
    assert (diagnosed["seed"], diagnosed["competence_step"], diagnosed["good_step"], diagnosed["bad_step"]) == (
        3,
        3072,
        4096,
        5120,
    )
    assert diagnosed["competence_window_step"] == 1024  # the first of the 3 evaluations whose mean is 0.8
    folder = tmp_path / "ppo" / "seed3"
    for name in ("run.json", "health.csv", "probe.npz", "good.zip", "bad.zip", "drop.json", "layers.csv"):
        assert (folder / name).is_file(), name
    assert not (folder / "checkpoints").exists()
    assert json.loads((folder / "drop.json").read_text())["bad_step"] == 5120
    assert diagnosed["summary"]["n_states"] == 2000
    # the shared trunk's gradients were measured after every rollout
    assert np.isfinite(diagnosed["grad_ratio_before"]) and np.isfinite(diagnosed["grad_ratio_during"])
    other = result["others"]["logit"]
    assert other["dropped"] and other["drop_step"] == 5120 and other["score_at_good_step"] == pytest.approx(1.0)
    assert json.loads((tmp_path / "diagnosis.json").read_text())["diagnosed"]["good_step"] == 4096
    text = format_diagnosis(result)
    assert "Seed 3" in text and "| logit | yes | 5,120 |" in text


def test_the_good_model_may_precede_the_evaluation_that_declares_competence(
    tmp_path, monkeypatch, frequent_evaluations
):
    # competence is the mean of 3 evaluations: it is declared at 3,072 steps, whose own score is 0.58; the last
    # evaluation scoring 0.8 before the drop at 4,096 is the one at 2,048 (as in an Acrobot run at lr 1e-2)
    scripted = {0: 9.0, 1024: 500.0, 2048: 500.0, 3072: 300.0}
    monkeypatch.setattr(runs, "evaluate", lambda model, task, seed: [scripted.get(model.num_timesteps, 9.0)] * 5)
    diagnosed = diagnose_setting(TASK, ["ppo"], 10, [3], tmp_path)["diagnosed"]
    steps = ("competence_step", "competence_window_step", "good_step", "bad_step")
    assert tuple(diagnosed[name] for name in steps) == (3072, 1024, 2048, 4096)
    assert diagnosed["good_score"] == pytest.approx(1.0) and np.isfinite(diagnosed["grad_ratio_before"])


def test_the_observed_run_is_the_sb3_engines_run_and_no_drop_exits_1(tmp_path, capsys):
    code = main(
        [
            "diagnose",
            "--task",
            TASK,
            "--lr-scale",
            "10",
            "--seeds",
            "7",
            "--timesteps",
            "2048",
            "--output",
            str(tmp_path),
        ]
    )
    assert code == 1 and "No run dropped (seeds tried: 7)" in capsys.readouterr().out
    observed = json.loads((tmp_path / "ppo" / "seed7" / "run.json").read_text())
    plain = runs.train_and_evaluate(TASK, "ppo", 7, 10, 2048)
    for name in ("evaluations", "train_episode_returns", "train_episode_steps", "timesteps"):
        if name == "evaluations":
            for mine, theirs in zip(observed[name], plain[name], strict=True):
                assert {key: mine[key] for key in ("step", "eval_returns", "train")} == {
                    key: theirs[key] for key in ("step", "eval_returns", "train")
                }
        else:
            assert observed[name] == plain[name], name
