"""Features extractors for actor-critic policies whose two heads share a trunk.

SB3's ``MlpPolicy`` keeps the actor and the critic apart (its ``FlattenExtractor`` has no
weights), so a value-loss gradient never reaches the policy's parameters. The seed's collapses
happened with a shared convolutional trunk; these extractors give the same structure to vector and
MinAtar observations:

    policy_kwargs=dict(features_extractor_class=MlpTrunk, features_extractor_kwargs=dict(hidden_sizes=(64, 64)),
                       net_arch=[])

With ``net_arch=[]`` both heads are a single linear layer on the shared features.
"""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import torch as th
from stable_baselines3.common.preprocessing import get_flattened_obs_dim
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn


class MlpTrunk(BaseFeaturesExtractor):
    """A multilayer perceptron on the flattened observation: ``Linear → activation`` per hidden size.

    :param observation_space: a ``Box`` observation space
    :param hidden_sizes: width of each hidden layer (at least one); the last is the features' size
    :param activation_fn: activation after every hidden layer
    """

    def __init__(
        self,
        observation_space: gym.Space,
        hidden_sizes: Sequence[int] = (64, 64),
        activation_fn: type[nn.Module] = nn.Tanh,
    ) -> None:
        sizes = list(hidden_sizes)
        if not sizes or any(not isinstance(size, int) or size < 1 for size in sizes):
            raise ValueError(f"hidden_sizes must be a non-empty sequence of positive integers, got {hidden_sizes!r}")
        super().__init__(observation_space, features_dim=sizes[-1])
        layers: list[nn.Module] = [nn.Flatten()]
        inputs = get_flattened_obs_dim(observation_space)
        for size in sizes:
            layers += [nn.Linear(inputs, size), activation_fn()]
            inputs = size
        self.trunk = nn.Sequential(*layers)

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return self.trunk(observations)


class MinAtarCNN(BaseFeaturesExtractor):
    """The MinAtar paper's network (Young & Tian 2019): one 3×3 convolution with 16 filters on the
    10×10×C channel-last grid, then a fully connected hidden layer.

    :param observation_space: a channel-last ``Box`` of shape ``(10, 10, C)`` (MinAtar's gymnasium ids)
    :param features_dim: width of the fully connected layer
    :param n_filters: number of convolution filters
    """

    def __init__(self, observation_space: gym.Space, features_dim: int = 128, n_filters: int = 16) -> None:
        shape = getattr(observation_space, "shape", None)
        if shape is None or len(shape) != 3:
            raise ValueError(f"observation_space must be a channel-last (height, width, channels) Box, got {shape}")
        super().__init__(observation_space, features_dim=features_dim)
        height, width, channels = shape
        self.conv = nn.Sequential(nn.Conv2d(channels, n_filters, kernel_size=3, stride=1), nn.ReLU())
        self.linear = nn.Sequential(
            nn.Flatten(), nn.Linear(n_filters * (height - 2) * (width - 2), features_dim), nn.ReLU()
        )

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return self.linear(self.conv(observations.float().permute(0, 3, 1, 2)))
