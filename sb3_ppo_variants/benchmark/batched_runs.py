"""The batched engine of ``learn`` and ``collapse`` (``--engine batched``): a grid's runs trained by ``BatchedPPO``.

Every (task, algorithm) of the grid is one arm (``trainer.Arm``) whose agents are the seeds and learning-rate
scales still to do (per-agent learning rates). The arms of a task that differ only in ``ARM_SETTINGS`` (their
loss options and update rules, not the rollout shape, network or Adam) train together in one ``BatchedPPO``,
cut into groups of at most ``group_size`` agents. Groups run one after the other in this process or, with
``workers``, that many at once in worker processes. Each arm is read from the SB3 model the SB3 engine would train
(``batched_settings``), and an arm the engine cannot train as that model is refused, with its reason, before
any run starts. Each run's file is ``runs.run_path``'s, in the SB3 engine's format with ``engine`` added,
written by this process as soon as its group has finished; a group interrupted half-way loses only its own
runs, which the same command then redoes.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch as th
from stable_baselines3 import PPO
from torch import nn

from sb3_ppo_variants.batched import AGENT_ENVIRONMENTS, BatchedPPO, StackedActorCritic, batched_settings
from sb3_ppo_variants.batched.trainer import ARM_SETTINGS, Arm, check_compile, check_device
from sb3_ppo_variants.benchmark.executors import Executor, InProcess, ProcessPool, describe, execute
from sb3_ppo_variants.benchmark.progress import GridProgress
from sb3_ppo_variants.benchmark.provenance import machine
from sb3_ppo_variants.benchmark.runs import Run, build_arm, grid, write_run
from sb3_ppo_variants.benchmark.tasks import TASKS, Task
from sb3_ppo_variants.policies import MinAtarCNN

GROUP_SIZE = 64
"""Agents per group by default: past about 50 agents a 64-64 MLP's step costs the same per agent on one core,
and a smaller group loses less when it is interrupted."""
_STACKABLE_MODULES = (nn.Linear, nn.Flatten, nn.Identity, nn.Tanh)
"""The leaf modules of the tanh networks ``StackedActorCritic`` reproduces (and ``MinAtarCNN``'s, with
``_CNN_MODULES``)."""
_CNN_MODULES = (nn.Conv2d, nn.ReLU)


class RefusedArms(ValueError):
    """Arms that the batched engine cannot train as the SB3 engine would, each with its reason."""

    def __init__(self, reasons: dict[tuple[str, str], str]) -> None:
        self.reasons = reasons
        lines = [f"  {algorithm} on {task}: {reason}" for (task, algorithm), reason in reasons.items()]
        super().__init__("--engine batched cannot run these arms (no run started):\n" + "\n".join(lines))


@dataclass(frozen=True)
class BatchedArm:
    """An algorithm on a task: ``BatchedPPO``'s arguments, its learning rate apart."""

    task: str
    algorithm: str
    settings: dict[str, Any]
    shared_trunk: bool

    @property
    def group_key(self) -> tuple[Any, ...]:
        """Equal for arms that can train in one ``BatchedPPO``: the task, the network and every setting that
        is the group's (all but ``ARM_SETTINGS`` and the per-agent learning rate)."""
        shared = sorted(
            (name, repr(value)) for name, value in self.settings.items() if name not in (*ARM_SETTINGS, "learning_rate")
        )
        return (self.task, self.shared_trunk, tuple(shared))

    def arm(self, n_agents: int) -> Arm:
        """This algorithm's ``Arm`` of ``n_agents`` agents."""
        return Arm(n_agents, **{name: value for name, value in self.settings.items() if name in ARM_SETTINGS})


def _environment_refusal(task: Task) -> str | None:
    if task.env_id not in AGENT_ENVIRONMENTS:
        return f"no vectorised {task.env_id} in the batched engine (it has {', '.join(AGENT_ENVIRONMENTS)})"
    if task.normalize:
        return "the task normalises observations (VecNormalize), which the batched engine does not"
    if task.env_kwargs:
        return f"the task's environment arguments {task.env_kwargs} are not the batched engine's"
    return None


def _network_refusal(model: Any) -> tuple[str | None, bool]:
    """Why ``StackedActorCritic`` cannot be this model's network (or ``None``), and whether its trunk is shared."""
    policy = model.policy
    cnn = isinstance(policy.features_extractor, MinAtarCNN)
    others = sorted(
        {
            type(module).__name__
            for module in policy.modules()
            if not list(module.children()) and not isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict))
        }
        - {module.__name__ for module in _STACKABLE_MODULES + (_CNN_MODULES if cnn else ())}
    )
    if others:
        return (
            f"the network has {', '.join(others)} layers; the batched engine stacks tanh MLPs and MinAtarCNN only",
            False,
        )
    if not getattr(policy, "ortho_init", False):
        return "the policy is not initialised orthogonally (ortho_init=False)", False
    try:
        reference = StackedActorCritic.from_policies([policy])
    except ValueError as error:
        return str(error), False
    shared_trunk = bool(reference.trunk_layers or reference.conv_layers)
    stacked = StackedActorCritic.initialise(
        int(th.Size(model.observation_space.shape).numel()),
        int(model.action_space.n),
        [th.Generator()],
        shared_trunk=shared_trunk,
        image_shape=reference.image_shape,
    )
    shapes = {name: tuple(tensor.shape[1:]) for name, tensor in reference.parameters.items()}
    expected = {name: tuple(tensor.shape[1:]) for name, tensor in stacked.parameters.items()}
    if shapes != expected:
        return (
            "the network is neither SB3's 64-64 MlpPolicy, nor a shared 64-64 MlpTrunk, nor a shared MinAtarCNN "
            "(16 filters, 128 features, net_arch=[]), the shapes the batched engine stacks",
            shared_trunk,
        )
    return None, shared_trunk


def batched_arms(tasks: list[str], algorithms: list[str]) -> dict[tuple[str, str], BatchedArm]:
    """Every (task, algorithm) as a ``BatchedArm``, read from the SB3 model the SB3 engine would build.

    :raises RefusedArms: naming every arm the batched engine cannot train, and why.
    """
    arms: dict[tuple[str, str], BatchedArm] = {}
    refused: dict[tuple[str, str], str] = {}
    for task_name in tasks:
        task = TASKS[task_name]
        for algorithm in algorithms:
            key = (task_name, algorithm)
            reason = _environment_refusal(task)
            if reason is not None:
                refused[key] = reason
                continue
            try:
                model = build_arm(task_name, algorithm)
                if not isinstance(model, PPO):
                    raise ValueError(f"{type(model).__name__} is not SB3's PPO, whose update the batched engine runs")
                settings = batched_settings(model)
            except (ValueError, TypeError) as error:  # an option the action space refuses, or BatchedPPO lacks
                refused[key] = str(error)
                continue
            if not hasattr(model.action_space, "n"):
                refused[key] = f"the action space is {model.action_space}; the batched engine plays Discrete ones"
                continue
            reason, shared_trunk = _network_refusal(model)
            if reason is not None:
                refused[key] = reason
                continue
            arms[key] = BatchedArm(task_name, algorithm, settings, shared_trunk)
    if refused:
        raise RefusedArms(refused)
    return arms


def group_trainer(
    arms: dict[str, BatchedArm], runs: list[Run], device: str = "cpu", compile_step: bool = False
) -> BatchedPPO:
    """One ``BatchedPPO`` over ``runs`` (one agent each, its seed and learning-rate scale; the runs of an
    algorithm consecutive), each run with ``arms[run.algorithm]``'s arm, on ``device``, its step compiled with
    ``compile_step``.

    :raises ValueError: when the arms cannot share a group (``BatchedArm.group_key``)
    """
    first = arms[runs[0].algorithm]
    if any(arms[run.algorithm].group_key != first.group_key for run in runs):
        raise ValueError(f"{sorted({run.algorithm for run in runs})} on {first.task} cannot train in one group")
    segments: list[tuple[str, int]] = []
    for run in runs:
        if segments and segments[-1][0] == run.algorithm:
            segments[-1] = (run.algorithm, segments[-1][1] + 1)
        else:
            segments.append((run.algorithm, 1))
    task = TASKS[first.task]
    settings = {name: value for name, value in first.settings.items() if name not in ARM_SETTINGS}
    settings["learning_rate"] = [
        task.algorithm_hyperparameters(run.learning_rate_scale)["learning_rate"] for run in runs
    ]
    return BatchedPPO(
        [run.seed for run in runs],
        shared_trunk=first.shared_trunk,
        env_id=task.env_id,
        arms=[arms[algorithm].arm(n_agents) for algorithm, n_agents in segments],
        device=device,
        compile_step=compile_step,
        **settings,
    )


def train_group(
    arms: dict[str, BatchedArm],
    runs: list[Run],
    timesteps: int | None = None,
    device: str = "cpu",
    compile_step: bool = False,
) -> tuple[BatchedPPO, float]:
    """``group_trainer``'s trainer after its runs' budget, evaluated as the SB3 runner evaluates; the trainer
    and its wall-clock seconds."""
    task = TASKS[runs[0].task]
    start = time.perf_counter()
    trainer = group_trainer(arms, runs, device, compile_step)
    trainer.learn(timesteps or task.timesteps, eval_every=task.eval_every)
    return trainer, time.perf_counter() - start


def run_record(trainer: BatchedPPO, agent: int, run: Run, wall_seconds: float) -> dict[str, Any]:
    """Agent ``agent``'s run file: the SB3 engine's fields (``runs.train_and_evaluate``). The seconds are the
    whole group's, which trained together."""
    task = TASKS[run.task]
    evaluations = trainer.evaluations[agent]
    return {
        "task": run.task,
        "algorithm": run.algorithm,
        "seed": run.seed,
        "learning_rate_scale": run.learning_rate_scale,
        "learning_rate": task.hyperparameters["learning_rate"] * run.learning_rate_scale,
        "timesteps": int(trainer.num_timesteps),
        "wall_seconds": round(wall_seconds, 3),
        "train_seconds": round(wall_seconds - trainer.eval_seconds, 3),
        "torch_threads": th.get_num_threads(),
        "evaluations": evaluations,
        "engine": "batched",
        "compiled": trainer.compile_step,
        "train_episode_returns": [round(value, 3) for value in trainer.episode_returns[agent]],
        "train_episode_steps": trainer.episode_steps[agent],
        "machine": machine(),
    }


@dataclass(frozen=True)
class Group:
    """Runs trained together by one ``BatchedPPO`` (each run's arm is ``arms[run.algorithm]``): an item of the
    executors that run a grid."""

    arms: dict[str, BatchedArm]
    runs: tuple[Run, ...]

    def __str__(self) -> str:
        algorithms = "+".join(dict.fromkeys(run.algorithm for run in self.runs))
        return f"{self.runs[0].task} {algorithms}, {len(self.runs)} run(s)"


def split_groups(groups: list[list[Run]], workers: int, group_size: int | None = None) -> list[list[Run]]:
    """The groups, each cut into the fewest near-equal pieces of at most ``group_size`` runs, then the largest
    halved until every worker has one (agents train independently of their batch)."""
    pieces: list[list[Run]] = []
    for group in groups:
        count = 1 if group_size is None else -(-len(group) // group_size)
        bounds = [len(group) * index // count for index in range(count + 1)]
        pieces.extend(group[low:high] for low, high in pairwise(bounds))
    groups = pieces
    while len(groups) < workers and max(len(group) for group in groups) > 1:
        largest = max(range(len(groups)), key=lambda index: len(groups[index]))
        group = groups.pop(largest)
        groups[largest:largest] = [group[: len(group) // 2], group[len(group) // 2 :]]
    return groups


def train_group_records(
    group: Group, timesteps: int | None = None, threads: int = 1, device: str = "cpu", compile_step: bool = False
) -> dict[str, Any]:
    """The executors' function: train one group; per run, its file's record, or the step at which it failed."""
    th.set_num_threads(threads)
    trainer, wall_seconds = train_group(group.arms, list(group.runs), timesteps, device, compile_step)
    return {
        "wall_seconds": wall_seconds,
        "records": [
            run_record(trainer, agent, run, wall_seconds)
            if trainer.failed_at[agent] is None
            else {"failed_at": trainer.failed_at[agent]}
            for agent, run in enumerate(group.runs)
        ],
    }


class _GroupStarts:
    """A group's runs count as running once the group is submitted."""

    def __init__(self, progress: GridProgress):
        self.progress = progress

    def started(self, group: Group) -> None:
        for run in group.runs:
            self.progress.started(run)


def run_batched_grid(
    directory: Path,
    tasks: list[str],
    algorithms: list[str],
    seeds: list[int],
    learning_rate_scales: list[float],
    timesteps: int | None = None,
    progress_bar: bool = False,
    workers: int = 1,
    group_size: int | None = GROUP_SIZE,
    device: str = "cpu",
    compile_step: bool = False,
) -> list[tuple[Run, str]]:
    """``runs.run_grid`` with the batched engine: every run not on disk, the arms of a task that can share a
    ``BatchedPPO`` together, in groups of at most ``group_size`` agents (``None``: no limit).

    With ``workers > 1`` that many groups train at once, each in its own process (``executors.ProcessPool``)
    with this process's torch threads, the largest group halved while there are fewer groups than workers.
    This process writes every file as its group finishes.

    :param device: the torch device of the groups' networks and updates (``BatchedPPO``'s ``device``)
    :param compile_step: compile each group's minibatch step (``BatchedPPO``'s ``compile_step``)
    :raises RefusedArms: before any run starts, when an arm cannot run batched.
    :raises ValueError: before any run starts, when ``device`` is not available, or with ``compile_step`` when
        ``torch.compile`` does not work here.
    :return: the runs that failed (an agent whose network or loss stopped being finite), with the reason.
    """
    if compile_step:
        check_compile(check_device(device))
    else:
        check_device(device)
    arms = batched_arms(tasks, algorithms)
    runs = grid(tasks, algorithms, seeds, learning_rate_scales)
    to_run = [run for run in runs if not run.path(directory).exists()]
    if not to_run:
        return []
    by_arm: dict[tuple[str, str], list[Run]] = {}
    for run in to_run:
        by_arm.setdefault((run.task, run.algorithm), []).append(run)
    together: dict[tuple[Any, ...], list[Run]] = {}
    for key, arm_runs in by_arm.items():
        together.setdefault(arms[key].group_key, []).extend(arm_runs)
    groups = [
        Group({run.algorithm: arms[run.task, run.algorithm] for run in group}, tuple(group))
        for group in split_groups(list(together.values()), workers, group_size)
    ]
    workers = max(1, min(workers, len(groups)))
    threads = th.get_num_threads()
    executor: Executor = ProcessPool(workers) if workers > 1 else InProcess()
    print(
        f"{len(to_run)} of {len(runs)} runs to do ({len(runs) - len(to_run)} on disk) in {len(groups)} batched "
        f"group(s), {workers} at a time, {threads} torch thread(s) each",
        flush=True,
    )
    progress = GridProgress(len(to_run), bar=progress_bar)
    failures: list[tuple[Run, str]] = []
    function = partial(
        train_group_records, timesteps=timesteps, threads=threads, device=device, compile_step=compile_step
    )
    outcomes = execute(executor, function, groups, _GroupStarts(progress))
    try:
        for outcome in outcomes:
            group = outcome.item
            if outcome.result is None:
                assert outcome.error is not None
                records: list[dict[str, Any]] = [{"error": describe(outcome.error)}] * len(group.runs)
                wall_seconds = 0.0
            else:
                records, wall_seconds = outcome.result["records"], outcome.result["wall_seconds"]
            for run, record in zip(group.runs, records, strict=True):
                if "evaluations" not in record:
                    reason = record.get("error") or (
                        f"non-finite network output, loss or gradient at step {record['failed_at']}"
                    )
                    failures.append((run, reason))
                    progress.finished(f"{run}: FAILED, {reason}", failed=True)
                    continue
                write_run(run.path(directory), record)
                final = record["evaluations"][-1]["eval_return"]
                progress.finished(f"{run}: return {final:.1f}, {wall_seconds:.1f} s for its group ({group})")
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
