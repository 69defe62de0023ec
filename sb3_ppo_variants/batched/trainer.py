"""``BatchedPPO``: ``S`` independent PPO agents on CartPole or Acrobot, trained in lock-step in one process.

Every agent is SB3's ``PPO`` (``MlpPolicy`` with a separate actor and critic) with ``VariantPPO``'s options:
its loss is ``loss.variant_ppo_loss``, mapped over the agents with ``torch.func.vmap``. The agents form
arms (``Arm``), consecutive agents whose loss takes one code path (one ``vmap`` call each); the network, the
rollout, the gradient and Adam's step are one operation over every agent of every arm. The agents share
nothing but the arrays they are stacked in: each has its own parameters, Adam moments, learning rate,
numeric options, minibatch permutation, gradient-norm clipping, advantage normalisation and random
stream (one ``torch.Generator`` and its environments' own generators), so that an agent trains the same
whether it is alone or in a batch. An agent whose network output, loss or gradient is not finite is marked
failed and frozen (``failed``; ``failed_at`` holds its step count at the end of the rollout or update in
which it failed); the others go on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import numpy as np
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.type_aliases import Schedule
from stable_baselines3.common.utils import FloatSchedule
from torch.func import vmap
from torch.profiler import record_function

from sb3_ppo_variants import objectives
from sb3_ppo_variants.batched.network import StackedActorCritic
from sb3_ppo_variants.batched.optim import StackedAdam, clip_grad_norms, compile_function
from sb3_ppo_variants.batched.rollout import agents_environment, generalized_advantages
from sb3_ppo_variants.loss import LossOptions, Minibatch, PolicyEvaluation, variant_ppo_loss
from sb3_ppo_variants.variant_ppo import KL_COEF_FLOOR, VariantPPO

AGENT_OPTIONS = (
    "clip_range",
    "restoring_slope",
    "dual_clip",
    "kl_coef",
    "kl_trust_region",
    "pseudo_entropy_smoothing",
    "feature_drift_coef",
    "ent_coef",
    "vf_coef",
)
"""The ``LossOptions`` that may take one value per agent: numbers that do not choose the loss's code path."""
ARM_SETTINGS = (
    "options",
    "agent_options",
    "target_kl",
    "ratio_change_limit",
    "kl_penalty_target",
    "kl_adapt_factor",
    "kl_adapt_tolerance",
)
"""``BatchedPPO``'s arguments that may differ between the arms (``Arm``) of one group."""
TRAIN_STATISTICS = (
    "entropy_loss",
    "policy_gradient_loss",
    "value_loss",
    "approx_kl",
    "clip_fraction",
    "loss",
    "explained_variance",
    "n_updates",
    "clip_range",
    "learning_rate",
)
"""SB3 ``PPO``'s ``train/`` logger keys, with its meaning, that ``BatchedPPO`` records per agent after each update:
means over the minibatch steps the agent took part in (``clip_fraction`` with its own ``ε``, or ``ε_low`` and
``ε_high``; ``approx_kl`` over those of its last epoch, as SB3 resets it each epoch), the last minibatch's
loss, the rollout's explained variance and the epochs begun so far."""
_MINIBATCH_MEANS = {
    "entropy_loss": "entropy_loss",
    "policy_gradient_loss": "policy_loss",
    "value_loss": "value_loss",
}
"""``TRAIN_STATISTICS`` that are means of a loss over minibatch steps, and the ``LossStatistics`` field of each."""
_UPDATE_MEANS = (*_MINIBATCH_MEANS, "clip_fraction")
"""``TRAIN_STATISTICS`` that are means over an update's minibatch steps (``clip_fraction``: ``_ArmState``'s)."""
_EPOCH_SUMS = ("approx_kl", "kl", "kl_samples")
"""Per agent and minibatch step, what is summed over each agent's last epoch: SB3's ``approx_kl``, and the exact
KL's sum over the minibatch and its sample count (0 for an arm that does not compute it), the KL penalty's β."""
STEP_STATISTICS = (*_UPDATE_MEANS, *_EPOCH_SUMS)
"""The columns of a minibatch step's per-agent statistics (``_ArmState.step_statistics``)."""
TRAIN_RETURN_WINDOW = 100
"""Training episodes in ``train_return``: SB3's ``stats_window_size``, whose ``ep_info_buffer`` the runner reads."""


class StackedRollout(NamedTuple):
    """One rollout of every agent, ``(S, N, …)`` with ``N = n_envs · n_steps`` in SB3's order (environment-major)."""

    observations: th.Tensor
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    old_logits: th.Tensor
    """The rollout policy's normalised logits, for the exact KL."""
    old_features: th.Tensor | None = None
    """PFO's ``φ_old(s)``, ``(S, N, width)``, recorded with ``feature_drift_coef``."""


@dataclass(frozen=True)
class Arm:
    """Consecutive agents of a ``BatchedPPO`` whose loss takes one code path, with what may differ between arms.

    The rollout shape, minibatches, network, ``γ``, ``λ``, gradient clipping and Adam are the group's; the
    learning rate is per agent. The parameters are ``BatchedPPO``'s of the same names.

    :param n_agents: the arm's agents, the next ``n_agents`` of the group's seeds
    """

    n_agents: int
    options: LossOptions | None = None
    agent_options: Mapping[str, Sequence[float]] | None = None
    target_kl: float | None = None
    ratio_change_limit: float | None = None
    kl_penalty_target: float = 0.01
    kl_adapt_factor: float = 2.0
    kl_adapt_tolerance: float = 1.5


class _ArmState:
    """An ``Arm`` in training: its agents' slice of the stacks, its per-agent options and running state."""

    def __init__(self, arm: Arm, agents: slice, device: th.device) -> None:
        self.arm, self.agents = arm, agents
        self.options = LossOptions(clip_range=0.2) if arm.options is None else arm.options
        self.agent_options = {
            name: th.as_tensor(values, dtype=th.float32, device=device)
            for name, values in (arm.agent_options or {}).items()
        }
        for name, values in self.agent_options.items():
            if name not in AGENT_OPTIONS:
                raise ValueError(f"agent_options: {name!r} cannot differ between agents; allowed: {AGENT_OPTIONS}")
            if values.shape != (arm.n_agents,):
                raise ValueError(
                    f"agent_options[{name!r}] needs one value per agent ({arm.n_agents}), got {tuple(values.shape)}"
                )
            if name == "restoring_slope" and self.options.kl_trust_region is not None:
                raise ValueError(
                    "with kl_trust_region, α = 0 and α > 0 are different losses: run them as separate groups"
                )
            if getattr(self.options, name) is None:
                raise ValueError(f"agent_options[{name!r}]: the shared options must turn {name} on")
        if self.options.kl_coef is not None and "kl_coef" not in self.agent_options:
            # β adapts per agent, once per rollout
            self.agent_options["kl_coef"] = th.full((arm.n_agents,), self.options.kl_coef, device=device)
        self.pseudo_entropy_average: th.Tensor | None = None

    def loss(self, evaluation: PolicyEvaluation, minibatch: Minibatch) -> tuple[th.Tensor, dict[str, th.Tensor]]:
        """The arm's agents' losses ``(n_agents,)`` and statistics, from their network outputs and minibatches.

        ``variant_ppo_loss`` is mapped over the agents with ``vmap`` on a flat tuple of tensors (the named
        tuples are rebuilt inside), which costs ``vmap`` less to take apart than the named tuples and dicts.
        """
        fields = (*evaluation, *minibatch)
        present = [index for index, value in enumerate(fields) if value is not None]
        names = list(self.agent_options)
        average = self.pseudo_entropy_average
        tensors = [cast(th.Tensor, fields[index]) for index in present]
        tensors += [self.agent_options[name] for name in names] + ([] if average is None else [average])
        n_evaluation = len(evaluation)

        def agent_loss(*values: th.Tensor) -> tuple[th.Tensor, dict[str, th.Tensor]]:
            full: list[th.Tensor | None] = [None] * len(fields)
            for index, value in zip(present, values, strict=False):
                full[index] = value
            # each per-agent option is a 0-d tensor here, which the loss takes where it takes a number
            agent_options = dict(zip(names, values[len(present) : len(present) + len(names)], strict=True))
            options = dataclasses.replace(self.options, **cast(dict[str, Any], agent_options))
            loss, statistics, new_average = variant_ppo_loss(
                options,
                PolicyEvaluation(*full[:n_evaluation]),  # type: ignore[arg-type]
                Minibatch(*full[n_evaluation:]),  # type: ignore[arg-type]
                None if average is None else values[-1],
            )
            outputs = {name: value for name, value in statistics._asdict().items() if value is not None}
            if new_average is not None:
                outputs["pseudo_entropy_average"] = th.as_tensor(new_average)
            return loss, outputs

        return vmap(agent_loss)(*tensors)

    def clip_ranges(self) -> tuple[th.Tensor | float, th.Tensor | float]:
        """Each agent's ``(ε_low, ε_high)``: ``clip_fraction`` counts the ratios outside ``[1 − ε_low, 1 + ε_high]``."""
        low = self.agent_options.get("clip_range", self.options.clip_range)
        high = low if self.options.clip_range_high is None else self.options.clip_range_high
        return low, high

    def clip_fraction(self, ratio: th.Tensor) -> th.Tensor:
        """Per agent, the fraction of its minibatch's ratios ``(n_agents, B)`` outside the clip range."""
        low, high = (bound.unsqueeze(1) if isinstance(bound, th.Tensor) else bound for bound in self.clip_ranges())
        outside = (ratio > 1.0 + high) | (ratio < 1.0 - low)
        return outside.float().mean(dim=1)

    def step_statistics(self, statistics: dict[str, th.Tensor]) -> th.Tensor:
        """The arm's agents' ``STEP_STATISTICS`` of one minibatch step, ``(n_agents, len(STEP_STATISTICS))``."""
        approx_kl = statistics["approx_kl"]
        columns = [statistics[field] for field in _MINIBATCH_MEANS.values()]
        columns += [self.clip_fraction(statistics["ratio"]), approx_kl]
        if "kl" in statistics:
            kl = statistics["kl"]
            columns += [kl.sum(dim=1), th.full_like(approx_kl, kl.shape[1])]
        else:
            columns += [th.zeros_like(approx_kl)] * 2
        return th.stack(columns, dim=1).detach()

    def stops(self, statistics: dict[str, th.Tensor]) -> th.Tensor:
        """Which agents stop their epochs here: SB3's ``target_kl`` and ESPO's ``ratio_change_limit``."""
        stop = th.zeros(self.arm.n_agents, dtype=th.bool, device=statistics["ratio"].device)
        if self.arm.target_kl is not None:
            stop |= statistics["approx_kl"] > 1.5 * self.arm.target_kl
        if self.arm.ratio_change_limit is not None:
            stop |= (statistics["ratio"] - 1.0).abs().mean(dim=1) > self.arm.ratio_change_limit
        return stop


def _phase(name: str) -> contextlib.AbstractContextManager[Any]:
    """A ``torch.profiler`` label ``batched.<name>`` for a phase of the minibatch step (none inside a compiled
    region, which keeps no labels)."""
    if th.compiler.is_compiling():
        return contextlib.nullcontext()
    return record_function(f"batched.{name}")


def check_compile(device: th.device) -> None:
    """Whether ``torch.compile`` works here, by compiling and running a tiny function on ``device``.

    :raises ValueError: naming what failed (on a CPU, typically a missing C++ compiler).
    """
    try:
        th.compile(lambda x: th.sigmoid(x) * 2.0, dynamic=False)(th.ones(3, device=device))
    except Exception as error:
        raise ValueError(f"compile_step: torch.compile does not work here ({type(error).__name__}: {error})") from None


def _learning_rate_schedules(learning_rate: Any, n_agents: int) -> list[FloatSchedule]:
    """``BatchedPPO``'s ``learning_rate`` as one SB3 schedule per agent.

    :raises ValueError: for a count other than one or one per agent, or a rate that is not a finite number
        ``≥ 0`` at the start or the end of its schedule.
    """
    if isinstance(learning_rate, (int, float, str)) or callable(learning_rate):
        learning_rate = [learning_rate] * n_agents
    rates = list(learning_rate)
    if len(rates) != n_agents:
        raise ValueError(f"learning_rate: one for all or one per agent ({n_agents}), got {len(rates)}")
    schedules = []
    for agent, rate in enumerate(rates):
        if not (isinstance(rate, (int, float)) or callable(rate)):
            raise ValueError(f"learning_rate[{agent}]: a number or a schedule of the progress remaining, got {rate!r}")
        schedule = FloatSchedule(rate)
        ends = (schedule(1.0), schedule(0.0))
        if not all(math.isfinite(value) and value >= 0.0 for value in ends):
            raise ValueError(
                f"learning_rate[{agent}]: must stay a finite number >= 0, goes from {ends[0]} to {ends[1]}"
            )
        schedules.append(schedule)
    return schedules


def _constant(name: str, value: Any) -> float:
    """A constant schedule's value: ``BatchedPPO``'s clip ranges and KL trust region are constant."""
    if isinstance(value, str):  # rl-zoo3's "lin_<initial>", decaying to 0
        raise ValueError(f"{name} is a schedule ({value!r}); BatchedPPO takes constant values only")
    if callable(value):
        start, end = float(value(1.0)), float(value(0.0))
        if start != end:
            raise ValueError(f"{name} is a schedule ({start} to {end}); BatchedPPO takes constant values only")
        return start
    return float(value)


def batched_settings(model: PPO) -> dict[str, Any]:
    """The ``BatchedPPO`` keyword arguments that train as this SB3 ``PPO`` or ``VariantPPO`` does (its options,
    hyperparameters and optimiser), without ``seeds``: one call per arm of a study.

    :raises ValueError: for what ``BatchedPPO`` cannot do yet: a schedule that changes, other than the
        learning rate's; an optimiser other than Adam; ESPO's stop after the violating step.
    """
    optimizer = model.policy.optimizer
    if not isinstance(optimizer, th.optim.Adam):
        raise ValueError(f"BatchedPPO runs Adam, the policy has {type(optimizer).__name__}")
    if getattr(model, "ratio_change_stop", "before_step") != "before_step":
        raise ValueError("BatchedPPO stops ESPO's epochs before the violating step only")
    clip_range = _constant("clip_range", model.clip_range)
    clip_range_vf = None if model.clip_range_vf is None else _constant("clip_range_vf", model.clip_range_vf)
    settings: dict[str, Any] = dict(
        learning_rate=model.learning_rate,
        n_envs=model.n_envs,
        n_steps=model.n_steps,
        batch_size=model.batch_size,
        n_epochs=model.n_epochs,
        gamma=model.gamma,
        gae_lambda=model.gae_lambda,
        max_grad_norm=model.max_grad_norm,
        target_kl=model.target_kl,
        adam_betas=tuple(optimizer.defaults["betas"]),
        adam_eps=optimizer.defaults["eps"],
    )
    if isinstance(model, VariantPPO):
        clip_range_high = None
        if model.clip_range_high is not None:
            clip_range_high = _constant("clip_range_high", model.clip_range_high)
        kl_trust_region = None
        if model.kl_trust_region is not None:
            kl_trust_region = _constant("kl_trust_region", model.kl_trust_region)
        settings.update(
            options=model._loss_options(clip_range, clip_range_high, clip_range_vf, kl_trust_region),
            ratio_change_limit=model.ratio_change_limit,
            kl_penalty_target=model.kl_penalty_target,
            kl_adapt_factor=model.kl_adapt_factor,
            kl_adapt_tolerance=model.kl_adapt_tolerance,
        )
    else:
        settings["options"] = LossOptions(
            clip_range=clip_range,
            ent_coef=model.ent_coef,
            vf_coef=model.vf_coef,
            clip_range_vf=clip_range_vf,
            normalize_advantage=model.normalize_advantage,
        )
    return settings


def categorical_outputs(logits: th.Tensor, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
    """Normalised logits, ``log π(a|s)`` and the entropy, as torch's ``Categorical`` computes them."""
    normalised = logits - logits.logsumexp(dim=-1, keepdim=True)
    log_prob = normalised.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    probs = th.softmax(normalised, dim=-1)
    entropy = -(th.clamp(normalised, min=th.finfo(normalised.dtype).min) * probs).sum(-1)
    return normalised, log_prob, entropy


class _UpdateSums:
    """Per-agent sums over one update's minibatch steps, counting a step for the agents that evaluated it:
    SB3's training statistics (``TRAIN_STATISTICS``) and the exact KL of the last epoch (the KL penalty's β)."""

    def __init__(self, n_agents: int, device: th.device) -> None:
        self.update = th.zeros(n_agents, len(_UPDATE_MEANS), device=device)
        """``_UPDATE_MEANS`` summed over the whole update."""
        self.epoch = th.zeros(n_agents, len(_EPOCH_SUMS), device=device)
        """``_EPOCH_SUMS`` summed over each agent's last epoch."""
        self.update_steps = th.zeros(n_agents, device=device)
        self.epoch_steps = th.zeros(n_agents, device=device)
        self.last_loss = th.full((n_agents,), float("nan"), device=device)

    def start_epoch(self, active: th.Tensor) -> None:
        """The agents that begin an epoch start its sums again."""
        self.epoch = th.where(active.unsqueeze(1), 0.0, self.epoch)
        self.epoch_steps = th.where(active, 0.0, self.epoch_steps)

    def add(self, active: th.Tensor, losses: th.Tensor, statistics: th.Tensor) -> None:
        """A minibatch step's losses ``(S,)`` and ``STEP_STATISTICS`` ``(S, …)``, for the ``active`` agents,
        those that evaluated it."""
        measured = th.where(active.unsqueeze(1), statistics, 0.0)
        self.update += measured[:, : len(_UPDATE_MEANS)]
        self.epoch += measured[:, len(_UPDATE_MEANS) :]
        self.update_steps += active.float()
        self.epoch_steps += active.float()
        self.last_loss = th.where(active, losses.detach(), self.last_loss)

    def means(self) -> dict[str, th.Tensor]:
        """The update's means of the minibatch statistics (``approx_kl`` over each agent's last epoch, as SB3)."""
        means = self.update / self.update_steps.clamp(min=1.0).unsqueeze(1)
        approx_kl = self.epoch[:, _EPOCH_SUMS.index("approx_kl")] / self.epoch_steps.clamp(min=1.0)
        columns = dict(zip(_UPDATE_MEANS, means.unbind(dim=1), strict=True))
        return {**columns, "approx_kl": approx_kl, "loss": self.last_loss}

    @property
    def evaluated(self) -> th.Tensor:
        """Which agents evaluated at least one minibatch."""
        return self.update_steps > 0

    @property
    def last_epoch_kl(self) -> tuple[th.Tensor, th.Tensor]:
        """The mean exact KL of each agent's last epoch, and whether it was measured."""
        kl, samples = self.epoch[:, _EPOCH_SUMS.index("kl")], self.epoch[:, _EPOCH_SUMS.index("kl_samples")]
        return kl / samples.clamp(min=1.0), samples > 0


def check_device(device: str | th.device) -> th.device:
    """``device`` as a ``torch.device`` that this torch can allocate on.

    :raises ValueError: naming the device and what is available here.
    """
    try:
        checked = th.device(device)
        th.empty(0, device=checked)
    except (RuntimeError, AssertionError) as error:
        available = ["cpu"] + (["cuda"] if th.cuda.is_available() else [])
        raise ValueError(f"device {device!r} is not available here ({error}); available: {available}") from None
    return checked


class BatchedPPO:
    """``S`` PPO agents on ``CartPole-v1`` or ``Acrobot-v1`` in lock-step, each with ``VariantPPO``'s loss and options.

    :param seeds: one seed per agent: its initial parameters, actions, minibatches and environments.
    :param learning_rate: Adam's learning rate, one for all or one per agent, each a number or, as SB3 takes
        it, a schedule of the progress remaining (``1 → 0`` over ``learn``'s ``total_timesteps``; rl-zoo3's
        ``lin_`` is ``stable_baselines3.common.utils.LinearSchedule(value, 0, 1)``), set before each update
        as SB3's ``train()`` sets it.
    :param n_envs: environments per agent.
    :param n_steps: steps per environment and rollout.
    :param batch_size: minibatch size.
    :param n_epochs: epochs per update.
    :param gamma: discount factor.
    :param gae_lambda: GAE's ``λ``.
    :param max_grad_norm: gradient-norm clipping, per agent.
    :param target_kl: SB3's early stopping on ``approx_kl > 1.5 target_kl``, per agent; ``None`` disables it.
    :param ratio_change_limit: ESPO's early stopping on ``mean |r − 1|``, per agent; ``None`` disables it.
    :param kl_penalty_target: ``d_targ`` of the adaptive KL penalty (with ``options.kl_coef``)
    :param kl_adapt_factor: ``β``'s factor, as ``VariantPPO``'s
    :param kl_adapt_tolerance: ``β``'s tolerance band, as ``VariantPPO``'s
    :param options: the loss options shared by every agent (``LossOptions``; its clip ranges are constant).
    :param agent_options: per-agent values of the options in ``AGENT_OPTIONS``, by name, one per agent.
    :param shared_trunk: the actor and the critic share ``policies.MlpTrunk`` (64-64) with linear heads, as the
        collapse study's ``-shared`` tasks; with MinAtar's images, ``policies.MinAtarCNN`` shared by both heads
        (``net_arch=[]``); ``False``: SB3's ``MlpPolicy``, a separate 64-64 actor and critic (on the flattened
        images for MinAtar).
    :param max_episode_steps: truncation of the episodes; ``None``: the gymnasium registration's (``CartPole-v1``
        and ``Acrobot-v1``: 500; MinAtar: none)
    :param env_id: the environment, one of ``rollout.AGENT_ENVIRONMENTS``
    :param adam_betas: Adam's ``(β1, β2)``, SB3's by default
    :param adam_eps: Adam's ``ε``, SB3's PPO's by default (SB3 keeps torch's 1e-8 when ``optimizer_kwargs`` are given)
    :param network: initial networks; ``None`` draws them with SB3's orthogonal initialisation.
    :param device: where the networks, rollouts and updates live (``"cpu"``, ``"cuda"``, …). The environments
        step on the CPU, and each agent's random stream is drawn there, so an agent's run is the same
        computation whatever the device.
    :param arms: the agents' arms (``Arm``) in order, each with its own ``ARM_SETTINGS``, which are then left out
        of the keywords; ``None``: every agent in one arm with the keywords' settings.
    :param compile_step: compile the minibatch step's forward pass, losses, per-agent statistics and early stops
        with ``torch.compile`` (its backward pass with them), and Adam's step (``StackedAdam``'s ``compiled``):
        the same maths with fewer, fused kernels, so float rounding may differ from the
        eager step's in the last bits. The first updates pay the compilation (tens of seconds on a CPU, less once
        torch's on-disk cache holds the same graphs). Refused where ``torch.compile`` does not work (on a CPU it
        needs a C++ compiler). Resets ``torch.compile``'s in-process caches (``torch.compiler.reset``) so that
        the trainer's step is compiled for its own arms.
    """

    def __init__(
        self,
        seeds: Sequence[int],
        learning_rate: float | Schedule | Sequence[float | Schedule] = 3e-4,
        n_envs: int = 1,
        n_steps: int = 2048,
        batch_size: int = 64,
        n_epochs: int = 10,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        max_grad_norm: float = 0.5,
        target_kl: float | None = None,
        ratio_change_limit: float | None = None,
        kl_penalty_target: float = 0.01,
        kl_adapt_factor: float = 2.0,
        kl_adapt_tolerance: float = 1.5,
        options: LossOptions | None = None,
        agent_options: Mapping[str, Sequence[float]] | None = None,
        shared_trunk: bool = False,
        max_episode_steps: int | None = None,
        env_id: str = "CartPole-v1",
        adam_betas: tuple[float, float] = (0.9, 0.999),
        adam_eps: float = 1e-5,
        network: StackedActorCritic | None = None,
        arms: Sequence[Arm] | None = None,
        device: str | th.device = "cpu",
        compile_step: bool = False,
    ) -> None:
        self.seeds = list(seeds)
        n_agents = len(self.seeds)
        self.n_envs, self.n_steps, self.batch_size, self.n_epochs = n_envs, n_steps, batch_size, n_epochs
        self.gamma, self.gae_lambda, self.max_grad_norm = gamma, gae_lambda, max_grad_norm
        single = Arm(
            n_agents,
            options,
            agent_options,
            target_kl,
            ratio_change_limit,
            kl_penalty_target,
            kl_adapt_factor,
            kl_adapt_tolerance,
        )
        if arms is None:
            arms = [single]
        elif single != Arm(n_agents):
            raise ValueError(f"arms: give each arm's {', '.join(ARM_SETTINGS)} in its Arm, not as keywords")
        if sum(arm.n_agents for arm in arms) != n_agents or any(arm.n_agents < 1 for arm in arms):
            raise ValueError(f"arms: their n_agents must be positive and add up to the {n_agents} seeds")
        self.device = check_device(device)
        if compile_step:
            check_compile(self.device)
        self.arms: list[_ArmState] = []
        start = 0
        for arm in arms:
            self.arms.append(_ArmState(arm, slice(start, start + arm.n_agents), self.device))
            start += arm.n_agents
        self.generators = [th.Generator().manual_seed(seed) for seed in self.seeds]
        self.max_episode_steps = max_episode_steps
        # environment i of an agent seeded with seed + i, as SB3's make_vec_env seeds the SB3 runner's
        self.env_id = env_id
        self.env = agents_environment(
            env_id, [seed + index for seed in self.seeds for index in range(n_envs)], max_episode_steps
        )
        observation_shape = self.env.single_observation_space.shape
        assert observation_shape is not None
        observation_size = int(np.prod(observation_shape))
        image_shape = observation_shape if shared_trunk and len(observation_shape) == 3 else None
        n_actions = int(self.env.single_action_space.n)  # type: ignore[attr-defined]
        if network is None:
            network = StackedActorCritic.initialise(
                observation_size, n_actions, self.generators, shared_trunk=shared_trunk, image_shape=image_shape
            )
        self.network = network.to(self.device).requires_grad_()
        self.learning_rate_schedules = _learning_rate_schedules(learning_rate, n_agents)
        """Per agent, its learning rate as a function of the progress remaining (SB3's ``lr_schedule``)."""
        self.optimizer = StackedAdam(
            [self.network.flat],
            th.tensor(
                [schedule(1.0) for schedule in self.learning_rate_schedules], dtype=th.float64, device=self.device
            ),
            betas=adam_betas,
            eps=adam_eps,
            compiled=compile_step,
        )
        self.failed = th.zeros(n_agents, dtype=th.bool, device=self.device)
        self.n_updates = th.zeros(n_agents, dtype=th.long, device=self.device)
        """Per agent, the epochs begun (SB3's ``_n_updates``: an epoch that stopped early counts)."""
        self.train_statistics: list[dict[str, float]] = [{} for _ in range(n_agents)]
        """Per agent, ``TRAIN_STATISTICS`` of its last update (empty before the first), as the SB3 runner's
        ``evaluations[].train``."""
        self.failed_at: list[int | None] = [None] * n_agents
        self.num_timesteps = 0
        self.episode_returns: list[list[float]] = [[] for _ in range(n_agents)]
        self.episode_steps: list[list[int]] = [[] for _ in range(n_agents)]
        """Per agent, the agent's step count (``num_timesteps``) when each of ``episode_returns`` ended."""
        self.evaluations: list[list[dict[str, Any]]] = [[] for _ in range(n_agents)]
        """Per agent, the SB3 runner's records: ``step``, ``train_seconds`` (the batch's), ``eval_return``,
        ``eval_returns``, ``train_return``."""
        self._eval_every: int | None = None
        self._next_eval = 0
        self._learn_start = time.perf_counter()
        self.eval_seconds = 0.0
        """Wall-clock seconds ``learn`` spent evaluating, kept apart from training as the SB3 runner does."""
        self._running_returns = np.zeros(n_agents * n_envs)
        self._last_obs: th.Tensor | None = None
        self._last_episode_starts = th.ones(n_agents, n_envs, device=self.device)
        self.compile_step = compile_step
        self._losses = self._eager_losses
        if compile_step:
            # dynamo caches a compiled method by its code, shared by every trainer: start afresh for this one's
            th.compiler.reset()
            self._losses = compile_function(self._eager_losses)

    @property
    def n_agents(self) -> int:
        return len(self.seeds)

    def _tensor(self, array: np.ndarray, dtype: th.dtype | None = None) -> th.Tensor:
        """An environment's NumPy array on the trainer's device."""
        return th.as_tensor(array, dtype=dtype, device=self.device)

    # ------------------------------------------------------------------ rollout

    @staticmethod
    def _sample(logits: th.Tensor, uniforms: th.Tensor) -> th.Tensor:
        """Actions by inversion of the categorical CDF: the first ``a`` with ``u < Σ_{b≤a} π(b)``, ``(S, E)``."""
        cumulative = th.softmax(logits, dim=-1).cumsum(dim=-1)
        below = (uniforms.unsqueeze(-1) >= cumulative).sum(dim=-1)
        return below.clamp(max=logits.shape[-1] - 1)

    @th.no_grad()
    def collect_rollout(self) -> StackedRollout:
        """``n_steps`` steps of every agent's environments, with SB3's bootstrap on truncation, and GAE.

        A failed agent's environments go on stepping (with uniform actions) so that the vector env stays whole.
        """
        n_agents, n_envs = self.n_agents, self.n_envs
        failed_before = self.failed.clone()
        if self._last_obs is None:
            observations, _ = self.env.reset()
            self._last_obs = self._tensor(observations).view(n_agents, n_envs, -1)
        steps: dict[str, list[th.Tensor]] = {
            key: []
            for key in ("observations", "actions", "rewards", "starts", "values", "log_prob", "logits", "features")
        }
        dones = th.zeros(n_agents, n_envs, device=self.device)
        # each agent's action noise for the whole rollout from its own generator: (T, S, E)
        uniforms = th.stack([th.rand(self.n_steps, n_envs, generator=generator) for generator in self.generators], 1)
        uniforms = uniforms.to(self.device)
        for step in range(self.n_steps):
            logits, values, features = self.network.forward_with_features(self._last_obs)
            self.failed |= ~(th.isfinite(logits).flatten(1).all(dim=1) & th.isfinite(values).all(dim=1))
            logits = th.where(self.failed.view(-1, 1, 1), th.zeros_like(logits), logits)
            actions = self._sample(logits, uniforms[step])
            normalised, log_prob, _ = categorical_outputs(logits, actions)
            observations, rewards, terminated, truncated, info = self.env.step(actions.flatten().cpu().numpy())
            self.num_timesteps += n_envs
            self._record_episodes(rewards, terminated | truncated)
            rewards_t = self._tensor(rewards, dtype=th.float32).view(n_agents, n_envs)
            bootstrap = self._tensor(truncated & ~terminated).view(n_agents, n_envs)
            if bootstrap.any():  # timeouts bootstrap with the value function (SB3 GH issue #633)
                final = self._tensor(info["final_observation"]).view(n_agents, n_envs, -1)
                rewards_t = rewards_t + self.gamma * th.where(bootstrap, self.network.values(final), 0.0)
            for key, value in zip(
                steps,
                (self._last_obs, actions, rewards_t, self._last_episode_starts, values, log_prob, normalised, features),
                strict=True,
            ):
                steps[key].append(value)
            dones = self._tensor(terminated | truncated, dtype=th.float32).view(n_agents, n_envs)
            self._last_obs = self._tensor(observations).view(n_agents, n_envs, -1)
            self._last_episode_starts = dones
            if self._eval_every is not None and self.num_timesteps >= self._next_eval:
                self._record_evaluation()
        self._record_failures(failed_before)
        records_features = self._records_features
        # (T, S, E, ...)
        stacked = {key: th.stack(values) for key, values in steps.items() if key != "features" or records_features}
        advantages, returns = generalized_advantages(
            stacked["rewards"],
            stacked["values"],
            stacked["starts"],
            self.network.values(self._last_obs),
            dones,
            self.gamma,
            self.gae_lambda,
        )
        return StackedRollout(
            observations=self._flatten(stacked["observations"]),
            actions=self._flatten(stacked["actions"]),
            old_values=self._flatten(stacked["values"]),
            old_log_prob=self._flatten(stacked["log_prob"]),
            advantages=self._flatten(advantages),
            returns=self._flatten(returns),
            old_logits=self._flatten(stacked["logits"]),
            old_features=self._flatten(stacked["features"]) if records_features else None,
        )

    @staticmethod
    def _flatten(tensor: th.Tensor) -> th.Tensor:
        """``(T, S, E, …)`` to ``(S, E·T, …)``, SB3's ``swap_and_flatten`` order for each agent."""
        tensor = tensor.transpose(0, 1).transpose(1, 2)  # (S, E, T, ...)
        return tensor.reshape(tensor.shape[0], -1, *tensor.shape[3:])

    def _record_failures(self, failed_before: th.Tensor) -> None:
        """The step of each agent that failed since ``failed_before`` (one synchronisation)."""
        for agent in th.nonzero(self.failed & ~failed_before).flatten().tolist():
            self.failed_at[agent] = self.num_timesteps

    def _record_episodes(self, rewards: np.ndarray, done: np.ndarray) -> None:
        self._running_returns += rewards
        for index in np.flatnonzero(done):
            self.episode_returns[index // self.n_envs].append(float(self._running_returns[index]))
            self.episode_steps[index // self.n_envs].append(self.num_timesteps)
        self._running_returns[done] = 0.0

    # ------------------------------------------------------------------ update

    @property
    def _records_features(self) -> bool:
        """Whether an arm needs PFO's ``φ_old(s)`` from the rollout."""
        return any(arm.options.feature_drift_coef is not None for arm in self.arms)

    @staticmethod
    def _shuffled(rollout: StackedRollout, order: th.Tensor) -> StackedRollout:
        """Every agent's rollout in its own sample order ``(S, N)``: an epoch's minibatches are then slices."""
        n_agents, n_samples = order.shape
        # one index_select over the flattened (S·N) rows: several times faster than rollout[agents, order]
        rows = (th.arange(n_agents, device=order.device).unsqueeze(1) * n_samples + order).flatten()

        def shuffled(field: th.Tensor | None) -> th.Tensor | None:
            if field is None:
                return None
            return field.reshape(n_agents * n_samples, *field.shape[2:]).index_select(0, rows).view(field.shape)

        return StackedRollout(*cast(list[th.Tensor], [shuffled(field) for field in rollout]))

    def _minibatch_losses(
        self, shuffled: StackedRollout, batch: slice, active: th.Tensor
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """``_losses`` on every agent's minibatch ``batch`` of ``shuffled``; the eager step while a smoothed
        pseudo-entropy has no average yet (the trainer's first step), so that the compiled step is compiled once."""
        minibatch = StackedRollout(
            *cast(list[th.Tensor], [None if field is None else field[:, batch] for field in shuffled])
        )
        starting = any(
            arm.options.value_grad_rescaling == "smoothed" and arm.pseudo_entropy_average is None for arm in self.arms
        )
        return (self._eager_losses if starting else self._losses)(minibatch, active)

    def _eager_losses(self, minibatch: StackedRollout, active: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """One forward pass of every agent on its minibatch, then each arm's loss (``_arm_losses``); updates each
        arm's smoothed pseudo-entropy where its agents are ``active``. (``_losses``, compiled with
        ``compile_step``.)"""
        with _phase("forward"):
            logits, values, features = self.network.forward_with_features(minibatch.observations)
            normalised, log_prob, entropy = categorical_outputs(logits, minibatch.actions)
            pseudo_entropy = kl = None
            if any(arm.options.uses_pseudo_entropy for arm in self.arms):
                pseudo_entropy = objectives.pseudo_entropy(th.softmax(normalised, dim=-1))
            if any(arm.options.uses_exact_kl for arm in self.arms):
                kl = objectives.categorical_kl(minibatch.old_logits, normalised)
        with _phase("loss"):
            return self._arm_losses(minibatch, active, values, log_prob, entropy, features, pseudo_entropy, kl)

    def _arm_losses(
        self,
        minibatch: StackedRollout,
        active: th.Tensor,
        values: th.Tensor,
        log_prob: th.Tensor,
        entropy: th.Tensor,
        features: th.Tensor,
        pseudo_entropy: th.Tensor | None,
        kl: th.Tensor | None,
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """Every agent's loss ``(S,)``, ``STEP_STATISTICS`` ``(S, …)`` and whether it stops its epochs before this
        step (``_ArmState.stops``), from its network outputs on its minibatch (``minibatch``), arm by arm."""
        losses, statistics, stops = [], [], []
        for arm in self.arms:
            agents, options = arm.agents, arm.options
            drift = options.feature_drift_coef is not None
            evaluation = PolicyEvaluation(
                values[agents],
                log_prob[agents],
                entropy[agents],
                pseudo_entropy[agents] if options.uses_pseudo_entropy and pseudo_entropy is not None else None,
                kl[agents] if options.uses_exact_kl and kl is not None else None,
                features[agents] if drift else None,
            )
            old_features = minibatch.old_features
            arm_minibatch = Minibatch(
                minibatch.advantages[agents],
                minibatch.returns[agents],
                minibatch.old_values[agents],
                minibatch.old_log_prob[agents],
                old_features[agents] if drift and old_features is not None else None,
            )
            arm_losses, arm_statistics = arm.loss(evaluation, arm_minibatch)
            if "pseudo_entropy_average" in arm_statistics:
                new_average = arm_statistics["pseudo_entropy_average"]
                previous = new_average if arm.pseudo_entropy_average is None else arm.pseudo_entropy_average
                arm.pseudo_entropy_average = th.where(active[agents], new_average, previous)
            losses.append(arm_losses)
            statistics.append(arm.step_statistics(arm_statistics))
            stops.append(arm.stops(arm_statistics))
        return th.cat(losses), th.cat(statistics), th.cat(stops)

    def update(self, rollout: StackedRollout, permutations: Sequence[th.Tensor] | None = None) -> None:
        """``n_epochs`` epochs of minibatch steps on every agent's rollout, each agent on its own permutation.

        :param rollout: the agents' rollouts.
        :param permutations: one ``(S, N)`` index tensor per epoch; ``None`` draws them from the agents' generators.
        """
        n_samples = rollout.advantages.shape[1]
        parameters = self.optimizer.parameters
        active = ~self.failed
        failed_before = self.failed.clone()
        sums = _UpdateSums(self.n_agents, self.device)
        if permutations is None:  # every epoch's, whoever stops early, so that each stream is the agent's own
            permutations = [
                th.stack([th.randperm(n_samples, generator=generator) for generator in self.generators])
                for _ in range(self.n_epochs)
            ]
        for epoch in range(self.n_epochs):
            if not bool(active.any()):  # every agent stopped early or failed
                break
            # β adapts from the mean KL of the last epoch each agent took part in, as in VariantPPO.train()
            sums.start_epoch(active)
            self.n_updates += active.long()
            shuffled = self._shuffled(rollout, permutations[epoch].to(self.device))
            for start in range(0, n_samples, self.batch_size):
                every_loss, statistics, stops = self._minibatch_losses(
                    shuffled, slice(start, start + self.batch_size), active
                )
                sums.add(active, every_loss, statistics)
                active = active & ~stops
                self.optimizer.zero_grad()
                with _phase("backward"):
                    th.where(active, every_loss, th.zeros_like(every_loss)).sum().backward()
                with _phase("clip"):
                    norms = clip_grad_norms([parameter.grad for parameter in parameters], self.max_grad_norm)  # type: ignore[misc]
                broken = active & ~(th.isfinite(every_loss) & th.isfinite(norms))
                self.failed |= broken
                active = active & ~broken
                with _phase("adam"):
                    self.optimizer.step(active)
        self._record_failures(failed_before)
        self._record_train_statistics(rollout, sums.means(), sums.evaluated)
        self._adapt_kl_coefs(*sums.last_epoch_kl)

    @th.no_grad()
    def _record_train_statistics(
        self, rollout: StackedRollout, means: dict[str, th.Tensor], updated: th.Tensor
    ) -> None:
        """``train_statistics`` of every agent that evaluated a minibatch in this update (``updated``), from the
        update's per-agent means of the minibatch statistics."""
        values, returns = rollout.old_values.double(), rollout.returns.double()
        # SB3's explained_variance(y_pred=values, y_true=returns): 1 − Var[y − ŷ] / Var[y], NaN when Var[y] = 0
        variance = returns.var(dim=1, unbiased=False)
        explained = 1.0 - (returns - values).var(dim=1, unbiased=False) / variance
        explained = th.where(variance == 0, float("nan"), explained)
        columns = dict(means)
        columns.update(explained_variance=explained, n_updates=self.n_updates.double())
        columns["learning_rate"] = self.optimizer.learning_rates
        clip_range = th.empty(self.n_agents, dtype=th.float64, device=self.device)
        for arm in self.arms:
            clip_range[arm.agents] = th.as_tensor(arm.clip_ranges()[0], dtype=th.float64, device=self.device)
        columns["clip_range"] = clip_range
        table = {name: columns[name].double().cpu().tolist() for name in TRAIN_STATISTICS}
        for agent, evaluated in enumerate(updated.tolist()):
            if evaluated:
                self.train_statistics[agent] = {name: table[name][agent] for name in TRAIN_STATISTICS}

    def _adapt_kl_coefs(self, kl: th.Tensor, measured: th.Tensor) -> None:
        """``objectives.adapt_kl_coef`` for each agent of a KL-penalty arm that measured a KL, floored as in
        ``VariantPPO``."""
        for arm in self.arms:
            if arm.options.kl_coef is None:
                continue
            coefficients = arm.agent_options["kl_coef"]
            agents = range(arm.agents.start, arm.agents.stop)
            for index, (agent, coefficient) in enumerate(zip(agents, coefficients.tolist(), strict=True)):
                if bool(measured[agent]) and not bool(self.failed[agent]):
                    adapted = objectives.adapt_kl_coef(
                        coefficient,
                        float(kl[agent]),
                        arm.arm.kl_penalty_target,
                        arm.arm.kl_adapt_factor,
                        arm.arm.kl_adapt_tolerance,
                    )
                    coefficients[index] = max(adapted, KL_COEF_FLOOR)

    @th.no_grad()
    def evaluate(self, n_episodes: int | None = None, seed_offset: int | None = None) -> th.Tensor:
        """Returns of greedy episodes played in parallel, one per environment, as the SB3 runner evaluates.

        Agent ``k``'s environment ``i`` is seeded ``seed_offset + seed_k + i``, as the runner's ``DummyVecEnv``;
        the action is the most probable one (SB3's ``deterministic=True``).

        :param n_episodes: episodes per agent (default: the runner's ``N_EVAL_EPISODES``).
        :param seed_offset: default: the runner's ``EVAL_SEED_OFFSET``.
        :return: ``(S, n_episodes)``; NaN for a failed agent.
        """
        from sb3_ppo_variants.benchmark.runs import EVAL_SEED_OFFSET, N_EVAL_EPISODES

        n_episodes = N_EVAL_EPISODES if n_episodes is None else n_episodes
        seed_offset = EVAL_SEED_OFFSET if seed_offset is None else seed_offset
        env = agents_environment(
            self.env_id,
            [seed_offset + seed + index for seed in self.seeds for index in range(n_episodes)],
            self.max_episode_steps,
        )
        observations, _ = env.reset()
        returns = np.zeros(env.num_envs)
        finished = np.zeros(env.num_envs, dtype=bool)
        while not finished.all():
            logits, _ = self.network.forward(self._tensor(observations).view(self.n_agents, n_episodes, -1))
            actions = th.softmax(logits, dim=-1).argmax(dim=-1)
            observations, rewards, terminated, truncated, _ = env.step(actions.flatten().cpu().numpy())
            returns += np.where(finished, 0.0, rewards)
            finished |= terminated | truncated
        result = th.as_tensor(returns).view(self.n_agents, n_episodes)
        result[self.failed.cpu()] = float("nan")
        return result

    def _record_evaluation(self) -> None:
        start = time.perf_counter()
        returns = self.evaluate()
        for agent, agent_returns in enumerate(returns.tolist()):
            recent = self.episode_returns[agent][-TRAIN_RETURN_WINDOW:]
            self.evaluations[agent].append(
                {
                    "step": self.num_timesteps,
                    "train_seconds": round(start - self._learn_start - self.eval_seconds, 3),
                    "eval_return": float(np.mean(agent_returns)),
                    "eval_returns": [round(value, 2) for value in agent_returns],
                    "train_return": float(np.mean(recent)) if recent else None,
                    "train": {name: round(value, 6) for name, value in self.train_statistics[agent].items()},
                }
            )
        if self._eval_every is not None:
            self._next_eval += self._eval_every
        self.eval_seconds += time.perf_counter() - start

    def set_learning_rates(self, progress_remaining: float) -> None:
        """Every agent's learning rate at ``progress_remaining`` of its schedule, as SB3's ``train()`` sets it."""
        rates = [schedule(progress_remaining) for schedule in self.learning_rate_schedules]
        self.optimizer.learning_rates.copy_(th.tensor(rates, dtype=th.float64))

    def learn(self, total_timesteps: int, eval_every: int | None = None) -> BatchedPPO:
        """Rollouts and updates until every agent has taken ``total_timesteps`` environment steps.

        :param total_timesteps: environment steps per agent.
        :param eval_every: evaluate every agent (``evaluate``) at the start, as soon as its step count reaches
            each multiple of ``eval_every`` and at the end, as the SB3 runner's ``PeriodicEvaluation``;
            ``None``: no evaluation.
        """
        self._eval_every = eval_every
        self._learn_start, self.eval_seconds = time.perf_counter(), 0.0
        if eval_every is not None:
            self._next_eval = self.num_timesteps
            self._record_evaluation()
        while self.num_timesteps < total_timesteps:
            rollout = self.collect_rollout()
            self.set_learning_rates(1.0 - self.num_timesteps / total_timesteps)
            self.update(rollout)
        if eval_every is not None and self.evaluations[0][-1]["step"] != self.num_timesteps:
            self._record_evaluation()
        return self
