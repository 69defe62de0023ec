"""Many actor-critic MLPs as one: SB3's ``MlpPolicy`` parameters stacked on a leading agent axis."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch as th
from stable_baselines3.common.policies import ActorCriticPolicy

# SB3's MlpPolicy with separate networks, net_arch=dict(pi=[64, 64], vf=[64, 64]), tanh: its state-dict names
HIDDEN_LAYERS = ("mlp_extractor.policy_net", "mlp_extractor.value_net")
HEADS = ("action_net", "value_net")
ORTHOGONAL_GAINS = {"mlp_extractor": math.sqrt(2.0), "action_net": 0.01, "value_net": 1.0}
"""SB3's ``ActorCriticPolicy`` initialisation gains (``ortho_init=True``); biases start at 0."""


def _linear(inputs: th.Tensor, weight: th.Tensor, bias: th.Tensor) -> th.Tensor:
    """``x Wᵀ + b`` for every agent: inputs ``(S, B, in)``, weight ``(S, out, in)``, bias ``(S, out)``."""
    return th.baddbmm(bias.unsqueeze(1), inputs, weight.transpose(1, 2))


class StackedActorCritic:
    """``S`` independent actor-critics, each SB3's ``MlpPolicy`` with a separate actor and critic.

    ``parameters`` maps SB3's state-dict names (``mlp_extractor.policy_net.0.weight``, ``action_net.bias``, …)
    to tensors with the agents on the first axis, so agent ``k``'s network is SB3's with ``parameters[name][k]``.

    :param parameters: the stacked parameters, by SB3's names.
    :param n_hidden_layers: hidden layers in each of the actor and the critic.
    """

    def __init__(self, parameters: dict[str, th.Tensor], n_hidden_layers: int = 2) -> None:
        self.parameters = parameters
        self.n_hidden_layers = n_hidden_layers

    @property
    def n_agents(self) -> int:
        return int(self.parameters["action_net.weight"].shape[0])

    @classmethod
    def initialise(
        cls,
        observation_size: int,
        n_actions: int,
        generators: Sequence[th.Generator],
        hidden_sizes: Sequence[int] = (64, 64),
    ) -> StackedActorCritic:
        """Orthogonal weights with SB3's gains and zero biases, agent ``k`` drawn from ``generators[k]`` only.

        :param observation_size: flat observation size.
        :param n_actions: actions of the Discrete action space.
        :param generators: one torch generator per agent.
        :param hidden_sizes: hidden layer widths, the same for the actor and the critic.
        """
        shapes: dict[str, tuple[int, int]] = {}
        for net in HIDDEN_LAYERS:
            size = observation_size
            for index, width in enumerate(hidden_sizes):
                shapes[f"{net}.{2 * index}"] = (width, size)
                size = width
        shapes["action_net"] = (n_actions, hidden_sizes[-1])
        shapes["value_net"] = (1, hidden_sizes[-1])
        parameters: dict[str, th.Tensor] = {}
        for layer, shape in shapes.items():
            gain = ORTHOGONAL_GAINS[layer.split(".")[0]]
            weights = []
            for generator in generators:
                weight = th.empty(shape)
                th.nn.init.orthogonal_(weight, gain=gain, generator=generator)
                weights.append(weight)
            parameters[f"{layer}.weight"] = th.stack(weights)
            parameters[f"{layer}.bias"] = th.zeros(len(generators), shape[0])
        return cls(parameters, len(hidden_sizes))

    @classmethod
    def from_policies(cls, policies: Sequence[ActorCriticPolicy]) -> StackedActorCritic:
        """The networks of SB3 ``MlpPolicy`` policies (separate actor and critic), stacked in order."""
        states = [policy.state_dict() for policy in policies]
        parameters = {name: th.stack([state[name].detach().clone() for state in states]) for name in states[0]}
        n_hidden_layers = sum(1 for name in parameters if name.startswith(HIDDEN_LAYERS[0]) and name.endswith("weight"))
        return cls(parameters, n_hidden_layers)

    def agent_state_dict(self, agent: int) -> dict[str, th.Tensor]:
        """Agent ``agent``'s parameters as the state dict of SB3's policy (load it with ``load_state_dict``)."""
        return {name: tensor[agent].detach().clone() for name, tensor in self.parameters.items()}

    def requires_grad_(self) -> StackedActorCritic:
        for tensor in self.parameters.values():
            tensor.requires_grad_(True)
        return self

    def _mlp(self, net: str, inputs: th.Tensor) -> th.Tensor:
        hidden = inputs
        for index in range(self.n_hidden_layers):
            layer = f"{net}.{2 * index}"
            hidden = th.tanh(_linear(hidden, self.parameters[f"{layer}.weight"], self.parameters[f"{layer}.bias"]))
        return hidden

    def forward(self, observations: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """Action logits ``(S, B, n_actions)`` and values ``(S, B)`` for observations ``(S, B, obs)``."""
        observations = observations.flatten(2)
        latent_pi = self._mlp(HIDDEN_LAYERS[0], observations)
        latent_vf = self._mlp(HIDDEN_LAYERS[1], observations)
        logits = _linear(latent_pi, self.parameters["action_net.weight"], self.parameters["action_net.bias"])
        values = _linear(latent_vf, self.parameters["value_net.weight"], self.parameters["value_net.bias"])
        return logits, values.squeeze(-1)

    def values(self, observations: th.Tensor) -> th.Tensor:
        """``V(s)`` only, ``(S, B)``."""
        latent_vf = self._mlp(HIDDEN_LAYERS[1], observations.flatten(2))
        values = _linear(latent_vf, self.parameters["value_net.weight"], self.parameters["value_net.bias"])
        return values.squeeze(-1)
