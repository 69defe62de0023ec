"""The evidence runner: every variant against SB3's PPO, as ratios and learning curves.

Run it as ``python -m sb3_ppo_variants.benchmark {cost,learn,collapse,report}``; ``docs/benchmarks.md``
gives the commands behind every published number. Modules:

- ``algorithms``: the compared algorithms by short name;
- ``tasks``: environments, shared hyperparameters, budgets and reference scores;
- ``runs``: one seeded training run with periodic greedy evaluation, saved as JSON, and the grid of them;
- ``batched_runs``: the same grid trained by the batched engine, ``BatchedPPO`` (``--engine batched``);
- ``executors``: where a grid's runs execute (this process, local worker processes, Ray tasks);
- ``progress``: done, running, failed and to do over a grid, with the time left;
- ``cost``: paired ``train()`` and ``learn()`` timings against PPO;
- ``scores``: IQM with stratified-bootstrap intervals, and the collapse criterion;
- ``report`` and ``plots``: tables and figures.
"""

from sb3_ppo_variants.benchmark.algorithms import ALGORITHMS, Algorithm
from sb3_ppo_variants.benchmark.tasks import TASKS, Task

__all__ = ["ALGORITHMS", "TASKS", "Algorithm", "Task"]
