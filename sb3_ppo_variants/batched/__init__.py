"""Many PPO agents trained in lock-step in one process, with ``VariantPPO``'s own loss."""

from sb3_ppo_variants.batched.network import StackedActorCritic
from sb3_ppo_variants.batched.optim import StackedAdam, clip_grad_norms
from sb3_ppo_variants.batched.rollout import CartPoleAgents, generalized_advantages
from sb3_ppo_variants.batched.trainer import AGENT_OPTIONS, BatchedPPO, StackedRollout, batched_settings

__all__ = [
    "AGENT_OPTIONS",
    "BatchedPPO",
    "CartPoleAgents",
    "StackedActorCritic",
    "StackedAdam",
    "StackedRollout",
    "batched_settings",
    "clip_grad_norms",
    "generalized_advantages",
]
