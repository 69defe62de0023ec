"""Train an algorithm id with its shipped hyperparameters over several seeds, and score each final model.

Each seed is a real ``python -m rl_zoo3.train`` run (the zoo's own command, with the
hyperparameters this package ships), followed by an evaluation of the saved final model
with SB3's ``evaluate_policy`` on a separately seeded environment::

    python -m sb3_ppo_variants.zoo.evaluate --algo ppo_kl --env Pendulum-v1 --seeds 0 1 2 \\
        --folder runs/kl_pendulum --episodes 20 --output docs/results/kl_pendulum.json

Finished seeds are skipped when the command is run again with the same folder, so an
interrupted evaluation resumes. The JSON output records the command, versions, hardware,
seeds, date and every score.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np


def _final_model(run_root: Path, algo: str, env_id: str) -> Path | None:
    candidates = sorted((run_root / algo).glob(f"{env_id}_*/{env_id}.zip"))
    return candidates[-1] if candidates else None


def train_seed(algo: str, env_id: str, seed: int, folder: Path, n_timesteps: int | None, threads: int) -> Path:
    """Run ``rl_zoo3.train`` for one seed unless its final model already exists; return the model path."""
    run_root = folder / f"seed{seed}"
    existing = _final_model(run_root, algo, env_id)
    if existing is not None:
        return existing
    command = [
        sys.executable, "-m", "rl_zoo3.train", "--algo", algo, "--env", env_id, "--seed", str(seed),
        "-f", str(run_root), "--eval-freq", "-1", "--num-threads", str(threads), "--log-interval", "-1",
    ]  # fmt: skip
    if n_timesteps is not None:
        command += ["-n", str(n_timesteps)]
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    model = _final_model(run_root, algo, env_id)
    if model is None:
        raise RuntimeError(f"rl_zoo3.train finished but wrote no {env_id}.zip under {run_root}")
    return model


def score_model(algo: str, env_id: str, model_path: Path, seed: int, episodes: int) -> list[float]:
    """Deterministic episode returns of a saved model, with the zoo's env wrappers and normalisation."""
    from rl_zoo3.utils import ALGOS, create_test_env, get_saved_hyperparams
    from stable_baselines3.common.evaluation import evaluate_policy

    import sb3_ppo_variants.zoo

    sb3_ppo_variants.zoo.register()
    stats_path = model_path.parent / env_id
    hyperparams, maybe_stats_path = get_saved_hyperparams(str(stats_path), norm_reward=False, test_mode=True)
    env = create_test_env(
        env_id, n_envs=1, stats_path=maybe_stats_path, seed=seed, log_dir=None, should_render=False,
        hyperparams=hyperparams,
    )  # fmt: skip
    model = ALGOS[algo].load(model_path, env=env, device="cpu")
    returns, _ = evaluate_policy(model, env, n_eval_episodes=episodes, deterministic=True, return_episode_rewards=True)
    env.close()
    return [float(value) for value in np.atleast_1d(returns)]


def provenance(argv: list[str]) -> dict[str, Any]:
    """Command, versions, hardware and date for a result file (from the benchmark runner's record)."""
    from sb3_ppo_variants.benchmark.provenance import provenance as measured_with

    record = measured_with()
    packages = record["packages"]
    gpu = "a GPU" if record["cuda_available"] else "no GPU"
    return {
        "command": "python -m sb3_ppo_variants.zoo.evaluate " + " ".join(argv),
        "date": record["date_utc"].split()[0],
        "python": record["python"],
        "torch": packages["torch"],
        "stable_baselines3": packages["stable-baselines3"],
        "rl_zoo3": packages["rl-zoo3"],
        "gymnasium": packages["gymnasium"],
        "sb3_ppo_variants": packages["sb3-ppo-variants"],
        "git_commit": record["git_commit"] or "unknown",
        "hardware": f"{record['cpu']}, {record['cpu_count']} cores, {gpu}",
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m sb3_ppo_variants.zoo.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--algo", required=True, help="rl-zoo3 id, e.g. ppo_kl")
    parser.add_argument("--env", required=True, help="environment id, e.g. Pendulum-v1")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--folder", type=Path, required=True, help="where the zoo runs go (reused to resume)")
    parser.add_argument("-n", "--n-timesteps", type=int, default=None, help="override the yml's n_timesteps")
    parser.add_argument("--episodes", type=int, default=20, help="evaluation episodes per seed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training run")
    parser.add_argument("--output", type=Path, default=None, help="JSON file for the result")
    args = parser.parse_args(argv)

    per_seed = []
    for seed in args.seeds:
        model = train_seed(args.algo, args.env, seed, args.folder, args.n_timesteps, args.threads)
        returns = score_model(args.algo, args.env, model, seed=10_000 + seed, episodes=args.episodes)
        per_seed.append({"seed": seed, "mean_return": float(np.mean(returns)), "returns": returns})
        print(f"seed {seed}: mean return {np.mean(returns):.1f} over {len(returns)} episodes", flush=True)
    seed_means = [entry["mean_return"] for entry in per_seed]
    result = {
        "algo": args.algo,
        "env": args.env,
        "n_timesteps": args.n_timesteps,
        "episodes_per_seed": args.episodes,
        "mean_over_seeds": float(np.mean(seed_means)),
        "std_over_seeds": float(np.std(seed_means)),
        "per_seed": per_seed,
        **provenance(argv),
    }
    print(f"{args.algo} on {args.env}: {result['mean_over_seeds']:.1f} ± {result['std_over_seeds']:.1f} "
          f"(mean ± std of {len(seed_means)} seed means)")  # fmt: skip
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
