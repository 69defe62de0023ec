"""One registry names every variant: the exports, the zoo and the benchmark read it."""

import sb3_ppo_variants
from sb3_ppo_variants.benchmark.algorithms import ALGORITHMS, LABELS
from sb3_ppo_variants.registry import CONFIGURATIONS, CONTRIB_VARIANTS, VARIANTS, ZOO_VARIANTS
from sb3_ppo_variants.zoo import ALGORITHM_CLASS_NAMES, hyperparams_file
from sb3_ppo_variants.zoo.samplers import SAMPLERS


def test_every_export_is_a_registered_class_and_back():
    exported = {name for name in sb3_ppo_variants.__all__ if name not in ("CollapseMonitor", "__version__")}
    assert exported == {variant.algorithm_class.__name__ for variant in ZOO_VARIANTS}
    for variant in ZOO_VARIANTS:
        assert getattr(sb3_ppo_variants, variant.algorithm_class.__name__) is variant.algorithm_class


def test_zoo_and_benchmark_read_the_registry():
    assert ALGORITHM_CLASS_NAMES == {v.zoo_id: v.algorithm_class.__name__ for v in ZOO_VARIANTS}
    assert set(SAMPLERS) == set(ALGORITHM_CLASS_NAMES)
    for variant in ZOO_VARIANTS:
        assert hyperparams_file(variant.zoo_id).is_file()
    for variant in VARIANTS:
        assert ALGORITHMS[variant.name].algorithm_class is variant.algorithm_class
        assert LABELS[variant.name] == variant.label
    assert {entry.name for entry in CONFIGURATIONS} <= set(ALGORITHMS)
    # the contrib classes need masked or recurrent tasks: the benchmark's PPO tasks leave them out
    assert not {variant.name for variant in CONTRIB_VARIANTS} & set(ALGORITHMS)


def test_the_adam_recipe_is_sb3_ppo_with_equal_betas():
    from stable_baselines3 import PPO

    model = ALGORITHMS["adam_equal_betas"].build(
        "MlpPolicy", "CartPole-v1", n_steps=32, policy_kwargs=dict(net_arch=[16])
    )
    assert type(model) is PPO
    assert model.policy.optimizer.defaults["betas"] == (0.99, 0.99)
    assert model.policy.mlp_extractor.policy_net[0].out_features == 16
