"""Pong with the seed's settings: ``ppo_logit`` and SB3's ``ppo`` with the same values, to 2M agent steps.

Both runs are rl-zoo3's own ``train`` command with seed 0. A run stopped at any point continues from its last
checkpoint with the zoo's ``-i <checkpoint> -n <remaining steps>``. The zoo then counts steps from 0 again in a new
run folder, so each run folder is one *segment*, and a segment starts at the global step count of the checkpoint it
continues. The weights, the Adam state and every hyperparameter are in the checkpoint, and the seed's Pong schedules
are constant, so only the environments restart. Atari needs no other state: there is no ``VecNormalize``, and the
frame stack refills on the first reset.

The tree (``benchmark_runs/pong``) keeps, per algorithm, only the latest checkpoint, named
``rl_model_<global steps>_steps.zip``, and every segment's Monitor files and zoo configuration in
``from_<start>/``::

    python -m sb3_ppo_variants.benchmark pong train     # start, or continue from the tree's checkpoints, to 2M
    python -m sb3_ppo_variants.benchmark pong snapshot  # the latest checkpoint and the Monitor files into the tree
    python -m sb3_ppo_variants.benchmark pong evaluate --steps 500000
    python -m sb3_ppo_variants.benchmark pong report
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

ENV_ID = "PongNoFrameskip-v4"
ALGORITHMS = ("ppo_logit", "ppo")
TARGET_STEPS = 2_000_000
SAVE_FREQ = 100_000
SEED = 0
# AtariWrapper repeats each action on 4 frames, and the zoo's Monitor sits inside it: its episode lengths are
# frames (with the at most 30 no-op frames of each reset) and its rewards the unclipped game score.
FRAME_SKIP = 4
# SB3's PPO gets the values of hyperparams/ppo_logit.yml's atari entry from this file, next to the runs.
CONF_FILES = {"ppo": "ppo_seed_settings.yml"}
CHECKPOINT_NAME = re.compile(r"rl_model_(\d+)_steps\.zip$")


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    steps: int  # global agent steps


@dataclass(frozen=True)
class Segment:
    folder: Path  # an rl-zoo3 run folder
    start: int  # global agent steps of the checkpoint it continues (0 for a fresh run)


def checkpoint_steps(path: Path | str) -> int | None:
    match = CHECKPOINT_NAME.search(Path(path).name)
    return int(match.group(1)) if match else None


def is_complete(path: Path) -> bool:
    """A model file written to the end: a kill during ``save()`` leaves a truncated zip."""
    try:
        with zipfile.ZipFile(path) as archive:
            return "data" in archive.namelist() and archive.testzip() is None
    except (zipfile.BadZipFile, OSError):
        return False


def saved_steps(path: Path) -> int:
    """``num_timesteps`` stored in a saved model (the zoo's final model has no step count in its name)."""
    with zipfile.ZipFile(path) as archive:
        return int(json.loads(archive.read("data"))["num_timesteps"])


def segment_start(folder: Path, env_id: str = ENV_ID) -> int:
    """Global steps at the start of a zoo run folder, from the ``--trained-agent`` recorded in its args.yml."""
    arguments = dict(yaml.load((folder / env_id / "args.yml").read_text(), Loader=yaml.UnsafeLoader))
    trained_agent = arguments.get("trained_agent") or ""
    if not trained_agent:
        return 0
    source = Path(trained_agent)
    steps = checkpoint_steps(source)
    if steps is None:
        raise ValueError(f"{folder} continues {trained_agent}: continue from a checkpoint rl_model_<steps>_steps.zip")
    if (source.parent / env_id / "args.yml").exists():  # another segment's own checkpoint counts from its start
        return segment_start(source.parent, env_id) + steps
    return steps


def segments(logs: Path, algo: str, env_id: str = ENV_ID) -> list[Segment]:
    """The zoo run folders of ``algo`` under ``logs``, by start."""
    folders = [folder for folder in (logs / algo).glob(f"{env_id}_*") if (folder / env_id / "args.yml").exists()]
    found = sorted((Segment(folder, segment_start(folder, env_id)) for folder in folders), key=lambda s: s.start)
    starts = [segment.start for segment in found]
    if len(set(starts)) != len(starts):
        raise ValueError(f"two run folders under {logs / algo} start at the same step: {found}")
    return found


def latest_checkpoint(segment: Segment, env_id: str = ENV_ID) -> Checkpoint | None:
    """The segment's newest complete checkpoint, or its final model, with global steps."""
    candidates = [
        Checkpoint(path, segment.start + steps)
        for path in segment.folder.glob("rl_model_*_steps.zip")
        if (steps := checkpoint_steps(path)) is not None
    ]
    final = segment.folder / f"{env_id}.zip"
    if is_complete(final):
        candidates.append(Checkpoint(final, segment.start + saved_steps(final)))
    for candidate in sorted(candidates, key=lambda c: c.steps, reverse=True):
        if is_complete(candidate.path):
            return candidate
    return None


def tree_checkpoint(runs: Path, algo: str) -> Checkpoint | None:
    """The checkpoint kept in the tree for ``algo``."""
    candidates = [
        Checkpoint(path, steps)
        for path in (runs / algo).glob("rl_model_*_steps.zip")
        if (steps := checkpoint_steps(path)) is not None and is_complete(path)
    ]
    return max(candidates, key=lambda c: c.steps, default=None)


def snapshot(logs: Path, runs: Path, algo: str, env_id: str = ENV_ID) -> Checkpoint | None:
    """Copy every segment's Monitor files and zoo configuration, and the newest checkpoint, into ``runs/algo``.

    The tree keeps one checkpoint per algorithm: a newer one replaces it, renamed by its global steps.
    """
    destination = runs / algo
    newest = tree_checkpoint(runs, algo)
    for segment in segments(logs, algo, env_id):
        copy = destination / f"from_{segment.start}"
        copy.mkdir(parents=True, exist_ok=True)
        for monitor in segment.folder.glob("*.monitor.csv"):
            shutil.copy2(monitor, copy / monitor.name)
        for name in ("args.yml", "config.yml", "command.txt"):
            if (segment.folder / env_id / name).exists():
                shutil.copy2(segment.folder / env_id / name, copy / name)
        checkpoint = latest_checkpoint(segment, env_id)
        if checkpoint is not None and (newest is None or checkpoint.steps > newest.steps):
            newest = checkpoint
    if newest is None or newest.path.parent == destination:
        return newest
    kept = destination / f"rl_model_{newest.steps}_steps.zip"
    partial = kept.with_suffix(".partial")  # a snapshot killed while copying keeps the previous checkpoint
    shutil.copy2(newest.path, partial)
    os.replace(partial, kept)
    for older in destination.glob("rl_model_*_steps.zip"):
        if older != kept:
            older.unlink()
    return Checkpoint(kept, newest.steps)


def train_command(
    algo: str,
    logs: Path,
    runs: Path,
    target: int = TARGET_STEPS,
    env_id: str = ENV_ID,
    save_freq: int = SAVE_FREQ,
    seed: int = SEED,
) -> list[str] | None:
    """rl-zoo3's command that starts ``algo``, or continues it from the tree's checkpoint, up to ``target`` steps.

    ``None`` once the tree's checkpoint has reached ``target``.
    """
    command = [sys.executable, "-m", "rl_zoo3.train", "--algo", algo, "--env", env_id]
    if algo in CONF_FILES:
        command += ["--conf-file", str(runs / CONF_FILES[algo])]
    command += ["--seed", str(seed), "--num-threads", "1", "--save-freq", str(save_freq), "--eval-freq", "-1"]
    command += ["--log-interval", "20", "-f", str(logs)]
    checkpoint = tree_checkpoint(runs, algo)
    if checkpoint is None:
        return [*command, "-n", str(target)]
    if checkpoint.steps >= target:
        return None
    return [*command, "-i", str(checkpoint.path), "-n", str(target - checkpoint.steps)]


def train(logs: Path, runs: Path, algorithms: list[str], target: int, snapshot_every: float) -> int:
    """Start or continue every algorithm at once (one torch thread each), snapshotting the tree as they run."""
    logs.mkdir(parents=True, exist_ok=True)
    processes = {}
    for algo in algorithms:
        command = train_command(algo, logs, runs, target)
        if command is None:
            print(f"{algo}: {target} steps reached")
            continue
        print(" ".join(command), flush=True)
        with open(logs / f"{algo}.log", "a") as log:
            environment = {**os.environ, "OMP_NUM_THREADS": "1"}
            processes[algo] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
    interrupted = False
    running = list(processes.values())
    while running:
        try:
            running[0].wait(timeout=snapshot_every)
        except subprocess.TimeoutExpired:
            pass
        except KeyboardInterrupt:  # the zoo saves each model on Ctrl-C; wait for it
            interrupted = True
            for process in running:
                process.wait()
        for algo in processes:
            print(f"{algo}: {snapshot(logs, runs, algo)}", flush=True)
        running = [process for process in running if process.poll() is None]
    failed = [algo for algo, process in processes.items() if process.returncode != 0]
    if failed or interrupted:
        print(f"stopped: {', '.join(failed) or 'interrupted'}; run the same command to continue")
        return 130 if interrupted else 1
    return 0


def nearest_checkpoint(logs: Path, runs: Path, algo: str, steps: int, env_id: str = ENV_ID) -> tuple[Checkpoint, Path]:
    """The checkpoint nearest ``steps`` among the run folders and the tree, and its zoo configuration folder."""
    candidates = [
        (Checkpoint(path, segment.start + local), segment.folder / env_id)
        for segment in segments(logs, algo, env_id)
        for path in segment.folder.glob("rl_model_*_steps.zip")
        if (local := checkpoint_steps(path)) is not None
    ]
    kept = tree_checkpoint(runs, algo)
    configurations = sorted((runs / algo).glob("from_*/config.yml"))
    if kept is not None and configurations:
        candidates.append((kept, configurations[-1].parent))
    complete = [candidate for candidate in candidates if is_complete(candidate[0].path)]
    if not complete:
        raise FileNotFoundError(f"no checkpoint of {algo} under {logs} or {runs}")
    return min(complete, key=lambda candidate: abs(candidate[0].steps - steps))


def evaluate(
    logs: Path, runs: Path, algo: str, steps: int, episodes: int = 10, seed: int = SEED, env_id: str = ENV_ID
) -> dict[str, Any]:
    """Full-game scores of the checkpoint nearest ``steps``, greedy and sampled, in the zoo's test environment.

    Written to ``runs/algo/evaluation_<steps>.json``.
    """
    import torch as th
    from rl_zoo3.utils import ALGOS, create_test_env, get_saved_hyperparams
    from stable_baselines3.common.evaluation import evaluate_policy

    import sb3_ppo_variants.zoo
    from sb3_ppo_variants.benchmark.provenance import provenance

    th.set_num_threads(1)
    sb3_ppo_variants.zoo.register()
    checkpoint, configuration = nearest_checkpoint(logs, runs, algo, steps, env_id)
    hyperparams, stats_path = get_saved_hyperparams(str(configuration), test_mode=True)
    result: dict[str, Any] = {
        "algo": algo,
        "checkpoint": checkpoint.path.name,
        "steps": checkpoint.steps,
        "episodes": episodes,
        "seed": seed,
    }
    for mode in ("deterministic", "stochastic"):
        # a copy each time: create_test_env deletes the env_wrapper (AtariWrapper) from the dict it is given
        env = create_test_env(
            env_id, n_envs=1, stats_path=stats_path, seed=seed, log_dir=None, should_render=False,
            hyperparams=dict(hyperparams),
        )  # fmt: skip
        model = ALGOS[algo].load(checkpoint.path, env=env, device="cpu")
        # the Monitor inside AtariWrapper gives full games and the unclipped score
        scores, frames = evaluate_policy(
            model, env, n_eval_episodes=episodes, deterministic=mode == "deterministic", return_episode_rewards=True
        )
        env.close()
        result[mode] = {"scores": np.atleast_1d(scores).tolist(), "frames": np.atleast_1d(frames).tolist()}
    result["measured_with"] = provenance()
    output = runs / algo / f"evaluation_{steps}.json"
    output.write_text(json.dumps(result, indent=2) + "\n")
    return result


def training_games(runs: Path, algo: str, frame_skip: int = FRAME_SKIP) -> pd.DataFrame:
    """Every training game of the stitched run: global agent steps at its end, score, segment start.

    Each segment is offset by its start and ends where the next one starts, since what a stopped run played
    after its last checkpoint was lost. Steps count the frames of finished games over the four environments.
    """
    from stable_baselines3.common.monitor import load_results

    folders = sorted((runs / algo).glob("from_*"), key=lambda folder: int(folder.name.removeprefix("from_")))
    starts = [int(folder.name.removeprefix("from_")) for folder in folders]
    parts = []
    for folder, start, end in zip(folders, starts, [*starts[1:], None], strict=True):
        games = load_results(str(folder))
        if games.empty:
            continue
        part = pd.DataFrame(
            {
                "steps": start + games["l"].cumsum().to_numpy() / frame_skip,
                "score": games["r"].to_numpy(dtype=float),
                "seconds": games["t"].to_numpy(dtype=float),
                "segment": start,
            }
        )
        parts.append(part if end is None else part[part["steps"] <= end])
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["steps", "score", "seconds"])


def steps_per_second(games: pd.DataFrame) -> list[float]:
    """Agent steps per second of each segment, over its finished games."""
    rates = []
    for start, part in games.groupby("segment"):
        if part["seconds"].iloc[-1] > 0:
            rates.append(float((part["steps"].iloc[-1] - start) / part["seconds"].iloc[-1]))
    return rates


def training_score(games: pd.DataFrame, steps: int, window: int = 10) -> float | None:
    """Mean score of the last ``window`` training games finished by ``steps``; None before ``steps`` is reached."""
    if games.empty or games["steps"].iloc[-1] < steps:
        return None
    return float(games.loc[games["steps"] <= steps, "score"].tail(window).mean())


def _evaluation_cell(runs: Path, algo: str, steps: int, mode: str) -> str:
    path = runs / algo / f"evaluation_{steps}.json"
    if not path.exists():
        return "not run"
    result = json.loads(path.read_text())
    scores = np.asarray(result[mode]["scores"])
    return f"{scores.mean():+.1f} ± {scores.std():.1f} ({result['steps']:,} steps)"


def write_report(runs: Path, plot: Path, table: Path, algorithms: tuple[str, ...] = ALGORITHMS) -> str:
    """The learning curve of every algorithm in one plot, and a Markdown table of scores and speed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sb3_ppo_variants.benchmark.algorithms import ALGORITHMS as COMPARED
    from sb3_ppo_variants.benchmark.plots import colour, label

    names = {algorithm.zoo_id: algorithm.name for algorithm in COMPARED.values() if algorithm.zoo_id}
    figure, axis = plt.subplots(figsize=(7.5, 4.2))
    rows = [
        "| algorithm | kept checkpoint (agent steps) | training games | training score at 0.5M | at 2M | "
        "greedy evaluation at 0.5M | sampled at 0.5M | greedy at 2M | sampled at 2M | agent steps per second |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for algo in algorithms:
        games = training_games(runs, algo)
        kept = tree_checkpoint(runs, algo)
        name = names.get(algo, algo)
        if not games.empty:
            rolling = games["score"].rolling(10, min_periods=1).mean()
            axis.plot(games["steps"] / 1e6, rolling, color=colour(name), linewidth=2, label=f"{label(name)}, {algo}")
            axis.scatter(games["steps"] / 1e6, games["score"], color=colour(name), s=3, alpha=0.3)
        milestones = (500_000, TARGET_STEPS)
        scores = [training_score(games, steps) for steps in milestones]
        evaluations = [_evaluation_cell(runs, algo, s, m) for s in milestones for m in ("deterministic", "stochastic")]
        rates = ", ".join(f"{rate:.0f}" for rate in steps_per_second(games)) if not games.empty else ""
        cells = [
            f"`{algo}`",
            f"{kept.steps:,}" if kept else "0",
            str(len(games)),
            *(f"{score:+.1f}" if score is not None else "not reached" for score in scores),
            *evaluations,
            rates,
        ]
        rows.append("| " + " | ".join(cells) + " |")
    axis.axvline(0.5, color="grey", linestyle="--", linewidth=0.8)
    axis.axhline(20, color="grey", linestyle=":", linewidth=0.8)
    axis.set_xlabel("agent steps (millions; 4 frames each)")
    axis.set_ylabel("training game score (mean of 10)")
    axis.set_ylim(-21.5, 21.5)
    axis.set_xlim(left=0)
    axis.set_title("PongNoFrameskip-v4, the seed's settings, seed 0")
    axis.legend(loc="upper left")
    figure.tight_layout()
    plot.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(plot, dpi=120)
    plt.close(figure)
    markdown = "\n".join(rows) + "\n"
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text(markdown)
    return markdown
