"""Cost of the health recording, as a ratio to the training it watches (same process, same thread count).

::

    python -m sb3_ppo_variants.collapse.cost --env CartPole-v1 --repeats 5

One PPO iteration (collect a rollout, ``train()``) is timed by ``learn(n_steps)``; one
:meth:`HealthRecorder.record` is timed on the rollout buffer that iteration left. The overhead of
recording every ``N`` rollouts is ``record / iteration / N``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.logger import configure

from sb3_ppo_variants.collapse.health_recorder import HealthRecorder
from sb3_ppo_variants.policies import MlpTrunk


def measure(env_id: str, repeats: int, batch_size: int, seed: int = 0) -> dict[str, float]:
    model = PPO(
        "MlpPolicy",
        env_id,
        seed=seed,
        device="cpu",
        policy_kwargs=dict(
            features_extractor_class=MlpTrunk, features_extractor_kwargs=dict(hidden_sizes=(64, 64)), net_arch=[]
        ),
    )
    model.set_logger(configure(None, []))
    recorder = HealthRecorder(every=1, batch_size=batch_size)
    recorder.init_callback(model)
    model.learn(model.n_steps)  # warm-up
    iterations, records = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        model.learn(model.n_steps, reset_num_timesteps=False)
        iterations.append(time.perf_counter() - start)
        start = time.perf_counter()
        recorder.record()
        records.append(time.perf_counter() - start)
    iteration, record = float(np.median(iterations)), float(np.median(records))
    return {"iteration_s": iteration, "record_s": record, "ratio_per_rollout": record / iteration}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sb3_ppo_variants.collapse.cost", description=__doc__)
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    th.set_num_threads(args.threads)
    result = measure(args.env, args.repeats, args.batch_size)
    print(f"{args.env}, PPO defaults with a shared MlpTrunk(64, 64), {args.threads} thread(s), {args.repeats} repeats")
    print(f"one iteration {result['iteration_s']:.3f} s, one health record {result['record_s'] * 1e3:.1f} ms")
    for every in (1, 5, 10, 20):
        print(f"every {every:>2} rollouts: overhead ×{1 + result['ratio_per_rollout'] / every:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
