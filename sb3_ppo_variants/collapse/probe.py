"""Where a collapse's probe batch comes from: the best policy playing an environment, else its rollout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.vec_env import VecEnv

__all__ = ["ProbeSource"]


class ProbeSource:
    """The states on which a collapse is diagnosed, as the seed's notebook chose them: met by the good policy.

    With an environment (the evaluation's), the best model plays ``size`` states there; without
    one, the rollout collected when the best return was seen stands in (:meth:`remember_rollout`).

    :param size: states in the probe batch (0: none).
    """

    def __init__(self, size: int):
        self.size = size
        self.best_rollout: np.ndarray | None = None

    def remember_rollout(self, model: BaseAlgorithm) -> None:
        """Keep the observations of ``model``'s last rollout (on-policy algorithms, array observations)."""
        buffer = getattr(model, "rollout_buffer", None)
        if self.size and buffer is not None and not isinstance(buffer.observations, dict):
            self.best_rollout = buffer.observations.reshape(-1, *buffer.obs_shape).copy()

    def collect(
        self, best_model_path: Path | None, algorithm: type[BaseAlgorithm], env: VecEnv | None
    ) -> np.ndarray | None:
        """``size`` states, or ``None`` when there is nothing to collect them from."""
        if env is not None and best_model_path is not None:
            # imported here: its tables need pandas, which the callbacks do not load until a collapse
            from sb3_ppo_variants.collapse import diagnosis

            best: BasePolicy | BaseAlgorithm
            try:
                best = diagnosis.load_policy(best_model_path, device="cpu")
            except ValueError:
                best = algorithm.load(best_model_path, device="cpu")
            return diagnosis.collect_probe(best, env, self.size, seed=0)
        if self.best_rollout is not None:
            return self.best_rollout[: self.size]
        return None
