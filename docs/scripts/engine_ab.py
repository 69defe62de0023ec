"""The batched engine's minibatch step and rollout, each with the old and the new code path, alternating.

One process, one trainer, one rollout: the path is switched between repetitions, so that a change in the
virtual machine's speed slows both alike.

- the eager minibatch step of the throughput grid's first group (pilot/CartPole-v1-shared, ppo+logit+peaked,
  60 agents), with the 64-wide layers' gradients as ``gᵀ x`` (``network.dense``, ``WIDE_INPUTS = 64``) and with
  autograd's orientation everywhere (``WIDE_INPUTS`` above any width);
- one environment step of a rollout of 50 agents in SB3's one-environment shape, the hidden tanh without
  ``autograd.Function``'s dispatch (``network.tanh``) and through it.

Prints the medians, in CPU milliseconds of this process, and every repetition.
"""

import statistics
import time

import torch as th

import sb3_ppo_variants.batched.network as network
from sb3_ppo_variants.batched import BatchedPPO
from sb3_ppo_variants.benchmark.batched_runs import group_trainer
from sb3_ppo_variants.benchmark.throughput import STUDY_ARMS, _first_group, _minibatch_steps

th.set_num_threads(1)

arms, runs = _first_group("pilot/CartPole-v1-shared", list(STUDY_ARMS), list(range(20)), 10.0, 64)
trainer = group_trainer(arms, runs)
rollout = trainer.collect_rollout()
trainer.update(rollout)
steps = _minibatch_steps(trainer)
step_ms: dict[str, list[float]] = {"autograd": [], "wide": []}
for _ in range(6):
    for path in step_ms:
        network.WIDE_INPUTS = 64 if path == "wide" else 10**9
        start = time.process_time()
        trainer.update(rollout)
        step_ms[path].append((time.process_time() - start) * 1000 / steps)
network.WIDE_INPUTS = 64

direct_tanh = network.tanh
rollout_trainer = BatchedPPO(list(range(50)), env_id="CartPole-v1", n_envs=1, n_steps=2048, batch_size=64, n_epochs=10)
rollout_trainer.collect_rollout()
env_step_ms: dict[str, list[float]] = {"function": [], "direct": []}
for _ in range(4):
    for path in env_step_ms:
        network.tanh = direct_tanh if path == "direct" else network._Tanh.apply
        start = time.process_time()
        rollout_trainer.collect_rollout()
        env_step_ms[path].append((time.process_time() - start) * 1000 / rollout_trainer.n_steps)
network.tanh = direct_tanh

for title, table in (("eager 60-agent minibatch step", step_ms), ("rollout, per environment step", env_step_ms)):
    medians = {path: round(statistics.median(values), 3) for path, values in table.items()}
    print(f"{title}: medians {medians}, each { ({p: [round(v, 3) for v in vs] for p, vs in table.items()}) }")
