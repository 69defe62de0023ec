"""Health metrics against hand-made values, the drop rule without SB3, and the configuration checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch as th
from torch import nn

from sb3_ppo_variants.collapse.callbacks import CollapseOnEval, CollapseOnRollout, HealthRecorder, RollbackToBest
from sb3_ppo_variants.collapse.detector import DropDetector, DropRule
from sb3_ppo_variants.collapse.health import (
    dead_unit_fraction,
    effective_rank,
    gradient_norm,
    rank_for_variance,
    shared_parameters,
)


def features_of_rank(rank: int, n: int = 200, width: int = 32, seed: int = 0) -> th.Tensor:
    generator = th.Generator().manual_seed(seed)
    return th.randn(n, rank, generator=generator, dtype=th.float64) @ th.randn(
        rank, width, generator=generator, dtype=th.float64
    )


@pytest.mark.parametrize("rank", [1, 3, 8])
def test_rank_of_features_of_known_rank(rank):
    features = features_of_rank(rank)
    assert rank_for_variance(features, 1.0) == rank
    assert rank_for_variance(features, 0.99) <= rank
    assert 1.0 <= effective_rank(features) <= rank + 1e-9


def test_effective_rank_of_equal_singular_values_is_their_number():
    # Orthogonal columns of equal norm: r equal singular values, exp(H(uniform over r)) = r.
    features = th.zeros(10, 6)
    features[:4, :4] = 2.0 * th.eye(4)
    assert effective_rank(features) == pytest.approx(4.0)
    assert rank_for_variance(features, 0.99) == 4
    # Singular values 3 and 1: p = (3/4, 1/4), erank = exp(-(3/4 ln 3/4 + 1/4 ln 1/4)).
    features = th.diag(th.tensor([3.0, 1.0]))
    expected = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert effective_rank(features) == pytest.approx(expected)
    # 9/10 of the energy in the first: 99 % needs both, 90 % only one.
    assert rank_for_variance(features, 0.99) == 2
    assert rank_for_variance(features, 0.9) == 1
    assert effective_rank(th.zeros(5, 3)) == 0.0


def test_dead_units_of_a_hand_made_activation_matrix():
    activations = th.tensor(
        [
            [0.0, 1.0, 0.0, 0.5],
            [0.0, 0.0, 0.0, 0.2],
            [0.0, 2.0, 0.0, 0.0],
        ]
    )  # units 0 and 2 never fire
    assert dead_unit_fraction(activations) == pytest.approx(0.5)
    tanh = th.tensor([[0.995, -0.999, 0.1], [-0.991, -1.0, 0.99]])  # units 0 and 1 saturated everywhere
    assert dead_unit_fraction(tanh, saturation=0.99) == pytest.approx(2 / 3)
    # A convolution: a channel is dead when it is zero at every position of every sample.
    conv = th.rand(4, 3, 5, 5)
    conv[:, 1] = 0.0
    assert dead_unit_fraction(conv) == pytest.approx(1 / 3)


class TwoHeads(nn.Module):
    """``shared`` feeds a policy head and a value head, with hand-picked weights."""

    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(2, 2, bias=False)
        self.policy = nn.Linear(2, 1, bias=False)
        self.value = nn.Linear(2, 1, bias=False)
        self.own = nn.Linear(2, 1, bias=False)  # only in the value path
        with th.no_grad():
            self.shared.weight.copy_(th.eye(2))
            self.policy.weight.copy_(th.tensor([[3.0, 4.0]]))
            self.value.weight.copy_(th.tensor([[300.0, 400.0]]))
            self.own.weight.copy_(th.tensor([[1.0, 1.0]]))

    def forward(self, x):
        hidden = self.shared(x)
        return self.policy(hidden), self.value(hidden) + self.own(x)


def test_gradient_ratio_on_a_two_head_toy_network():
    net = TwoHeads()
    x = th.tensor([[1.0, 2.0]])
    policy_out, value_out = net(x)
    shared = shared_parameters(policy_out, value_out, net.named_parameters())
    assert [name for name, _ in shared] == ["shared.weight"]
    params = [parameter for _, parameter in shared]
    # d(a·Wx)/dW = a xᵀ: norms |a||x| = 5·√5 and 500·√5.
    policy_norm = gradient_norm(policy_out.sum(), params)
    value_norm = gradient_norm(value_out.sum(), params)
    assert policy_norm == pytest.approx(5 * math.sqrt(5))
    assert value_norm == pytest.approx(500 * math.sqrt(5))
    assert value_norm / policy_norm == pytest.approx(100.0)


def test_drop_rule_without_sb3():
    detector = DropDetector(DropRule(margin=0.5, patience=2))
    decisions = [detector.observe(step, value) for step, value in enumerate([10, 10, 4, 4, 4, 9, 4, 4], start=1)]
    assert [d.collapsed for d in decisions] == [False, False, False, True, False, False, False, True]
    assert [d.new_best for d in decisions] == [True, False, False, False, False, False, False, False]
    assert detector.last_good_timesteps == 6 and detector.drop_start_timesteps == 7
    assert detector.observe(9, math.nan) is None
    detector.restart_from(20)
    assert detector.first_cause_timesteps() == 21 and not detector.below_returns


@pytest.mark.parametrize(
    ("build", "argument"),
    [
        (lambda: DropRule(margin=0.0), "margin"),
        (lambda: DropRule(patience=0), "patience"),
        (lambda: CollapseOnEval(keep_checkpoints=-1), "keep_checkpoints"),
        (lambda: CollapseOnEval(probe_size=1.5), "probe_size"),
        (lambda: CollapseOnEval(diagnose="yes"), "diagnose"),
        (lambda: CollapseOnRollout(rollout_window=0), "rollout_window"),
        (lambda: RollbackToBest(lr_scale=2.0), "lr_scale"),
        (lambda: HealthRecorder(every=0), "every"),
        (lambda: HealthRecorder(batch_size=1), "batch_size"),
        (lambda: HealthRecorder(save_path=3), "save_path"),
        (lambda: rank_for_variance(th.eye(3), 0.0), "fraction"),
    ],
)
def test_bad_configuration_raises_value_error_naming_the_argument(build, argument):
    with pytest.raises(ValueError, match=argument):
        build()


def test_rank_is_stable_under_float32():
    features = features_of_rank(4).float()
    assert rank_for_variance(features, 0.999) == 4
    assert np.isfinite(effective_rank(features))
