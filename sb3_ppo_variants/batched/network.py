"""Many actor-critics as one: SB3 ``MlpPolicy`` (or shared ``MlpTrunk`` / ``MinAtarCNN``) parameters stacked on a
leading agent axis."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch as th
from stable_baselines3.common.policies import ActorCriticPolicy

# the parts of SB3's ActorCriticPolicy, by state-dict prefix, and its initialisation gains (ortho_init=True)
TRUNK = "features_extractor.trunk"
"""``policies.MlpTrunk``'s layers (``Linear`` at odd indices, after ``Flatten``), shared by actor and critic."""
CONV = "features_extractor.conv"
"""``policies.MinAtarCNN``'s convolution (``Conv2d`` at index 0), then ReLU."""
DENSE = "features_extractor.linear"
"""``policies.MinAtarCNN``'s fully connected layer (``Linear`` at index 1, after ``Flatten``), then ReLU."""
ACTOR = "mlp_extractor.policy_net"
CRITIC = "mlp_extractor.value_net"
ORTHOGONAL_GAINS = {
    "features_extractor": math.sqrt(2.0),
    "mlp_extractor": math.sqrt(2.0),
    "action_net": 0.01,
    "value_net": 1.0,
}
"""SB3's ``ActorCriticPolicy`` initialisation gains; biases start at 0."""
_ALIASES = ("pi_features_extractor.", "vf_features_extractor.")
"""With a shared features extractor SB3's state dict lists its tensors three times."""


def _tanh_values(inputs: th.Tensor) -> th.Tensor:
    return th.sigmoid(inputs * 2.0).mul_(2.0).sub_(1.0)


class _Tanh(th.autograd.Function):
    """``tanh x`` as ``2σ(2x) − 1``, the same function (within 2e-7 in float32), about twice as fast as
    ``torch.tanh`` on a CPU with AVX2; its gradient is ``1 − tanh² x``, as ``torch.tanh``'s."""

    @staticmethod
    def forward(ctx: Any, inputs: th.Tensor) -> th.Tensor:
        outputs = _tanh_values(inputs)
        ctx.save_for_backward(outputs)
        return outputs

    @staticmethod
    def backward(ctx: Any, gradient: th.Tensor) -> th.Tensor:
        (outputs,) = ctx.saved_tensors
        return th.ops.aten.tanh_backward(gradient, outputs)


def tanh(inputs: th.Tensor) -> th.Tensor:
    """The hidden layers' activation (``_Tanh``); where no gradient is taken (the rollout's and the evaluations'
    steps), its forward computation alone, without ``autograd.Function``'s dispatch."""
    if not th.is_grad_enabled():
        return _tanh_values(inputs)
    return cast(th.Tensor, _Tanh.apply(inputs))


def _linear(inputs: th.Tensor, weight: th.Tensor, bias: th.Tensor) -> th.Tensor:
    """``x Wᵀ + b`` for every agent: inputs ``(S, B, in)``, weight ``(S, out, in)``, bias ``(S, out)``."""
    return th.baddbmm(bias.unsqueeze(1), inputs, weight.transpose(1, 2))


class _WideLinear(th.autograd.Function):
    """``_linear`` whose weight gradient is computed as ``gᵀ x``, ``(S, out, in)`` in the weight's own layout.

    Autograd's ``baddbmm`` computes it as ``xᵀ g``, ``(S, in, out)``, and copies its transpose into the weight's
    layout: for ``MinAtarCNN``'s 1024 → 128 layer that copy and the product's orientation cost more than the
    product itself (the network's forward and backward pass is about 1.3–1.6× faster this way on one CPU thread,
    the copy about 10 % of an update), and with the MLPs' 64-wide layers and heads computed so, an eager 60-agent
    minibatch step of 64 samples takes a median 13.1 CPU-milliseconds against 15.5 (``docs/scripts/engine_ab.py``,
    the two paths alternated on an idle machine). For these shapes the two
    orientations give the same values, bit for bit, here; for narrow inputs (CartPole's 4 observations, Acrobot's
    6) they differ in the last bit and autograd's is the faster, so those layers keep ``_linear`` (``dense``)."""

    @staticmethod
    def forward(ctx: Any, inputs: th.Tensor, weight: th.Tensor, bias: th.Tensor) -> th.Tensor:
        ctx.save_for_backward(inputs, weight)
        return _linear(inputs, weight, bias)

    @staticmethod
    def backward(ctx: Any, gradient: th.Tensor) -> tuple[th.Tensor | None, th.Tensor, th.Tensor]:
        inputs, weight = ctx.saved_tensors
        inputs_gradient = th.bmm(gradient, weight) if ctx.needs_input_grad[0] else None
        return inputs_gradient, th.bmm(gradient.transpose(1, 2), inputs), gradient.sum(1)


WIDE_INPUTS = 64
"""The input width from which a layer computes its gradients with ``_WideLinear``."""


def dense(inputs: th.Tensor, weight: th.Tensor, bias: th.Tensor) -> th.Tensor:
    """A linear layer of every agent: ``_WideLinear`` for inputs at least ``WIDE_INPUTS`` wide where a gradient is
    taken, otherwise ``_linear`` (the same forward computation, without ``autograd.Function``'s dispatch)."""
    if th.is_grad_enabled() and weight.shape[-1] >= WIDE_INPUTS:
        return cast(th.Tensor, _WideLinear.apply(inputs, weight, bias))
    return _linear(inputs, weight, bias)


def _convolution(inputs: th.Tensor, weight: th.Tensor, bias: th.Tensor) -> th.Tensor:
    """A valid, stride-1 ``Conv2d`` for every agent: inputs ``(S, B, C, H, W)``, weight ``(S, F, C, k, k)``, bias
    ``(S, F)``; ``(S, B, F, H − k + 1, W − k + 1)``. One grouped convolution, the agents as groups."""
    agents, batch, channels, height, width = inputs.shape
    filters = weight.shape[1]
    grouped = inputs.transpose(0, 1).reshape(batch, agents * channels, height, width)
    outputs = th.nn.functional.conv2d(grouped, weight.flatten(0, 1), bias.flatten(), groups=agents)
    return outputs.view(batch, agents, filters, *outputs.shape[2:]).transpose(0, 1)


def _layers(names: Sequence[str], prefix: str) -> list[str]:
    """The ``Linear`` layers under ``prefix``, in order (``prefix.<index>``)."""
    layers = {name.rsplit(".", 1)[0] for name in names if name.startswith(prefix + ".") and name.endswith(".weight")}
    return sorted(layers, key=lambda layer: int(layer.rsplit(".", 1)[1]))


class StackedActorCritic:
    """``S`` independent actor-critics, each one SB3 ``ActorCriticPolicy``.

    Three shapes: SB3's ``MlpPolicy`` (a separate actor and critic with tanh hidden layers,
    ``net_arch=dict(pi=[64, 64], vf=[64, 64])``), the shared tanh trunk of ``policies.MlpTrunk`` with
    ``net_arch=[]``, and the shared ReLU network of ``policies.MinAtarCNN`` with ``net_arch=[]`` on channel-last
    ``(H, W, C)`` images (``image_shape``), observations arriving flattened. ``parameters`` maps SB3's state-dict
    names (``mlp_extractor.policy_net.0.weight``, ``action_net.bias``, …) to tensors with the agents on the
    first axis, so agent ``k``'s network is SB3's with ``parameters[name][k]``. They are views of one
    ``(S, P)`` tensor, ``flat``, the leaf that the optimiser steps and the gradient lands on: one
    operation updates every parameter of every agent.

    :param parameters: the stacked parameters, by SB3's names.
    :param image_shape: ``(H, W, C)`` of the observations, needed with ``MinAtarCNN``'s parameters.
    """

    def __init__(self, parameters: dict[str, th.Tensor], image_shape: Sequence[int] | None = None) -> None:
        first = next(iter(parameters.values()))
        self.flat = th.cat([tensor.detach().reshape(first.shape[0], -1) for tensor in parameters.values()], dim=1)
        self._layout: dict[str, tuple[int, int, tuple[int, ...]]] = {}
        offset = 0
        for name, tensor in parameters.items():
            size = tensor[0].numel()
            self._layout[name] = (offset, offset + size, tuple(tensor.shape[1:]))
            offset += size
        names = list(parameters)
        self.trunk_layers = _layers(names, TRUNK)
        self.conv_layers = _layers(names, CONV)
        self.dense_layers = _layers(names, DENSE)
        if self.conv_layers and (image_shape is None or len(image_shape) != 3):
            raise ValueError(f"image_shape must be the (H, W, C) of the observations, got {image_shape!r}")
        self.image_shape = tuple(image_shape) if self.conv_layers and image_shape is not None else None
        self.actor_layers = _layers(names, ACTOR)
        self.critic_layers = _layers(names, CRITIC)

    @property
    def parameters(self) -> dict[str, th.Tensor]:
        """Every parameter, ``(S, …)``, as a view of ``flat``.

        The views come from one ``torch.split``, whose backward writes every gradient into ``flat``'s in one
        concatenation, where a slice per parameter would fill a zero tensor of ``flat``'s size for each.
        """
        agents = self.flat.shape[0]
        sizes = [end - start for start, end, _ in self._layout.values()]
        pieces = th.split(self.flat, sizes, dim=1)
        return {
            name: piece.view(agents, *shape)
            for (name, (_, _, shape)), piece in zip(self._layout.items(), pieces, strict=True)
        }

    @property
    def n_agents(self) -> int:
        return int(self.flat.shape[0])

    @classmethod
    def initialise(
        cls,
        observation_size: int,
        n_actions: int,
        generators: Sequence[th.Generator],
        hidden_sizes: Sequence[int] = (64, 64),
        shared_trunk: bool = False,
        image_shape: Sequence[int] | None = None,
        n_filters: int = 16,
        features_dim: int = 128,
    ) -> StackedActorCritic:
        """Orthogonal weights with SB3's gains and zero biases, agent ``k`` drawn from ``generators[k]`` only.

        :param observation_size: flat observation size.
        :param n_actions: actions of the Discrete action space.
        :param generators: one torch generator per agent.
        :param hidden_sizes: hidden layer widths (of the trunk, or of each of the actor and the critic).
        :param shared_trunk: ``MlpTrunk`` shared by both heads instead of a separate actor and critic.
        :param image_shape: ``(H, W, C)``: ``MinAtarCNN`` (``n_filters`` 3×3 filters, a ``features_dim`` layer)
            shared by both heads; ``hidden_sizes`` and ``shared_trunk`` are then not used.
        """
        shapes: dict[str, tuple[int, ...]] = {}
        if image_shape is not None:
            height, width, channels = image_shape
            shapes[f"{CONV}.0"] = (n_filters, channels, 3, 3)
            shapes[f"{DENSE}.1"] = (features_dim, n_filters * (height - 2) * (width - 2))
            last = features_dim
        else:
            for net, first in ((TRUNK, 1),) if shared_trunk else ((ACTOR, 0), (CRITIC, 0)):
                size = observation_size
                for index, width in enumerate(hidden_sizes):
                    shapes[f"{net}.{first + 2 * index}"] = (width, size)
                    size = width
            last = hidden_sizes[-1]
        shapes["action_net"] = (n_actions, last)
        shapes["value_net"] = (1, last)
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
        return cls(parameters, image_shape)

    @classmethod
    def from_policies(cls, policies: Sequence[ActorCriticPolicy]) -> StackedActorCritic:
        """The networks of SB3 policies of one of the three shapes, stacked in order."""
        states = []
        for policy in policies:
            state = policy.state_dict()
            if not policy.share_features_extractor and any(name.startswith(_ALIASES) for name in state):
                raise ValueError("a features extractor with weights must be shared by the actor and the critic")
            states.append({name: tensor for name, tensor in state.items() if not name.startswith(_ALIASES)})
        known = (f"{TRUNK}.", f"{CONV}.", f"{DENSE}.", f"{ACTOR}.", f"{CRITIC}.", "action_net.", "value_net.")
        unknown = [name for name in states[0] if not name.startswith(known)]
        if unknown:
            raise ValueError(f"parameters outside an MlpPolicy, MlpTrunk or MinAtarCNN actor-critic: {unknown}")
        shape = policies[0].observation_space.shape
        return cls(
            {name: th.stack([state[name].detach().clone() for state in states]) for name in states[0]},
            shape if shape is not None and len(shape) == 3 else None,
        )

    def agent_state_dict(self, agent: int) -> dict[str, th.Tensor]:
        """Agent ``agent``'s parameters by SB3's names (``policy.load_state_dict(…, strict=False)`` loads them)."""
        return {name: tensor[agent].detach().clone() for name, tensor in self.parameters.items()}

    def to(self, device: th.device) -> StackedActorCritic:
        """These networks on ``device`` (this object, its ``flat`` moved)."""
        self.flat = self.flat.detach().to(device)
        return self

    def requires_grad_(self) -> StackedActorCritic:
        self.flat.requires_grad_(True)
        return self

    @staticmethod
    def _hidden(
        parameters: dict[str, th.Tensor], layers: list[str], inputs: th.Tensor, pre_activations: list[th.Tensor]
    ) -> th.Tensor:
        for layer in layers:
            pre_activations.append(dense(inputs, parameters[f"{layer}.weight"], parameters[f"{layer}.bias"]))
            inputs = tanh(pre_activations[-1])
        return inputs

    @staticmethod
    def _head(parameters: dict[str, th.Tensor], head: str, latent: th.Tensor) -> th.Tensor:
        return dense(latent, parameters[f"{head}.weight"], parameters[f"{head}.bias"])

    def _features(
        self, parameters: dict[str, th.Tensor], observations: th.Tensor, pre_activations: list[th.Tensor]
    ) -> th.Tensor:
        """The features extractor's output: the observations flattened, through the shared trunk if any."""
        if not self.conv_layers:
            return self._hidden(parameters, self.trunk_layers, observations.flatten(2), pre_activations)
        assert self.image_shape is not None
        agents, batch = observations.shape[:2]
        # channel-last (H, W, C) to (C, H, W) in float, as MinAtarCNN computes
        inputs = observations.reshape(agents, batch, *self.image_shape).permute(0, 1, 4, 2, 3)
        inputs = inputs.to(self.flat.dtype)
        for layer in self.conv_layers:
            inputs = th.relu(_convolution(inputs, parameters[f"{layer}.weight"], parameters[f"{layer}.bias"]))
        inputs = inputs.flatten(2)
        for layer in self.dense_layers:
            weight, bias = parameters[f"{layer}.weight"], parameters[f"{layer}.bias"]
            pre_activations.append(dense(inputs, weight, bias))
            inputs = th.relu(pre_activations[-1])
        return inputs

    def forward_with_features(self, observations: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """Logits, values and PFO's ``φ(s)``, ``(S, B, width)``: the pre-activations of the actor's last hidden
        layer (its own, or the shared trunk's last), the layer ``VariantPPO``'s ``feature_drift_coef`` reads."""
        parameters = self.parameters
        pre_activations: list[th.Tensor] = []
        features = self._features(parameters, observations, pre_activations)
        latent_pi = self._hidden(parameters, self.actor_layers, features, pre_activations)
        logits = self._head(parameters, "action_net", latent_pi)
        values = self._head(parameters, "value_net", self._hidden(parameters, self.critic_layers, features, []))
        return logits, values.squeeze(-1), pre_activations[-1]

    def forward(self, observations: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """Action logits ``(S, B, n_actions)`` and values ``(S, B)`` for observations ``(S, B, obs)``."""
        logits, values, _ = self.forward_with_features(observations)
        return logits, values

    def values(self, observations: th.Tensor) -> th.Tensor:
        """``V(s)`` only, ``(S, B)``."""
        parameters = self.parameters
        features = self._features(parameters, observations, [])
        latent_vf = self._hidden(parameters, self.critic_layers, features, [])
        return self._head(parameters, "value_net", latent_vf).squeeze(-1)
