"""``python -m sb3_ppo_variants.benchmark diagnose``: one drop of a study setting, explained.

The first algorithm is trained by the SB3 engine, seed after seed, exactly as ``collapse`` trains it (the same run
and file), with two observers that change nothing in it: the model is saved at every evaluation
(``CheckpointAtEvaluations``), and ``collapse.HealthRecorder`` measures the representation and the gradients of
the policy and value losses on the layers both heads share after every rollout. The first seed whose evaluations
show a drop by the study's definition (``collapse_study.first_drop``) is diagnosed: the model of the last
evaluation before the drop that scored at least ``competent`` (the last good one) against the model of the drop's
first evaluation (the first bad one), on a probe batch that the good model collects by playing
(``collapse.diagnosis.diagnose``: which layer's change alone flips the policy). The other algorithms train the
same seed, so that the numbers before the drop can be compared where they did not drop.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

from sb3_ppo_variants.benchmark.collapse_study import CollapseDefinition, first_drop, normalised_score
from sb3_ppo_variants.benchmark.runs import EVAL_SEED_OFFSET, register_minatar, train_and_evaluate, write_run
from sb3_ppo_variants.benchmark.tasks import TASKS, Task
from sb3_ppo_variants.collapse.diagnosis import collect_probe, describe, diagnose, load_policy, save_probe
from sb3_ppo_variants.collapse.events import HEALTH_FILE
from sb3_ppo_variants.collapse.health_recorder import HealthRecorder

PROBE_STATES = 2000
"""States in the probe batch, as ``collapse collect-probe``'s default."""
CHECKPOINTS = "checkpoints"
"""A run's folder of models saved at every evaluation, removed once its drop is diagnosed."""
GRADIENT_RATIO = "grad_ratio_value_policy"
"""``HealthRecorder``'s ratio of the value loss's gradient norm (times ``vf_coef``) to the policy loss's, on the
parameters both heads share."""


class CheckpointAtEvaluations(BaseCallback):
    """Saves the model as ``<folder>/<step>.zip`` whenever the SB3 runner evaluates it (``PeriodicEvaluation``'s
    schedule: at the start, at each multiple of ``every`` steps and at the end).

    :param folder: where the models go.
    :param every: environment steps between evaluations (the task's ``eval_every``).
    """

    def __init__(self, folder: Path, every: int) -> None:
        super().__init__()
        self.folder, self.every = folder, every
        self.next_save = 0
        self.saved: list[int] = []

    def _save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.model.save(self.folder / f"{self.num_timesteps}.zip")
        self.saved.append(int(self.num_timesteps))
        self.next_save += self.every

    def _on_training_start(self) -> None:
        self._save()

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.next_save:
            self._save()
        return True

    def _on_training_end(self) -> None:
        if self.saved[-1] != self.num_timesteps:
            self._save()


def _window_median(health: pd.DataFrame, start: int, stop: int) -> float:
    """The median gradient ratio of the rollouts that ended in ``(start, stop]``; NaN without any (or without
    shared layers)."""
    if GRADIENT_RATIO not in health:
        return math.nan
    window = health[(health["timesteps"] > start) & (health["timesteps"] <= stop)][GRADIENT_RATIO].dropna()
    return float(window.median()) if len(window) else math.nan


def train_observed(
    task_name: str, algorithm: str, seed: int, learning_rate_scale: float, folder: Path, timesteps: int | None = None
) -> dict[str, Any]:
    """The SB3 engine's run, its models saved at every evaluation (``folder/checkpoints``) and its health after
    every rollout (``folder/health.csv``); writes ``folder/run.json``, the run's file."""
    task = TASKS[task_name]
    checkpoints = CheckpointAtEvaluations(folder / CHECKPOINTS, task.eval_every)
    record = train_and_evaluate(
        task_name,
        algorithm,
        seed,
        learning_rate_scale,
        timesteps,
        callbacks=[checkpoints, HealthRecorder(every=1, save_path=folder, seed=seed)],
    )
    write_run(folder / "run.json", record)
    return record


def _scores(record: dict[str, Any], task: Task) -> tuple[list[int], np.ndarray]:
    evaluations = record["evaluations"]
    steps = [int(evaluation["step"]) for evaluation in evaluations]
    returns = [evaluation["eval_return"] for evaluation in evaluations]
    return steps, normalised_score(returns, task.random_score, task.max_score)


def explain_drop(
    record: dict[str, Any], folder: Path, definition: CollapseDefinition, probe_seed: int
) -> dict[str, Any] | None:
    """The diagnosis of the run's first drop (``None`` without one), written to ``folder``: the diagnosis's own
    files (``Diagnosis.save``), ``drop.json`` (what this returns), the probe batch, and the good and bad models as
    ``good.zip`` and ``bad.zip``. Competence is declared on the moving average of ``definition.window``
    evaluations, so the evaluation that declares it may itself score below ``competent``: the good model is the
    last one from the first evaluation of that window on (``competence_window_step``) that scores at least
    ``competent``. The gradient ratios are medians over rollouts: from the start of that window to the last good
    evaluation, and from there to the drop's first evaluation."""
    task = TASKS[record["task"]]
    steps, scores = _scores(record, task)
    found = first_drop(scores, definition)
    if found is None:
        return None
    competence, drop = found
    window_start = max(competence - definition.window + 1, 0)
    good = max(index for index in range(window_start, drop) if scores[index] >= definition.competent)
    register_minatar()
    env = make_vec_env(task.env_id, n_envs=1, seed=EVAL_SEED_OFFSET + probe_seed, env_kwargs=task.env_kwargs)
    checkpoints = folder / CHECKPOINTS
    good_path, bad_path = checkpoints / f"{steps[good]}.zip", checkpoints / f"{steps[drop]}.zip"
    probe = collect_probe(load_policy(good_path), env, n_states=PROBE_STATES, seed=EVAL_SEED_OFFSET + probe_seed)
    env.close()
    save_probe(folder / "probe.npz", probe, env_id=task.env_id, model=str(good_path.name))
    between = [(step, checkpoints / f"{step}.zip") for step in steps[good : drop + 1]]
    diagnosis = diagnose(good_path, bad_path, probe, checkpoints=between)
    diagnosis.save(folder)
    health = pd.read_csv(folder / HEALTH_FILE)
    layers = diagnosis.layers.sort_values("relative_delta", ascending=False)
    result = {
        "seed": record["seed"],
        "competence_step": steps[competence],
        "competence_window_step": steps[window_start],
        "good_step": steps[good],
        "bad_step": steps[drop],
        "good_score": round(float(scores[good]), 4),
        "bad_score": round(float(scores[drop]), 4),
        "summary": {name: value for name, value in diagnosis.summary.items() if not isinstance(value, list)},
        "flipping_layers": diagnosis.flipping_layers,
        "largest_relative_change": str(layers["layer"].iloc[0]),
        "grad_ratio_before": _window_median(health, steps[window_start], steps[good]),
        "grad_ratio_during": _window_median(health, steps[good], steps[drop]),
        "description": describe(diagnosis),
    }
    (folder / "drop.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    shutil.copy(good_path, folder / "good.zip")
    shutil.copy(bad_path, folder / "bad.zip")
    return result


def compare_window(
    record: dict[str, Any], folder: Path, window: tuple[int, int, int], definition: CollapseDefinition
) -> dict[str, Any]:
    """For a run that is not the diagnosed one: its gradient ratios over the diagnosed run's windows (the start of
    its competence window to good, good to bad), its scores at those steps and whether it dropped at all."""
    task = TASKS[record["task"]]
    steps, scores = _scores(record, task)
    health = pd.read_csv(folder / HEALTH_FILE)
    competence, good, bad = window
    found = first_drop(scores, definition)
    return {
        "seed": record["seed"],
        "dropped": found is not None,
        "drop_step": None if found is None else steps[found[1]],
        "score_at_good_step": round(float(scores[steps.index(good)]), 4) if good in steps else None,
        "score_at_bad_step": round(float(scores[steps.index(bad)]), 4) if bad in steps else None,
        "grad_ratio_before": _window_median(health, competence, good),
        "grad_ratio_during": _window_median(health, good, bad),
    }


def diagnose_setting(
    task_name: str,
    algorithms: Sequence[str],
    learning_rate_scale: float,
    seeds: Sequence[int],
    output: Path,
    timesteps: int | None = None,
    definition: CollapseDefinition | None = None,
) -> dict[str, Any]:
    """Train ``algorithms[0]`` seed after seed until a run drops and diagnose that drop; train the other
    algorithms on the same seed and compare. Writes ``output/<algorithm>/`` and ``output/diagnosis.json``.

    :return: what ``output/diagnosis.json`` holds; ``diagnosed`` is ``None`` when no seed dropped.
    """
    definition = definition or CollapseDefinition()
    first, others = algorithms[0], list(algorithms[1:])
    result: dict[str, Any] = {
        "task": task_name,
        "learning_rate_scale": learning_rate_scale,
        "algorithm": first,
        "seeds_tried": [],
        "diagnosed": None,
        "others": {},
    }
    for seed in seeds:
        folder = output / first / f"seed{seed}"
        record = train_observed(task_name, first, seed, learning_rate_scale, folder, timesteps)
        result["seeds_tried"].append(seed)
        explained = explain_drop(record, folder, definition, seed)
        shutil.rmtree(folder / CHECKPOINTS)
        if explained is not None:
            result["diagnosed"] = explained
            break
    if result["diagnosed"] is not None:
        diagnosed = result["diagnosed"]
        window = (diagnosed["competence_window_step"], diagnosed["good_step"], diagnosed["bad_step"])
        for algorithm in others:
            folder = output / algorithm / f"seed{diagnosed['seed']}"
            record = train_observed(task_name, algorithm, diagnosed["seed"], learning_rate_scale, folder, timesteps)
            shutil.rmtree(folder / CHECKPOINTS)
            result["others"][algorithm] = compare_window(record, folder, window, definition)
    output.mkdir(parents=True, exist_ok=True)
    (output / "diagnosis.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    return result


def _ratio(value: float) -> str:
    return "— (no layer is shared)" if value is None or math.isnan(value) else f"{value:.3g}"


def format_diagnosis(result: dict[str, Any]) -> str:
    """``diagnose_setting``'s result as Markdown."""
    lines = [f"# A drop of {result['algorithm']} on {result['task']} at lr × {result['learning_rate_scale']:g}", ""]
    diagnosed = result["diagnosed"]
    if diagnosed is None:
        tried = ", ".join(str(seed) for seed in result["seeds_tried"])
        return "\n".join([*lines, f"No run dropped (seeds tried: {tried}); nothing to diagnose.", ""])
    summary = diagnosed["summary"]
    flipping = ", ".join(diagnosed["flipping_layers"]) or "no single layer"
    lines += [
        f"Seed {diagnosed['seed']} (seeds tried: {', '.join(str(seed) for seed in result['seeds_tried'])}): "
        f"competent at step {diagnosed['competence_step']:,} (the moving average from step "
        f"{diagnosed['competence_window_step']:,}), last good evaluation at {diagnosed['good_step']:,} "
        f"(normalised score {diagnosed['good_score']:.2f}), the drop's first at {diagnosed['bad_step']:,} "
        f"({diagnosed['bad_score']:.2f}).",
        "",
        f"- Flips the policy alone: {flipping}; largest relative weight change: "
        f"{diagnosed['largest_relative_change']}.",
        f"- On {summary['n_states']} probe states of the good policy: entropy {summary['entropy_good']:.3g} → "
        f"{summary['entropy_bad']:.3g}, value {summary['value_good']:.3g} → {summary['value_bad']:.3g}, "
        f"KL(good‖bad) {summary['kl_good_bad']:.3g}, greedy actions that differ {summary['disagreement']:.2f}.",
        f"- Value-to-policy gradient ratio on the shared layers (median over rollouts): "
        f"{_ratio(diagnosed['grad_ratio_before'])} from competence (the window's start) to the last good evaluation, "
        f"{_ratio(diagnosed['grad_ratio_during'])} from there to the drop.",
    ]
    if result["others"]:
        lines += [
            "",
            "The same seed with the other algorithms, over the same steps:",
            "",
            "| algorithm | dropped | first drop at | score at the good step | score at the drop's step "
            "| ratio before | ratio during |",
            "|---|---|---|---|---|---|---|",
        ]
        for algorithm, other in result["others"].items():
            drop_step = "—" if other["drop_step"] is None else f"{other['drop_step']:,}"
            scores = [
                "—" if other[name] is None else f"{other[name]:.2f}"
                for name in ("score_at_good_step", "score_at_bad_step")
            ]
            lines.append(
                f"| {algorithm} | {'yes' if other['dropped'] else 'no'} | {drop_step} | {scores[0]} | {scores[1]} "
                f"| {_ratio(other['grad_ratio_before'])} | {_ratio(other['grad_ratio_during'])} |"
            )
    return "\n".join([*lines, ""])
