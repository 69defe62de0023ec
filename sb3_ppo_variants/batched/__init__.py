"""Many PPO agents trained in lock-step in one process, with ``VariantPPO``'s own loss."""

from sb3_ppo_variants.batched.acrobot import AcrobotAgents
from sb3_ppo_variants.batched.minatar import MinAtarAgents
from sb3_ppo_variants.batched.network import StackedActorCritic
from sb3_ppo_variants.batched.optim import StackedAdam, clip_grad_norms
from sb3_ppo_variants.batched.rollout import (
    AGENT_ENVIRONMENTS,
    CartPoleAgents,
    agents_environment,
    generalized_advantages,
)
from sb3_ppo_variants.batched.trainer import (
    AGENT_OPTIONS,
    ARM_SETTINGS,
    Arm,
    BatchedPPO,
    StackedRollout,
    batched_settings,
)

__all__ = [
    "AGENT_ENVIRONMENTS",
    "AGENT_OPTIONS",
    "ARM_SETTINGS",
    "AcrobotAgents",
    "Arm",
    "BatchedPPO",
    "CartPoleAgents",
    "MinAtarAgents",
    "StackedActorCritic",
    "StackedAdam",
    "StackedRollout",
    "agents_environment",
    "batched_settings",
    "clip_grad_norms",
    "generalized_advantages",
]
