"""Environment steps per CPU-second of the two engines, side by side in one command, on the same grid.

Both engines train the same grid (task, arms, seeds, learning-rate scale and budget), each into a throwaway
folder with the same ``collapse`` code path a user runs, ``--workers`` processes at once:

- the batched engine trains every run of the grid;
- the SB3 engine trains the first ``sb3_seeds`` seeds of every arm: one SB3 run costs the same whatever its
  seed, and a full grid of SB3 runs is what the batched engine exists to avoid.

CPU seconds are those of this process and of its worker processes (``getrusage``), so the figure does not
depend on how busy the machine is with other work as much as wall-clock time would; wall-clock seconds and
the peak resident memory of the largest worker process are reported too. The batched engine's time is then
broken down by a ``cProfile`` of one group trained in this process: collecting rollouts (of which stepping the
vectorised environments), updating, and evaluating.

With ``side_by_side`` the two engines train at the same time instead of one after the other, each as its own
``collapse`` command with half of ``--workers`` (at least one), and each engine's CPU seconds and peak memory
are its command's (``os.wait4``): a change in the machine's speed during the measurement (a shared virtual
machine's neighbours, its clock) then slows both engines alike instead of moving their ratio.
"""

from __future__ import annotations

import contextlib
import cProfile
import json
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch as th

from sb3_ppo_variants.benchmark.extension_study import BASELINE, PREREGISTERED_ARMS
from sb3_ppo_variants.benchmark.provenance import provenance
from sb3_ppo_variants.benchmark.runs import grid

STUDY_ARMS = (BASELINE, *PREREGISTERED_ARMS)
"""The 16 arms of the preregistered collapse study (docs/benchmarks.md)."""


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _measured(function: Callable[[], Any]) -> dict[str, float]:
    """Wall-clock and CPU seconds (this process and its finished children) of ``function()``."""
    cpu, wall = _cpu_seconds(), time.perf_counter()
    function()
    return {"wall_seconds": time.perf_counter() - wall, "cpu_seconds": _cpu_seconds() - cpu}


@contextlib.contextmanager
def _environment(**variables: str) -> Iterator[None]:
    """``os.environ`` with ``variables`` set (for the worker processes started meanwhile), then as it was."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _steps(directory: Path) -> int:
    return sum(json.loads(path.read_text())["timesteps"] for path in directory.glob("*/*.json"))


STEP_PHASES = ("forward", "loss", "backward", "clip", "adam")
"""The phases of a minibatch step, as ``BatchedPPO.update`` labels them (``record_function("batched.<phase>")``)."""
SCALING_SIZES = (16, 64, 256)
"""Group sizes at which ``minibatch_profile`` times PPO's minibatch step per agent, by default."""


def _first_group(
    task: str, algorithms: list[str], seeds: list[int], learning_rate_scale: float, agents: int
) -> tuple[dict[str, Any], list[Any]]:
    """The grid's first batched group of at most ``agents`` agents: the arms that share the first algorithm's
    group, cut as the grid cuts them; its arms by algorithm and its runs."""
    from sb3_ppo_variants.benchmark.batched_runs import batched_arms, split_groups
    from sb3_ppo_variants.benchmark.runs import Run

    arms = batched_arms([task], algorithms)
    key = arms[task, algorithms[0]].group_key
    together = [algorithm for algorithm in algorithms if arms[task, algorithm].group_key == key]
    runs = split_groups(
        [[Run(task, algorithm, learning_rate_scale, seed) for algorithm in together for seed in seeds]], 1, agents
    )[0]
    return {run.algorithm: arms[task, run.algorithm] for run in runs}, runs


def _minibatch_steps(trainer: Any) -> int:
    return int(trainer.n_epochs * -(-trainer.n_envs * trainer.n_steps // trainer.batch_size))


def minibatch_profile(
    task: str,
    algorithms: list[str],
    seeds: list[int],
    learning_rate_scale: float,
    agents: int,
    scaling_sizes: tuple[int, ...] = SCALING_SIZES,
    compile_step: bool = False,
) -> dict[str, Any]:
    """What one minibatch step of the batched engine costs, in CPU milliseconds of this process.

    - ``phases``: the grid's first group (as ``profile_group``'s), one update after a first one, split by
      ``torch.profiler`` into ``STEP_PHASES`` per minibatch step;
    - ``per_agent``: PPO alone in groups of ``scaling_sizes`` agents, one update's CPU time per agent and
      minibatch step;
    - with ``compile_step``, ``step``: the first group's minibatch step without the profiler, eager and
      compiled (an update timed after two, which compile it).
    """
    from sb3_ppo_variants.benchmark.batched_runs import batched_arms, group_trainer
    from sb3_ppo_variants.benchmark.runs import Run

    group_arms, runs = _first_group(task, algorithms, seeds, learning_rate_scale, agents)
    trainer = group_trainer(group_arms, runs)
    rollout = trainer.collect_rollout()
    trainer.update(rollout)
    with th.profiler.profile(activities=[th.profiler.ProfilerActivity.CPU]) as profiler:
        trainer.update(rollout)
    totals = {event.key: event.cpu_time_total for event in profiler.key_averages()}
    steps = _minibatch_steps(trainer)
    phases = {phase: round(totals.get(f"batched.{phase}", 0.0) / 1000 / steps, 3) for phase in STEP_PHASES}
    ppo = batched_arms([task], [BASELINE])[task, BASELINE]
    per_agent = {}
    for size in scaling_sizes:
        alone = group_trainer({BASELINE: ppo}, [Run(task, BASELINE, learning_rate_scale, seed) for seed in range(size)])
        per_agent[str(size)] = round(_step_milliseconds(alone, warm_up=1) / size, 4)
    result = {
        "algorithms": list(group_arms),
        "agents": len(runs),
        "phases_ms": phases,
        "step_ms": round(sum(phases.values()), 3),
        "per_agent_ms": per_agent,
    }
    if compile_step:
        result["step_without_profiler_ms"] = {
            mode: round(_step_milliseconds(group_trainer(group_arms, runs, compile_step=compiled), warm_up=2), 3)
            for mode, compiled in (("eager", False), ("compiled", True))
        }
    return result


def _step_milliseconds(trainer: Any, warm_up: int) -> float:
    """CPU milliseconds of this process per minibatch step of ``trainer``'s update of one rollout, timed after
    ``warm_up`` updates of it (two compile a compiled step)."""
    rollout = trainer.collect_rollout()
    for _ in range(warm_up):
        trainer.update(rollout)
    start = time.process_time()
    trainer.update(rollout)
    return (time.process_time() - start) * 1000 / _minibatch_steps(trainer)


def profile_group(
    task: str, algorithms: list[str], seeds: list[int], learning_rate_scale: float, timesteps: int, agents: int
) -> dict:
    """Where one batched group's time goes: seconds in collecting rollouts (and stepping the environments),
    updating and evaluating, from a ``cProfile`` of the grid's first group with at most ``agents`` agents (the
    arms that share the first algorithm's group, cut as the grid cuts them) trained in this process."""
    from sb3_ppo_variants.benchmark.batched_runs import train_group

    group_arms, runs = _first_group(task, algorithms, seeds, learning_rate_scale, agents)
    profiler = cProfile.Profile()
    profiler.enable()
    trainer, wall_seconds = train_group(group_arms, runs, timesteps)
    profiler.disable()
    statistics = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    env_file = {"AcrobotAgents": "acrobot", "CartPoleAgents": "cartpole", "MinAtarAgents": "batched/minatar"}

    def cumulative(function_name: str, class_file: str | None = None) -> float:
        return sum(
            entry[3]
            for (file, _, name), entry in statistics.items()
            if name == function_name and (class_file is None or class_file in file)
        )

    parts = {
        "collect_rollout": cumulative("collect_rollout", "batched"),
        "environment_step": cumulative("step", env_file[type(trainer.env).__name__]),
        "update": cumulative("update", "batched"),
        "evaluate": cumulative("_record_evaluation", "batched"),
    }
    total = cumulative("learn", "batched")
    return {
        "task": task,
        "algorithms": list(group_arms),
        "agents": len(runs),
        "timesteps": timesteps,
        "profiled_seconds": round(total, 3),
        "wall_seconds": round(wall_seconds, 3),
        **{f"{name}_seconds": round(value, 3) for name, value in parts.items()},
        **{f"{name}_share": round(value / total, 4) for name, value in parts.items()},
    }


def _collapse_command(
    directory: Path,
    task: str,
    algorithms: list[str],
    seeds: list[int],
    learning_rate_scale: float,
    timesteps: int,
    workers: int,
    batched: dict[str, Any] | None,
) -> list[str]:
    """The ``collapse`` command that trains the grid into ``directory``; ``batched``: the batched engine with
    its ``group_size`` and ``compile_step``, ``None``: the SB3 engine."""
    command = [sys.executable, "-m", "sb3_ppo_variants.benchmark", "collapse", "--runs", str(directory)]
    command += ["--tasks", task, "--algorithms", *algorithms, "--seeds", *map(str, seeds)]
    command += ["--lr-scales", repr(learning_rate_scale), "--timesteps", str(timesteps)]
    command += ["--threads", "1", "--workers", str(workers)]
    if batched is not None:
        command += ["--engine", "batched", "--group-size", str(batched["group_size"])]
        command += ["--compile"] if batched["compile_step"] else []
    return command


def _side_by_side(commands: dict[str, list[str]], folder: Path) -> dict[str, dict[str, float]]:
    """Run the commands at once; each one's wall-clock and CPU seconds (its own and its workers', from
    ``os.wait4``) and its peak resident memory (the largest of its processes, GiB).

    :raises RuntimeError: with the output's end, when a command fails.
    """
    start = time.perf_counter()
    processes, logs = {}, {}
    for engine, command in commands.items():
        logs[engine] = folder / f"{engine}.log"
        with logs[engine].open("w") as log:
            processes[engine] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    measured: dict[str, dict[str, float]] = {}
    while len(measured) < len(processes):
        for engine, process in processes.items():
            if engine in measured:
                continue
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid == 0:
                continue
            process.returncode = os.waitstatus_to_exitcode(status)
            if process.returncode != 0:
                for other in processes.values():
                    if other.returncode is None:
                        other.kill()
                        other.wait()
                tail = logs[engine].read_text()[-2000:]
                raise RuntimeError(f"the {engine} engine's command failed ({process.returncode}):\n{tail}")
            measured[engine] = {
                "wall_seconds": time.perf_counter() - start,
                "cpu_seconds": usage.ru_utime + usage.ru_stime,
                "peak_worker_rss_gib": usage.ru_maxrss / 2**20,
            }
        time.sleep(0.1)
    return measured


def measure_throughput(
    task: str,
    algorithms: list[str],
    seeds: list[int],
    learning_rate_scale: float,
    timesteps: int,
    sb3_seeds: int,
    workers: int,
    group_size: int,
    compile_step: bool = False,
    compiled_only: bool = False,
    side_by_side: bool = False,
) -> dict[str, Any]:
    """Both engines on the grid; steps, seconds and steps per CPU-second each, and their ratio; with
    ``compile_step`` the batched engine a second time with its step compiled (``batched_compiled``), its
    compilations included; with ``compiled_only`` as well, the compiled step only. With ``side_by_side`` the
    batched grid (one: the compiled step with ``compile_step``) and the SB3 grid train at the same time, each
    with half of the ``workers``."""
    from sb3_ppo_variants.benchmark.batched_runs import run_batched_grid
    from sb3_ppo_variants.benchmark.runs import run_grid

    engines = [("batched", False), ("batched_compiled", True)][: 1 + compile_step]
    if compiled_only:
        if not compile_step:
            raise ValueError("compiled_only needs compile_step")
        engines = engines[1:]
    if side_by_side and len(engines) != 1:
        raise ValueError("side_by_side trains one batched grid: with compile_step, give compiled_only too")
    sb3_seeds_run = seeds[:sb3_seeds]

    def runs(engine_seeds: list[int]) -> int:
        return len(grid([task], algorithms, engine_seeds, [learning_rate_scale]))

    results: dict[str, Any] = {}
    # each worker compiles in its own process, so that its CPU time counts the compilations, from an empty
    # on-disk cache, so that no compilation of an earlier command is reused
    with (
        tempfile.TemporaryDirectory() as folder,
        _environment(TORCHINDUCTOR_COMPILE_THREADS="1", TORCHINDUCTOR_CACHE_DIR=str(Path(folder) / "cache")),
    ):
        if side_by_side:
            (engine, compiled), half = engines[0], max(1, workers // 2)
            batched = {"group_size": group_size, "compile_step": compiled}
            grid_seeds = {engine: seeds, "sb3": sb3_seeds_run}
            commands = {
                name: _collapse_command(
                    Path(folder) / name,
                    task,
                    algorithms,
                    grid_seeds[name],
                    learning_rate_scale,
                    timesteps,
                    half,
                    batched if name == engine else None,
                )
                for name in grid_seeds
            }
            results.update(_side_by_side(commands, Path(folder)))
            for name, engine_seeds in grid_seeds.items():
                results[name].update(runs=runs(engine_seeds), steps=_steps(Path(folder) / name), workers=half)
        else:
            for engine, compiled in engines:
                directory = Path(folder) / engine
                before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                batched_grid = partial(run_batched_grid, directory, [task], algorithms, seeds, [learning_rate_scale])
                results[engine] = _measured(
                    partial(batched_grid, timesteps, workers=workers, group_size=group_size, compile_step=compiled)
                )
                # ru_maxrss of the children is the largest child's peak (KiB on Linux); the workers are the children
                peak = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 2**20
                results[engine].update(peak_worker_rss_gib=peak, runs=runs(seeds), steps=_steps(directory))
            sb3 = Path(folder) / "sb3"
            sb3_grid = partial(run_grid, sb3, [task], algorithms, sb3_seeds_run, [learning_rate_scale], timesteps)
            results["sb3"] = _measured(partial(sb3_grid, threads=1, workers=workers))
            results["sb3"].update(runs=runs(sb3_seeds_run), steps=_steps(sb3))
    for entry in results.values():
        entry["steps_per_cpu_second"] = entry["steps"] / entry["cpu_seconds"]
        entry["steps_per_wall_second"] = entry["steps"] / entry["wall_seconds"]
    for engine, suffix in (("batched", ""), ("batched_compiled", "_compiled")):
        if engine in results:
            for unit in ("cpu", "wall"):
                results[f"ratio_per_{unit}_second{suffix}"] = (
                    results[engine][f"steps_per_{unit}_second"] / results["sb3"][f"steps_per_{unit}_second"]
                )
    return results


def throughput_markdown(result: dict[str, Any]) -> str:
    """The comparison and the profile as Markdown tables."""
    settings = result["settings"]
    lines = [
        f"Grid: {settings['task']}, {len(settings['algorithms'])} arms, learning rate × {settings['lr_scale']:g}, "
        f"{settings['timesteps']} steps per run, {settings['workers']} worker process(es), 1 torch thread each, "
        f"batched groups of at most {settings.get('group_size', len(settings['seeds']))} agents.",
    ]
    if settings.get("side_by_side"):
        lines.append(
            f"Side by side: both engines trained at the same time, {result['sb3']['workers']} worker process(es) "
            "each; each engine's CPU and wall seconds are its own command's."
        )
    lines += [
        "",
        "| engine | runs | environment steps | CPU seconds | wall seconds | steps per CPU-second |",
        "|---|---|---|---|---|---|",
    ]
    engines = {"batched": "batched", "batched_compiled": "batched, compiled step", "sb3": "sb3"}
    for engine, label in engines.items():
        if engine in result:
            entry = result[engine]
            lines.append(
                f"| {label} | {entry['runs']} | {entry['steps']:,} | {entry['cpu_seconds']:.0f} | "
                f"{entry['wall_seconds']:.0f} | {entry['steps_per_cpu_second']:,.0f} |"
            )
    lines.append("")
    if "batched" in result:
        lines.append(
            f"Batched / SB3: ×{result['ratio_per_cpu_second']:.1f} per CPU-second, "
            f"×{result['ratio_per_wall_second']:.1f} per wall-clock second; the batched engine's largest worker "
            f"peaked at {result['batched']['peak_worker_rss_gib']:.2f} GiB resident."
        )
    if "batched_compiled" in result:
        cpu, wall = result["ratio_per_cpu_second_compiled"], result["ratio_per_wall_second_compiled"]
        lines.append(
            f"With its step compiled (`--compile`, the compilations included): ×{cpu:.1f} per CPU-second, "
            f"×{wall:.1f} per wall-clock second; largest worker "
            f"{result['batched_compiled']['peak_worker_rss_gib']:.2f} GiB."
        )
    profile = result.get("profile")
    if profile:
        lines += [
            "",
            f"Profile of the grid's first group ({'+'.join(profile['algorithms'])}, {profile['agents']} agents, "
            f"{profile['timesteps']} steps each, in one process): {profile['profiled_seconds']:.1f} s.",
            "",
            "| part | seconds | share |",
            "|---|---|---|",
        ]
        for name, label in (
            ("collect_rollout", "collecting rollouts"),
            ("environment_step", "… of which stepping the vectorised environments"),
            ("update", "updates (losses, gradients, Adam)"),
            ("evaluate", "evaluations (greedy episodes)"),
        ):
            lines.append(f"| {label} | {profile[f'{name}_seconds']:.1f} | {profile[f'{name}_share']:.0%} |")
    minibatch = result.get("minibatch")
    if minibatch:
        phases = minibatch["phases_ms"]
        lines += [
            "",
            f"One minibatch step of that group ({'+'.join(minibatch['algorithms'])}, {minibatch['agents']} agents), "
            f"CPU milliseconds by `torch.profiler`: {minibatch['step_ms']:.1f} ms in all.",
            "",
            "| " + " | ".join(STEP_PHASES) + " |",
            "|" + "---|" * len(STEP_PHASES),
            "| " + " | ".join(f"{phases[phase]:.2f}" for phase in STEP_PHASES) + " |",
            "",
            "PPO alone, CPU milliseconds per agent and minibatch step, by group size: "
            + ", ".join(f"{size} agents {value:.3f}" for size, value in minibatch["per_agent_ms"].items())
            + ".",
        ]
        step = minibatch.get("step_without_profiler_ms")
        if step:
            lines += [
                "",
                f"The same group's minibatch step without the profiler: {step['eager']:.1f} ms eager, "
                f"{step['compiled']:.1f} ms compiled (×{step['eager'] / step['compiled']:.2f}).",
            ]
    return "\n".join(lines) + "\n"


def run_throughput(
    output: Path,
    task: str,
    algorithms: list[str],
    seeds: list[int],
    learning_rate_scale: float,
    timesteps: int,
    sb3_seeds: int,
    workers: int,
    group_size: int,
    scaling_sizes: tuple[int, ...] = SCALING_SIZES,
    compile_step: bool = False,
    compiled_only: bool = False,
    profile_timesteps: int | None = None,
    side_by_side: bool = False,
) -> dict[str, Any]:
    """Measure, profile, and write ``throughput.json`` and ``throughput.md`` into ``output``; with
    ``compile_step`` the batched engine's compiled step too (alone with ``compiled_only``). The profile trains
    the first group for ``profile_timesteps`` steps per agent (default: ``timesteps``)."""
    th.set_num_threads(1)
    result = measure_throughput(
        task,
        algorithms,
        seeds,
        learning_rate_scale,
        timesteps,
        sb3_seeds,
        workers,
        group_size,
        compile_step,
        compiled_only,
        side_by_side,
    )
    profile_timesteps = profile_timesteps or timesteps
    result["profile"] = profile_group(task, algorithms, seeds, learning_rate_scale, profile_timesteps, group_size)
    result["minibatch"] = minibatch_profile(
        task, algorithms, seeds, learning_rate_scale, group_size, scaling_sizes, compile_step
    )
    result["settings"] = {
        "task": task,
        "algorithms": algorithms,
        "seeds": seeds,
        "sb3_seeds": seeds[:sb3_seeds],
        "lr_scale": learning_rate_scale,
        "timesteps": timesteps,
        "workers": workers,
        "group_size": group_size,
        "compile_step": compile_step,
        "compiled_only": compiled_only,
        "profile_timesteps": profile_timesteps,
        "side_by_side": side_by_side,
    }
    result["provenance"] = provenance()
    output.mkdir(parents=True, exist_ok=True)
    (output / "throughput.json").write_text(json.dumps(result, indent=2))
    (output / "throughput.md").write_text(throughput_markdown(result))
    return result
