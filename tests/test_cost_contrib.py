"""The cost benchmark's contrib settings: MaskableVariantPPO against MaskablePPO, RecurrentVariantPPO against
RecurrentPPO, each on one rollout that all of them collect identically (action masks and LSTM states included)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from sb3_ppo_variants.benchmark import cost, plots

# a few minibatches on a short rollout: the timings are meaningless, the code path is the benchmark's
SMALL = {
    "masked": dict(n_steps=64, batch_size=32, n_epochs=1),
    "recurrent": dict(n_steps=8, batch_size=32, n_epochs=1, policy_kwargs=dict(lstm_hidden_size=16)),
}
REFERENCES = {"masked": "maskable_ppo", "recurrent": "recurrent_ppo"}
OPTIONS_OFF = {"masked": "maskable_variant", "recurrent": "recurrent_variant"}


def small(name: str) -> cost.CostSetting:
    return dataclasses.replace(cost.COST_SETTINGS[name], hyperparameters=SMALL[name])


@pytest.mark.parametrize("name", ["masked", "recurrent"])
def test_train_is_timed_against_the_contrib_class_on_the_same_rollout(name: str) -> None:
    setting = small(name)
    algorithms = cost.algorithms_for(setting, None)
    assert algorithms[0] == OPTIONS_OFF[name]
    rows = cost.measure_train(setting, algorithms, repeats=1)  # raises if a rollout differs
    assert [row["algorithm"] for row in rows] == algorithms
    for row in rows:
        assert row["reference"] == REFERENCES[name]
        assert row["reference_seconds"] > 0.0 and row["variant_seconds"] > 0.0
    summary = cost.summarise(rows)
    assert {entry["reference"] for entry in summary} == {REFERENCES[name]}


@pytest.mark.parametrize(
    ("name", "extra"), [("masked", "action_masks"), ("recurrent", "hidden_states_pi"), ("recurrent", "cell_states_vf")]
)
def test_a_different_rollout_stops_the_measurement(name: str, extra: str) -> None:
    setting = small(name)
    names = [REFERENCES[name], OPTIONS_OFF[name]]
    models = {label: cost._build(label, setting, setting.make_env()) for label in names}
    for model in models.values():
        cost.collect_rollout(model)
    assert extra in cost.check_same_rollouts(models, names[0])
    changed = getattr(models[names[1]].rollout_buffer, extra)
    changed[0] = np.logical_not(changed[0]) if changed.dtype == bool else changed[0] + 1.0
    with pytest.raises(RuntimeError, match=f"different rollout from {names[0]} \\({extra}\\)"):
        cost.check_same_rollouts(models, names[0])


def test_a_setting_measures_only_its_own_algorithms() -> None:
    masked = cost.COST_SETTINGS["masked"]
    with pytest.raises(ValueError, match=r"'masked' times against MaskablePPO .*not \['variant'\]"):
        cost.algorithms_for(masked, ["variant"])
    with pytest.raises(ValueError, match=r"'mlp' times against PPO .*not \['maskable_variant'\]"):
        cost.algorithms_for(cost.COST_SETTINGS["mlp"], ["maskable_variant"])
    assert cost.algorithms_for(masked, ["maskable_ppo", "maskable_logit"]) == ["maskable_logit"]
    assert cost.algorithms_for(cost.COST_SETTINGS["mlp"], None)[0] == "variant"


def test_the_plot_names_each_setting_s_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figures = []
    monkeypatch.setattr(plots.plt, "close", figures.append)
    summary = [
        {
            "setting": setting,
            "measure": "train",
            "algorithm": algorithm,
            "reference": reference,
            "median_ratio": 1.01,
            "ratio_q25": 0.99,
            "ratio_q75": 1.02,
            "pairs": 3,
            "threads": 1,
        }
        for setting, algorithm, reference in [
            ("mlp", "variant", "ppo"),
            ("masked", "maskable_variant", "maskable_ppo"),
            ("recurrent", "recurrent_variant", "recurrent_ppo"),
        ]
    ]
    plots.plot_cost(summary, tmp_path / "cost.png")
    assert (tmp_path / "cost.png").read_bytes().startswith(b"\x89PNG")
    labels = [axis.get_xlabel() for axis in figures[0].axes if axis.get_xlabel()]
    assert [label.split(":")[0] for label in labels] == [
        "time ratio variant / PPO",
        "time ratio variant / MaskablePPO",
        "time ratio variant / RecurrentPPO",
    ]
