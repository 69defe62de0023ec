"""One training run with periodic evaluation, saved as a small JSON file.

A run is identified by task, algorithm, learning-rate scale and seed; a finished run's file
is never recomputed, so an interrupted sweep resumes where it stopped. ``run_grid`` runs a grid
of them here, in local worker processes or on a Ray cluster (``executors``), and writes each file.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecNormalize

from sb3_ppo_variants.benchmark.algorithms import OPTIONS_SEPARATOR, algorithm
from sb3_ppo_variants.benchmark.executors import Executor, InProcess, ProcessPool, RayTasks, describe, execute
from sb3_ppo_variants.benchmark.progress import GridProgress
from sb3_ppo_variants.benchmark.provenance import machine
from sb3_ppo_variants.benchmark.tasks import TASKS, Task

N_EVAL_EPISODES = 5
EVAL_SEED_OFFSET = 10_000


def register_minatar() -> None:
    """Register the ``MinAtar/*`` gymnasium ids (minatar does not do it on import)."""
    if "MinAtar/Breakout-v1" in gym.registry:
        return
    try:
        from minatar.gym import register_envs
    except ImportError:  # the bench extra is not installed; MinAtar tasks will fail to build
        return
    register_envs()


def run_path(directory: Path, task: str, algorithm: str, learning_rate_scale: float, seed: int) -> Path:
    return directory / task.replace("/", "_") / f"{algorithm}_lr{learning_rate_scale:g}_seed{seed}.json"


def make_training_env(task: Task, seed: int) -> VecEnv:
    register_minatar()
    env = make_vec_env(task.env_id, n_envs=task.n_envs, seed=seed, env_kwargs=task.env_kwargs)
    if task.normalize:
        env = VecNormalize(env, gamma=task.hyperparameters["gamma"])
    return env


def build_arm(task_name: str, name: str) -> BaseAlgorithm:
    """The model that a run of the algorithm ``name`` on the task ``task_name`` starts from (seed 0), with its
    training environment closed: what a run's arm is, without training it.

    :raises ValueError, TypeError: the class's refusal of the arm's options
    """
    task = TASKS[task_name]
    env = make_training_env(task, seed=0)
    try:
        return algorithm(name).build(task.policy, env, seed=0, device="cpu", **task.algorithm_hyperparameters())
    finally:
        env.close()


def check_arms(tasks: Sequence[str], algorithms: Sequence[str]) -> None:
    """Build every algorithm given with options (``NAME@KEY=VALUE``) on every task once, as a run would, so that
    a value its class refuses stops the command before any run starts.

    :raises ValueError: naming each refused (task, algorithm) and the class's reason
    """
    refused = []
    for task_name in tasks:
        for name in (name for name in algorithms if OPTIONS_SEPARATOR in name):
            try:
                build_arm(task_name, name)
            except (ValueError, TypeError) as error:
                refused.append(f"  {name} on {task_name}: {error}")
    if refused:
        raise ValueError("these arms cannot be built (no run started):\n" + "\n".join(refused))


def evaluate(model: BaseAlgorithm, task: Task, seed: int) -> list[float]:
    """Returns of ``N_EVAL_EPISODES`` greedy episodes, played in parallel, one per environment.

    Observations go through the training ``VecNormalize`` statistics when there are any;
    returns are the environment's raw rewards.
    """
    register_minatar()
    env = DummyVecEnv([lambda: gym.make(task.env_id, **task.env_kwargs) for _ in range(N_EVAL_EPISODES)])
    env.seed(EVAL_SEED_OFFSET + seed)
    normalizer = model.get_vec_normalize_env()
    observations: Any = env.reset()
    returns = np.zeros(N_EVAL_EPISODES)
    finished = np.zeros(N_EVAL_EPISODES, dtype=bool)
    while not finished.all():
        inputs = normalizer.normalize_obs(observations) if normalizer is not None else observations
        actions, _ = model.predict(inputs, deterministic=True)
        observations, rewards, dones, _ = env.step(actions)
        returns += np.where(finished, 0.0, rewards)
        finished |= dones
    env.close()
    return returns.tolist()


class PeriodicEvaluation(BaseCallback):
    """Evaluates every ``eval_every`` environment steps and keeps the training wall-clock apart from it."""

    def __init__(self, task: Task, seed: int):
        super().__init__()
        self.task = task
        self.seed = seed
        self.next_eval = 0
        self.records: list[dict[str, Any]] = []
        self.episode_returns: list[float] = []
        self.episode_steps: list[int] = []
        """Each training episode's return (the Monitor's) and the step count when it ended."""
        self.eval_seconds = 0.0
        self.start = 0.0

    def _evaluate(self) -> None:
        start = time.perf_counter()
        returns = evaluate(self.model, self.task, self.seed)
        training_episodes = [info["r"] for info in self.model.ep_info_buffer or []]
        self.records.append(
            {
                "step": int(self.num_timesteps),
                "train_seconds": round(start - self.start - self.eval_seconds, 3),
                "eval_return": float(np.mean(returns)),
                "eval_returns": [round(value, 2) for value in returns],
                "train_return": float(np.mean(training_episodes)) if training_episodes else None,
                "train": self._last_update_diagnostics(),
            }
        )
        self.eval_seconds += time.perf_counter() - start
        self.next_eval += self.task.eval_every

    def _last_update_diagnostics(self) -> dict[str, float]:
        """The ``train/`` values of the last update, still in the logger while the next rollout is collected."""
        return {
            key.removeprefix("train/"): round(float(value), 6)
            for key, value in self.model.logger.name_to_value.items()
            if key.startswith("train/") and isinstance(value, (int, float, np.number))
        }

    def _on_training_start(self) -> None:
        self.start = time.perf_counter()
        self._evaluate()

    def _on_step(self) -> bool:
        for info in self.locals["infos"]:
            if "episode" in info:
                self.episode_returns.append(round(float(info["episode"]["r"]), 3))
                self.episode_steps.append(int(self.num_timesteps))
        if self.num_timesteps >= self.next_eval:
            self._evaluate()
        return True

    def _on_training_end(self) -> None:
        if self.records[-1]["step"] != self.num_timesteps:
            self._evaluate()


def train_and_evaluate(
    task_name: str,
    algorithm_name: str,
    seed: int,
    learning_rate_scale: float = 1.0,
    timesteps: int | None = None,
    callbacks: Sequence[BaseCallback] = (),
) -> dict[str, Any]:
    """Train one algorithm on one task from one seed, evaluating periodically.

    :param callbacks: called after the evaluation's callback at each step; the run is the same with them as long
        as they draw no random number from the model's generators and leave its parameters alone.
    """
    task = TASKS[task_name]
    env = make_training_env(task, seed)
    model = algorithm(algorithm_name).build(
        task.policy, env, seed=seed, device="cpu", **task.algorithm_hyperparameters(learning_rate_scale)
    )
    evaluation = PeriodicEvaluation(task, seed)
    total = timesteps or task.timesteps
    start = time.perf_counter()
    model.learn(total_timesteps=total, callback=CallbackList([evaluation, *callbacks]))
    wall_seconds = time.perf_counter() - start
    env.close()
    return {
        "task": task_name,
        "algorithm": algorithm_name,
        "seed": seed,
        "learning_rate_scale": learning_rate_scale,
        "learning_rate": task.hyperparameters["learning_rate"] * learning_rate_scale,
        "timesteps": int(model.num_timesteps),
        "wall_seconds": round(wall_seconds, 3),
        "train_seconds": round(wall_seconds - evaluation.eval_seconds, 3),
        "torch_threads": th.get_num_threads(),
        "evaluations": evaluation.records,
        "engine": "sb3",
        "compiled": False,  # the batched engine's --compile; SB3 runs its eager step
        "train_episode_returns": evaluation.episode_returns,
        "train_episode_steps": evaluation.episode_steps,
        "machine": machine(),
    }


@dataclass(frozen=True)
class Run:
    """One point of a grid: what ``run_path`` names and ``train_and_evaluate`` trains."""

    task: str
    algorithm: str
    learning_rate_scale: float
    seed: int

    def __str__(self) -> str:
        return f"{self.task} {self.algorithm} lr×{self.learning_rate_scale:g} seed {self.seed}"

    def path(self, directory: Path) -> Path:
        return run_path(directory, self.task, self.algorithm, self.learning_rate_scale, self.seed)


def train_run(run: Run, timesteps: int | None = None, threads: int = 1) -> dict[str, Any]:
    """``train_and_evaluate`` with ``threads`` torch threads, in whichever process or node runs it."""
    th.set_num_threads(threads)
    return train_and_evaluate(run.task, run.algorithm, run.seed, run.learning_rate_scale, timesteps)


def write_run(path: Path, result: dict[str, Any]) -> None:
    """Write a run's file whole or not at all: a temporary file in the same folder, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp", delete=False
    ) as file:
        json.dump(result, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(file.name, path)


def grid(tasks: list[str], algorithms: list[str], seeds: list[int], learning_rate_scales: list[float]) -> list[Run]:
    """Every combination, seeds outermost so partial results stay balanced."""
    return [
        Run(task, algorithm, scale, seed)
        for seed in seeds
        for task in tasks
        for scale in learning_rate_scales
        for algorithm in algorithms
    ]


def run_grid(
    directory: Path,
    tasks: list[str],
    algorithms: list[str],
    seeds: list[int],
    learning_rate_scales: list[float],
    timesteps: int | None = None,
    threads: int = 1,
    workers: int = 1,
    ray_address: str | None = None,
    ray_max_retries: int = 3,
    progress_bar: bool = False,
) -> list[tuple[Run, str]]:
    """Run every combination not already on disk; return the runs that failed, with their error.

    ``workers`` runs at a time in local processes (1: in this process), or, with ``ray_address``,
    each run is a Ray task on that cluster asking for ``threads`` CPUs. Either way this process
    writes every result, so an interrupted grid resumes where it stopped and the cluster needs
    no shared filesystem.
    """
    runs = grid(tasks, algorithms, seeds, learning_rate_scales)
    to_run = [run for run in runs if not run.path(directory).exists()]
    if not to_run:
        return []
    executor: Executor
    if ray_address is not None:
        executor = RayTasks(ray_address, cpus_per_item=threads, max_retries=ray_max_retries)
        where = f"on the Ray cluster at {ray_address}, {threads} CPU(s) per run"
    elif min(workers, len(to_run)) > 1:
        executor = ProcessPool(min(workers, len(to_run)))
        where = f"in {executor.workers} worker processes, {threads} torch thread(s) each"
    else:
        executor = InProcess()
        where = f"in this process, {threads} torch thread(s)"
    print(f"{len(to_run)} of {len(runs)} runs to do ({len(runs) - len(to_run)} on disk) {where}", flush=True)

    progress = GridProgress(len(to_run), bar=progress_bar)
    failures: list[tuple[Run, str]] = []
    outcomes = execute(executor, partial(train_run, timesteps=timesteps, threads=threads), to_run, progress)
    try:
        for outcome in outcomes:
            if outcome.result is not None:
                write_run(outcome.item.path(directory), outcome.result)
                progress.finished(f"{outcome.item}: {_final_line(outcome.result)}")
            else:
                assert outcome.error is not None
                failures.append((outcome.item, describe(outcome.error)))
                print(f"{outcome.item} failed:", file=sys.stderr)
                traceback.print_exception(outcome.error, file=sys.stderr)
                progress.finished(f"{outcome.item}: FAILED, {failures[-1][1]}", failed=True)
    except KeyboardInterrupt:
        outcomes.close()  # stops the workers
        progress.close()
        print(f"interrupted: {progress.summary()}; run the same command again to resume", file=sys.stderr)
        raise
    progress.close()
    if failures:
        print(f"{len(failures)} of {len(to_run)} runs failed:", file=sys.stderr)
        for run, error in failures:
            print(f"  {run}: {error}", file=sys.stderr)
    return failures


def _final_line(result: dict[str, Any]) -> str:
    final = result["evaluations"][-1]["eval_return"]
    return f"return {final:.1f}, {result['train_seconds']:.1f} s training, {result['wall_seconds']:.1f} s total"
