"""Re-run one setting of the collapse pilot with SB3's PPO, monitored, and draw its report.

The pilot (``sb3_ppo_variants.benchmark``, tasks ``pilot/CartPole-v1-shared``) trains SB3's
``PPO`` on CartPole-v1 with a shared 64-64 tanh trunk, ``PILOT_HYPERPARAMETERS`` with the
learning rate scaled, 8 environments, 300k steps, a greedy evaluation every 10k steps. This
script trains the same model from the same seed (same environments, same constructor, so the
same training as the pilot's run) and watches it with the package's parts, composed the way
SB3 composes ``EvalCallback`` and ``StopTrainingOnNoModelImprovement``::

    EvalCallback(eval_env, callback_after_eval=CollapseOnEval(...))  +  HealthRecorder(...)

It writes one run folder (``progress.csv``, ``evaluations.npz``, the Monitor files and
``collapse_monitor/``) and draws ``report.png`` and ``report.html`` with the diagnosis of the
first collapse. No rollback: the run shows what PPO does on its own.

::

    OMP_NUM_THREADS=1 python docs/scripts/collapse_showcase.py --lr-scale 10 --seed 0 -o runs/showcase
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import gymnasium as gym
import stable_baselines3
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_ppo_variants.benchmark.tasks import PILOT_HYPERPARAMETERS, SHARED_TRUNK
from sb3_ppo_variants.collapse.callbacks import CollapseOnEval, HealthRecorder
from sb3_ppo_variants.collapse.diagnosis import Diagnosis, describe
from sb3_ppo_variants.collapse.events import MonitorRecord
from sb3_ppo_variants.collapse.report import main as report_main

ENV_ID = "CartPole-v1"
N_ENVS = 8
TIMESTEPS = 300_000
EVAL_EVERY = 10_000
# The pilot's evaluation: 5 greedy episodes, one per environment, seeded 10_000 + seed.
N_EVAL_EPISODES = 5
EVAL_SEED_OFFSET = 10_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lr-scale", type=float, default=10.0, help="factor on the pilot's learning rate (1e-3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timesteps", type=int, default=TIMESTEPS)
    parser.add_argument("--margin", type=float, default=0.5, help="CollapseOnEval: relative drop from the best")
    parser.add_argument("--patience", type=int, default=3, help="CollapseOnEval: evaluations below in a row")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the run folder")
    args = parser.parse_args(argv)

    th.set_num_threads(1)
    run = args.output
    run.mkdir(parents=True, exist_ok=True)
    env = make_vec_env(ENV_ID, n_envs=N_ENVS, seed=args.seed, monitor_dir=str(run))
    eval_env = DummyVecEnv([lambda: Monitor(gym.make(ENV_ID)) for _ in range(N_EVAL_EPISODES)])
    eval_env.seed(EVAL_SEED_OFFSET + args.seed)
    hyperparameters = dict(PILOT_HYPERPARAMETERS)
    hyperparameters["learning_rate"] *= args.lr_scale
    model = PPO("MlpPolicy", env, seed=args.seed, device="cpu", policy_kwargs=SHARED_TRUNK, **hyperparameters)
    model.set_logger(configure(str(run), ["csv"]))

    on_eval = CollapseOnEval(margin=args.margin, patience=args.patience, keep_checkpoints=2, probe_size=2000, verbose=1)
    evaluation = EvalCallback(
        eval_env,
        eval_freq=EVAL_EVERY // N_ENVS,
        n_eval_episodes=N_EVAL_EPISODES,
        deterministic=True,
        best_model_save_path=str(run),
        log_path=str(run),
        callback_after_eval=on_eval,
    )
    health = HealthRecorder(every=10, save_path=run / "collapse_monitor")
    model.learn(args.timesteps, callback=[evaluation, health])

    settings = {
        "env_id": ENV_ID,
        "n_envs": N_ENVS,
        "seed": args.seed,
        "learning_rate": hyperparameters["learning_rate"],
        "hyperparameters": {key: value for key, value in hyperparameters.items()},
        "policy_kwargs": "SHARED_TRUNK (MlpTrunk 64-64 tanh, net_arch=[])",
        "timesteps": args.timesteps,
        "margin": args.margin,
        "patience": args.patience,
        "versions": {
            "stable_baselines3": stable_baselines3.__version__,
            "torch": th.__version__,
            "gymnasium": gym.__version__,
        },
        "torch_threads": th.get_num_threads(),
    }
    (run / "showcase.json").write_text(json.dumps(settings, indent=2) + "\n")

    record = MonitorRecord.read(run / "collapse_monitor")
    print(f"{len(record.events)} collapse(s) detected")
    for event in record.events:
        if event.diagnosis is not None:
            print(f"collapse {event.index} (detected at {event.detected_timesteps}):")
            print(describe(Diagnosis.load((run / "collapse_monitor" / event.diagnosis).parent)), end="")
    title = f"SB3 PPO, {ENV_ID}, shared 64-64 tanh trunk, lr {hyperparameters['learning_rate']:g}, seed {args.seed}"
    for output in (run / "report.png", run / "report.html"):
        status = report_main([str(run), "-o", str(output), "--title", title])
        if status != 0:
            return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
