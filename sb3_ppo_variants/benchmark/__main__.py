"""Command line of the benchmarks: ``python -m sb3_ppo_variants.benchmark <subcommand> ...``.

- ``cost``: ``train()`` time on one shared rollout and end-to-end FPS, as ratios against SB3's PPO (settings
  ``mlp``, ``cnn``) or sb3-contrib's MaskablePPO and RecurrentPPO (``masked``, ``recurrent``);
- ``learn``: every algorithm on every task for several seeds, with periodic greedy evaluation;
- ``collapse``: the same runs across learning-rate scales (the step-size sweep);
- ``report``: tables (CSV, Markdown) and PNG plots from the runs on disk;
- ``study``: the collapse study's outcomes, collapse rates with intervals and tests, and plots
  (the definition in ``collapse_study.py`` and ``docs/benchmarks.md``);
- ``throughput``: environment steps per CPU-second of the batched and the SB3 engine on one grid;
- ``agreement``: whether the SB3 engine and the batched engine train the same grid alike (``agreement.py``);
- ``pilot``: the powered study's candidate settings from PPO's pilot runs, and the ones its rule chooses;
- ``extension``: the powered study's analysis (``extension_study.py``, preregistered in ``docs/benchmarks.md``);
- ``sensitivity``: the powered study's sensitivity reruns against its runs (``sensitivity.py``);
- ``compare-runs``: whether two grids' runs of the same seeds are the same runs, and where they part
  (``replication.py``);
- ``diagnose``: one drop of a setting explained, with ``collapse``'s diagnosis and health (``diagnose.py``);
- ``pong``: the seed's Pong settings to 2M agent steps through rl-zoo3, resumable (``pong.py``).

Runs already on disk are skipped, so ``learn`` and ``collapse`` resume after an interruption. They run
``--workers`` runs at once in local processes, or every run as a task on a Ray cluster (``--ray-address``),
or, with ``--engine batched``, the seeds, learning-rate scales and algorithms of a task together in
``BatchedPPO`` groups of at most ``--group-size`` agents (``batched_runs``); the command exits with
status 1 when a run failed, after the others finished.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import torch as th

from sb3_ppo_variants.batched.trainer import check_compile, check_device
from sb3_ppo_variants.benchmark.algorithms import (
    CONTRIB_ALGORITHMS,
    COST_ALGORITHMS,
    LEARNING_ALGORITHMS,
    parse_algorithms,
)
from sb3_ppo_variants.benchmark.batched_runs import GROUP_SIZE
from sb3_ppo_variants.benchmark.executors import available_cores
from sb3_ppo_variants.benchmark.tasks import LEARNING_TASKS, TASKS
from sb3_ppo_variants.benchmark.throughput import SCALING_SIZES

DEFAULT_RUNS = Path("benchmark_runs")
CONTRIB_COST_ALGORITHMS = tuple(name for name in CONTRIB_ALGORITHMS if not name.endswith("_ppo"))


def _parse_tasks(names: list[str] | None, default: list[str]) -> list[str]:
    chosen = names or default
    unknown = [name for name in chosen if name not in TASKS]
    if unknown:
        raise SystemExit(f"unknown task(s) {unknown}; choose from {sorted(TASKS)}")
    return chosen


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's stop, ``kill``), handled as Ctrl-C: the grid stops its workers and says how to resume."""


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM raises ``Terminated`` in the main thread (elsewhere it is left alone)."""

    def interrupt(signum: int, frame: object) -> None:
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"needs a positive integer, got {value}")
    return value


def _kept_setting(text: str) -> tuple[str, float]:
    """``TASK:LR`` → (task, learning rate)."""
    task, _, rate = text.rpartition(":")
    if task not in TASKS:
        raise argparse.ArgumentTypeError(f"needs TASK:LR with a task from {sorted(TASKS)}, got {text!r}")
    try:
        return task, float(rate)
    except ValueError:
        raise argparse.ArgumentTypeError(f"needs TASK:LR with a number after the colon, got {text!r}") from None


def _add_run_arguments(parser: argparse.ArgumentParser, default_tasks: list[str]) -> None:
    parser.add_argument("--runs", type=Path, default=DEFAULT_RUNS, help="directory of the per-run JSON files")
    parser.add_argument("--tasks", nargs="+", default=None, help=f"default: {' '.join(default_tasks)}")
    parser.add_argument(
        "--algorithms",
        nargs="+",
        default=None,
        help=f"default: {' '.join(LEARNING_ALGORITHMS)}; NAME@KEY=VALUE,KEY=VALUE is NAME with these keyword "
        "arguments (a sweep: rollback@peaked_policy_loss=0.2 ppo@clip_range=0.1)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--timesteps", type=int, default=None, help="override every task's budget (tests, smoke runs)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (1 is fastest for these MLPs)")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="runs at once, each in its own process (default: this machine's cores / --threads; 1: in this process)",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDRESS",
        help="run every run as a task on this Ray cluster ('auto': the one started here with `ray start`); "
        "needs the ray extra, ignores --workers",
    )
    parser.add_argument(
        "--ray-max-retries", type=int, default=3, help="Ray's retries of a run whose worker or node died"
    )
    parser.add_argument("--progress", action="store_true", help="show a progress bar over the grid (on stderr)")
    parser.add_argument(
        "--engine",
        choices=["sb3", "batched"],
        default="sb3",
        help="sb3: one SB3 model per run; batched: every seed and learning-rate scale of the algorithms of a task "
        "trained together by BatchedPPO in groups of --group-size agents, --workers such groups at once",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="--engine batched: the torch device of the networks and updates, e.g. cuda (default: cpu); the "
        "environments step on the CPU",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="--engine batched: compile each group's minibatch step with torch.compile (needs a C++ compiler on a "
        "CPU; the first updates pay the compilation)",
    )
    parser.add_argument(
        "--group-size",
        type=_positive_int,
        default=GROUP_SIZE,
        help="--engine batched: the most agents in one group (default: %(default)s); a group interrupted half-way "
        "is trained again",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sb3_ppo_variants.benchmark", description=__doc__.split("\n")[0])
    subcommands = parser.add_subparsers(dest="command", required=True)

    learn = subcommands.add_parser("learn", help="learning curves of every algorithm on every task")
    _add_run_arguments(learn, list(LEARNING_TASKS))
    learn.add_argument("--lr-scales", nargs="+", type=float, default=[1.0], help="learning-rate multipliers")

    collapse = subcommands.add_parser("collapse", help="step-size sweep: the learning runs at larger learning rates")
    _add_run_arguments(collapse, ["CartPole-v1"])
    collapse.add_argument("--lr-scales", nargs="+", type=float, default=[1.0, 3.0, 10.0])

    cost = subcommands.add_parser(
        "cost", help="train() time and FPS as ratios against SB3's PPO, MaskablePPO or RecurrentPPO"
    )
    cost.add_argument("--output", type=Path, required=True, help="directory for cost.csv and cost_raw.csv")
    cost.add_argument("--plots", type=Path, default=None, help="directory for the plot (default: --output)")
    cost.add_argument("--plot-name", default="cost", help="file name of the plot, without .png (default: cost)")
    cost.add_argument(
        "--setting",
        choices=["mlp", "cnn", "masked", "recurrent"],
        nargs="+",
        default=["mlp", "cnn"],
        help="mlp, cnn: against SB3's PPO; masked: against MaskablePPO; recurrent: against RecurrentPPO",
    )
    cost.add_argument(
        "--algorithms",
        nargs="+",
        default=None,
        help=f"default: {' '.join(COST_ALGORITHMS)} on mlp and cnn, {' '.join(CONTRIB_COST_ALGORITHMS)} on masked "
        "and recurrent (their own); every name must be measurable on every --setting",
    )
    cost.add_argument("--repeats", type=int, nargs="+", default=[9, 3], help="train() pairs per algorithm, per setting")
    cost.add_argument("--fps-repeats", type=int, nargs="+", default=[3, 2], help="learn() pairs, per setting")
    cost.add_argument("--fps-timesteps", type=int, default=None, help="steps per learn() timing (default per setting)")
    cost.add_argument("--threads", type=int, nargs="+", default=None, help="torch threads per setting (default 1 2)")

    report = subcommands.add_parser("report", help="tables and plots from the runs on disk")
    report.add_argument("--runs", type=Path, default=DEFAULT_RUNS)
    report.add_argument("--output", type=Path, required=True, help="directory for the CSV/Markdown tables")
    report.add_argument("--plots", type=Path, default=None, help="directory for the PNGs (default: --output)")
    report.add_argument("--bootstrap-reps", type=int, default=2000)

    study = subcommands.add_parser("study", help="collapse rates with Wilson intervals and Fisher tests against PPO")
    study.add_argument("--runs", type=Path, required=True, help="directory of the runs to classify")
    study.add_argument("--output", type=Path, required=True, help="directory for the CSV/Markdown tables")
    study.add_argument("--plots", type=Path, default=None, help="directory for the PNGs (default: --output)")
    study.add_argument("--name", default="collapse_study", help="prefix of the files written")
    study.add_argument("--bootstrap-reps", type=int, default=2000)

    agreement = subcommands.add_parser("agreement", help="whether two engines' runs of the same grid differ")
    agreement.add_argument(
        "--runs",
        nargs=2,
        required=True,
        metavar="ENGINE=DIR",
        help="each engine's label and its run directory, e.g. sb3=benchmark_runs/agreement/sb3",
    )
    agreement.add_argument("--output", type=Path, required=True, help="directory for agreement.csv and agreement.md")
    agreement.add_argument("--bootstrap-reps", type=int, default=2000)

    throughput = subcommands.add_parser(
        "throughput", help="environment steps per CPU-second of the batched and the SB3 engine on one grid"
    )
    throughput.add_argument("--output", type=Path, required=True, help="directory for throughput.json and .md")
    throughput.add_argument("--task", default="pilot/CartPole-v1-shared")
    throughput.add_argument("--algorithms", nargs="+", default=None, help="default: the 16 arms of the study")
    throughput.add_argument("--seeds", nargs="+", type=int, default=list(range(20)))
    throughput.add_argument("--lr-scale", type=float, default=10.0)
    throughput.add_argument("--timesteps", type=int, default=20_000, help="steps per run")
    throughput.add_argument("--sb3-seeds", type=int, default=2, help="the SB3 engine trains the first N seeds")
    throughput.add_argument("--workers", type=int, default=None, help="processes at once (default: every core)")
    throughput.add_argument(
        "--group-size", type=_positive_int, default=GROUP_SIZE, help="the batched engine's most agents per group"
    )
    throughput.add_argument(
        "--scaling-sizes",
        nargs="+",
        type=_positive_int,
        default=list(SCALING_SIZES),
        help="group sizes at which PPO's minibatch step is timed per agent",
    )
    throughput.add_argument(
        "--compile", action="store_true", help="also train the batched engine's grid with its step compiled"
    )
    throughput.add_argument(
        "--compiled-only",
        action="store_true",
        help="with --compile, train the batched grid with its compiled step only (long budgets)",
    )
    throughput.add_argument(
        "--side-by-side",
        action="store_true",
        help="train the two engines at the same time, each with half of --workers, so that a change in the "
        "machine's speed during the command slows both alike (one batched grid: with --compile, --compiled-only)",
    )
    throughput.add_argument(
        "--profile-timesteps",
        type=_positive_int,
        default=None,
        help="steps per agent of the profiled first group (default: --timesteps)",
    )
    pilot = subcommands.add_parser("pilot", help="the powered study's settings, chosen from PPO's pilot runs")
    pilot.add_argument("--runs", type=Path, required=True, help="directory of PPO's pilot runs")
    pilot.add_argument("--output", type=Path, required=True, help="directory for <name>.csv and <name>.md")
    pilot.add_argument("--name", default="pilot", help="prefix of the files written")
    pilot.add_argument(
        "--keep",
        nargs="+",
        type=_kept_setting,
        default=[],
        metavar="TASK:LR",
        help="settings chosen earlier that stay chosen (e.g. pilot/CartPole-v1-shared:0.01); the rule fills the rest",
    )

    extension = subcommands.add_parser("extension", help="the powered collapse study's preregistered analysis")
    extension.add_argument(
        "--runs",
        type=Path,
        nargs="+",
        required=True,
        help="the study's runs: grid directories or task folders of one (a run may appear once)",
    )
    extension.add_argument("--output", type=Path, required=True, help="directory for the CSV/Markdown tables")
    extension.add_argument("--plots", type=Path, default=None, help="directory for the PNGs (default: --output)")
    extension.add_argument(
        "--sb3-runs", type=Path, default=None, help="the SB3 runner's PPO runs of the same settings (cross-check)"
    )
    extension.add_argument("--bootstrap-reps", type=int, default=2000)

    sensitivity = subcommands.add_parser(
        "sensitivity", help="the powered study's sensitivity reruns: each option's constant one step each way"
    )
    sensitivity.add_argument(
        "--runs", type=Path, nargs="+", required=True, help="the reruns (NAME@KEY=VALUE arms): grids or task folders"
    )
    sensitivity.add_argument(
        "--study", type=Path, nargs="+", required=True, help="the study's runs of the same setting (PPO, the options)"
    )
    sensitivity.add_argument("--output", type=Path, required=True, help="directory for the CSV/Markdown tables")
    sensitivity.add_argument("--bootstrap-reps", type=int, default=2000)

    compare = subcommands.add_parser(
        "compare-runs", help="whether two grids' runs of the same seeds are the same, and where they part"
    )
    compare.add_argument("first", type=Path, help="a grid's directory or one of its task folders")
    compare.add_argument("second", type=Path, help="another, with runs of the same seeds")
    compare.add_argument("--output", type=Path, default=None, help="a CSV file for the table, one row per run")

    power = subcommands.add_parser("power", help="what the collapse study's tests can detect, before it runs")
    power.add_argument("--runs-per-arm", type=int, nargs="+", default=[40, 50, 100], help="competent runs per cell")
    power.add_argument("--baseline-rates", type=float, nargs="+", default=[0.3, 0.5, 0.7], help="PPO's event rate")
    power.add_argument("--arms", type=int, default=15, help="comparisons with PPO in the Holm family")
    power.add_argument("--settings", type=int, default=3, help="settings pooled by the stratified (CMH) test")
    power.add_argument("--alpha", type=float, default=0.05)
    power.add_argument("--power", type=float, default=0.8)
    diagnose = subcommands.add_parser(
        "diagnose", help="one drop of a setting explained: which layer flips the policy, the gradients before it"
    )
    diagnose.add_argument("--task", required=True, help="the setting's task, e.g. pilot/CartPole-v1-shared")
    diagnose.add_argument("--lr-scale", type=float, required=True, help="the setting's learning-rate scale")
    diagnose.add_argument(
        "--algorithms",
        nargs="+",
        default=["ppo"],
        help="the first is trained seed after seed until a run drops, and diagnosed; the others train that seed",
    )
    diagnose.add_argument("--seeds", nargs="+", type=int, required=True, help="seeds to try, in order")
    diagnose.add_argument("--output", type=Path, required=True, help="folder for diagnosis.json and each run's files")
    diagnose.add_argument("--timesteps", type=int, default=None, help="override the task's budget (tests)")
    diagnose.add_argument("--threads", type=int, default=1, help="torch threads")
    pong = subcommands.add_parser("pong", help="the seed's Pong settings to 2M steps, resumable")
    pong.add_argument("action", choices=["train", "snapshot", "evaluate", "report"])
    pong.add_argument("--logs", type=Path, default=Path("logs/pong"), help="the zoo's log folder (-f)")
    pong.add_argument("--runs", type=Path, default=DEFAULT_RUNS / "pong", help="the committed checkpoints and logs")
    pong.add_argument("--algorithms", nargs="+", default=["ppo_logit", "ppo"], help="rl-zoo3 algorithm ids")
    pong.add_argument("--target", type=int, default=2_000_000, help="train: agent steps per run")
    pong.add_argument("--snapshot-every", type=float, default=600, help="train: seconds between snapshots")
    pong.add_argument("--steps", type=int, nargs="+", default=[500_000], help="evaluate: the checkpoints nearest")
    pong.add_argument("--episodes", type=int, default=10, help="evaluate: games per mode")
    pong.add_argument("--plot", type=Path, default=Path("docs/benchmarks/pong.png"))
    pong.add_argument("--table", type=Path, default=Path("docs/results/pong.md"))

    args = parser.parse_args(argv)

    if args.command in ("learn", "collapse"):
        from sb3_ppo_variants.benchmark.runs import check_arms, run_grid

        th.set_num_threads(args.threads)
        default_tasks = list(LEARNING_TASKS) if args.command == "learn" else ["CartPole-v1"]
        tasks = _parse_tasks(args.tasks, default_tasks)
        algorithms = parse_algorithms(args.algorithms, LEARNING_ALGORITHMS)
        grid_arguments = (args.runs, tasks, algorithms, args.seeds, args.lr_scales, args.timesteps)
        workers = args.workers or max(1, available_cores() // args.threads)
        with _terminate_as_interrupt():
            try:
                if args.engine == "batched":
                    from sb3_ppo_variants.benchmark.batched_runs import RefusedArms, run_batched_grid

                    if args.ray_address is not None:
                        raise SystemExit("--ray-address runs the sb3 engine; --engine batched runs in this process")
                    try:
                        device = check_device(args.device)
                    except ValueError as error:
                        raise SystemExit(f"--device: {error}") from None
                    if args.compile:
                        try:
                            check_compile(device)
                        except ValueError as error:
                            raise SystemExit(f"--compile: {error}") from None
                    try:
                        failures = run_batched_grid(
                            *grid_arguments,
                            args.progress,
                            workers=workers,
                            group_size=args.group_size,
                            device=args.device,
                            compile_step=args.compile,
                        )
                    except RefusedArms as error:
                        raise SystemExit(str(error)) from None
                else:
                    if args.device != "cpu":
                        raise SystemExit(
                            "--device is the batched engine's (--engine batched); the sb3 engine trains on the CPU"
                        )
                    if args.compile:
                        raise SystemExit("--compile is the batched engine's (--engine batched)")
                    try:
                        check_arms(tasks, algorithms)
                    except ValueError as error:
                        raise SystemExit(str(error)) from None
                    failures = run_grid(
                        *grid_arguments,
                        threads=args.threads,
                        workers=workers,
                        ray_address=args.ray_address,
                        ray_max_retries=args.ray_max_retries,
                        progress_bar=args.progress,
                    )
            except Terminated:  # the grid said what was done and how to resume
                return 128 + signal.SIGTERM
            except KeyboardInterrupt:
                return 130
        if failures:
            return 1
    elif args.command == "cost":
        from sb3_ppo_variants.benchmark.cost import COST_SETTINGS, algorithms_for, run_cost_benchmark

        for name in args.setting:  # a name the setting cannot measure stops the command before any timing
            try:
                algorithms_for(COST_SETTINGS[name], args.algorithms)
            except ValueError as error:
                raise SystemExit(str(error)) from None
        run_cost_benchmark(
            args.output,
            settings=args.setting,
            algorithms=args.algorithms,
            repeats=args.repeats,
            fps_repeats=args.fps_repeats,
            fps_timesteps=args.fps_timesteps,
            threads=args.threads,
            plots_directory=args.plots,
            plot_name=args.plot_name,
        )
    elif args.command == "report":
        from sb3_ppo_variants.benchmark.report import write_report

        write_report(args.runs, args.output, args.plots or args.output, bootstrap_reps=args.bootstrap_reps)
    elif args.command == "study":
        from sb3_ppo_variants.benchmark.collapse_study import write_study_report

        table = write_study_report(
            args.runs, args.output, args.plots or args.output, args.name, bootstrap_reps=args.bootstrap_reps
        )
        print(table.to_string(index=False))
    elif args.command == "agreement":
        from sb3_ppo_variants.benchmark.agreement import write_agreement_report

        directories = {}
        for entry in args.runs:
            engine, separator, directory = entry.partition("=")
            if not separator or not engine or not directory:
                raise SystemExit(f"--runs takes ENGINE=DIR, got {entry!r}")
            directories[engine] = Path(directory)
        if len(directories) != 2:
            raise SystemExit(f"--runs needs two different engine labels, got {list(directories)}")
        write_agreement_report(directories, args.output, reps=args.bootstrap_reps)
        print((args.output / "agreement.md").read_text(), end="")
    elif args.command == "throughput":
        from sb3_ppo_variants.benchmark.throughput import STUDY_ARMS, run_throughput, throughput_markdown

        if args.compiled_only and not args.compile:
            raise SystemExit("--compiled-only needs --compile")
        if args.side_by_side and args.compile and not args.compiled_only:
            raise SystemExit("--side-by-side trains one batched grid: with --compile, give --compiled-only too")
        result = run_throughput(
            args.output,
            _parse_tasks([args.task], [])[0],
            parse_algorithms(args.algorithms, STUDY_ARMS),
            args.seeds,
            args.lr_scale,
            args.timesteps,
            args.sb3_seeds,
            args.workers or available_cores(),
            args.group_size,
            tuple(args.scaling_sizes),
            args.compile,
            args.compiled_only,
            args.profile_timesteps,
            args.side_by_side,
        )
        print(throughput_markdown(result), end="")
    elif args.command == "pilot":
        from sb3_ppo_variants.benchmark.extension_study import format_pilot_report, write_pilot_report

        try:
            selection = write_pilot_report(args.runs, args.output, args.name, args.keep)
        except ValueError as error:
            raise SystemExit(str(error)) from None
        print(format_pilot_report(selection, args.runs), end="")
    elif args.command == "extension":
        from sb3_ppo_variants.benchmark.extension_study import write_extension_report

        analysis = write_extension_report(
            args.runs, args.output, args.plots, args.sb3_runs, bootstrap_reps=args.bootstrap_reps
        )
        print("\n".join(analysis.sentences) or "no arm besides PPO has runs")
        if analysis.skipped_training:
            print(
                f"{analysis.skipped_training} runs without training-episode records: left out of the training endpoints"
            )
    elif args.command == "sensitivity":
        from sb3_ppo_variants.benchmark.sensitivity import write_sensitivity_report

        verdicts = write_sensitivity_report(args.runs, args.study, args.output, bootstrap_reps=args.bootstrap_reps)
        print("\n".join(f"{row.task}, {row.option}: {row.verdict}" for row in verdicts.itertuples()))
    elif args.command == "compare-runs":
        from sb3_ppo_variants.benchmark.replication import compare_runs, format_comparison

        table = compare_runs(args.first, args.second)
        if args.output is not None:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            table.to_csv(args.output, index=False)
        print(format_comparison(table), end="")
    elif args.command == "power":
        from sb3_ppo_variants.benchmark.power import format_power_report

        print(
            format_power_report(
                args.runs_per_arm, args.baseline_rates, args.arms, args.alpha, args.power, settings=args.settings
            )
        )
    elif args.command == "diagnose":
        from sb3_ppo_variants.benchmark.diagnose import diagnose_setting, format_diagnosis

        th.set_num_threads(args.threads)
        task = _parse_tasks([args.task], [])[0]
        algorithms = parse_algorithms(args.algorithms, ("ppo",))
        from sb3_ppo_variants.benchmark.runs import check_arms

        try:
            check_arms([task], algorithms)
        except ValueError as error:
            raise SystemExit(str(error)) from None
        result = diagnose_setting(task, algorithms, args.lr_scale, args.seeds, args.output, args.timesteps)
        print(format_diagnosis(result), end="")
        return 0 if result["diagnosed"] is not None else 1
    elif args.command == "pong":
        from sb3_ppo_variants.benchmark import pong as pong_runs

        if args.action == "train":
            return pong_runs.train(args.logs, args.runs, args.algorithms, args.target, args.snapshot_every)
        for algo in args.algorithms:
            if args.action == "snapshot":
                print(f"{algo}: {pong_runs.snapshot(args.logs, args.runs, algo)}")
            elif args.action == "evaluate":
                for steps in args.steps:
                    result = pong_runs.evaluate(args.logs, args.runs, algo, steps, episodes=args.episodes)
                    print(algo, result["checkpoint"], result["deterministic"]["scores"], result["stochastic"]["scores"])
        if args.action == "report":
            print(pong_runs.write_report(args.runs, args.plot, args.table, tuple(args.algorithms)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
