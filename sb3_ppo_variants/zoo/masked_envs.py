"""sb3-contrib's action-masking test environments under gymnasium ids, for ``rl_zoo3.train --gym-packages``.

sb3-contrib ships ``InvalidActionEnvDiscrete``, ``InvalidActionEnvMultiDiscrete`` and
``InvalidActionEnvMultiBinary`` (identity tasks whose ``action_masks()`` marks some actions invalid) without
registering them. Importing this module registers them with the sizes of sb3-contrib's own MaskablePPO tests,
so the zoo can train ``ppo_mask_variant`` on them::

    python -m rl_zoo3.train --algo ppo_mask_variant --env InvalidActionEnvDiscrete-v0 \\
        --gym-packages sb3_ppo_variants.zoo.masked_envs

The zoo's ``DummyVecEnv`` reaches ``action_masks()`` through its ``Monitor`` wrapper, so MaskablePPO gets the
masks at every step.
"""

import gymnasium as gym

MASKED_ENVS: dict[str, tuple[str, dict]] = {
    # sb3-contrib tests/test_invalid_actions.py: test_identity (55 of 70 actions invalid)
    "InvalidActionEnvDiscrete-v0": ("InvalidActionEnvDiscrete", {"dim": 70, "n_invalid_actions": 55}),
    # test_supports_multi_discrete_action_space and test_supports_multi_binary_action_space
    "InvalidActionEnvMultiDiscrete-v0": (
        "InvalidActionEnvMultiDiscrete",
        {"dims": [2, 3], "n_invalid_actions": 1},
    ),
    "InvalidActionEnvMultiBinary-v0": ("InvalidActionEnvMultiBinary", {"dims": 3, "n_invalid_actions": 1}),
}


def register_masked_envs() -> None:
    """Register the ids of ``MASKED_ENVS`` (idempotent)."""
    for env_id, (class_name, kwargs) in MASKED_ENVS.items():
        if env_id not in gym.envs.registry:
            gym.register(env_id, entry_point=f"sb3_contrib.common.envs:{class_name}", kwargs=kwargs)


register_masked_envs()
