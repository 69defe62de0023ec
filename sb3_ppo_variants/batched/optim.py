"""Adam and gradient-norm clipping over stacked parameters, each agent on its own.

Adam is elementwise, so one optimiser over the stacks keeps the agents independent; the learning rate,
the step count and whether a step is taken are per agent. The update is torch's ``Adam``
(``torch.optim.Adam``'s single-tensor form), written out so that the learning rate can be a tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch as th

_Function = TypeVar("_Function", bound=Callable[..., Any])


def compile_function(function: _Function) -> _Function:
    """``torch.compile`` for a step of the batched trainer, without dynamo's guards on module globals.

    A compiled call first checks its guards, and those on the globals that the step's code reads (torch's
    functions, this package's objectives, the named tuples) were most of that check: 0.69 of a 60-agent
    minibatch step's 8 CPU-milliseconds, 0.26 without them (``torch.profiler``'s ``TorchDynamo Cache Lookup``).
    Those globals do not change while a process trains. The guards on the trainer's own attributes (its arms'
    options, its network's layout) and on the tensors stay, so a trainer whose arms differ still gets its own
    graph; the generated code, and so every result, is the same."""
    skip_globals = getattr(th.compiler, "skip_guard_on_globals_unsafe", None)
    options = {} if skip_globals is None else {"guard_filter_fn": skip_globals}
    return th.compile(function, dynamic=False, options=options)  # type: ignore[return-value]


def _per_agent(values: th.Tensor, like: th.Tensor) -> th.Tensor:
    """``(S,)`` values broadcast against a stacked tensor ``(S, ...)``."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def clip_grad_norms(gradients: Sequence[th.Tensor], max_norm: float) -> th.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` for each agent: scale agent ``k``'s gradients by
    ``min(1, max_norm / (‖g_k‖ + 1e-6))``, ``‖g_k‖`` the 2-norm over all of its parameters.

    :param gradients: stacked gradients ``(S, ...)``, scaled in place.
    :param max_norm: the largest norm.
    :return: every agent's norm before clipping, ``(S,)``.
    """
    norms = th.stack([gradient.flatten(1).norm(dim=1) for gradient in gradients]).norm(dim=0)
    scale = th.clamp(max_norm / (norms + 1e-6), max=1.0)
    for gradient in gradients:
        gradient.mul_(_per_agent(scale, gradient))
    return norms


def masked_adam_update_(
    parameter: th.Tensor,
    gradient: th.Tensor,
    exp_avg: th.Tensor,
    exp_avg_sq: th.Tensor,
    step_size: th.Tensor,
    bias_correction2_sqrt: th.Tensor,
    keep: th.Tensor,
    beta1: float,
    beta2: float,
    eps: float,
) -> None:
    """Adam's update of one stacked tensor, in place, where ``keep`` is true (elsewhere nothing changes):
    ``m ← β1 m + (1 − β1) g``, ``v ← β2 v + (1 − β2) g²``, ``θ ← θ − s m / (√v / √(1 − β2ᵗ) + ε)`` with the step
    size ``s = lr / (1 − β1ᵗ)``, as ``torch.optim.Adam``. ``step_size``, ``bias_correction2_sqrt`` and ``keep``
    broadcast against the stacks (one value per agent)."""
    new_avg = exp_avg.lerp(gradient, 1.0 - beta1)
    new_avg_sq = exp_avg_sq * beta2 + (1.0 - beta2) * gradient * gradient
    updated = parameter - step_size * new_avg / (new_avg_sq.sqrt() / bias_correction2_sqrt + eps)
    exp_avg.copy_(th.where(keep, new_avg, exp_avg))
    exp_avg_sq.copy_(th.where(keep, new_avg_sq, exp_avg_sq))
    parameter.copy_(th.where(keep, updated, parameter))


class StackedAdam:
    """Adam (Kingma and Ba 2015) over stacked parameters with a learning rate per agent.

    :param parameters: stacked leaf tensors ``(S, ...)``.
    :param learning_rates: one learning rate per agent, ``(S,)``.
    :param betas: ``(β1, β2)``.
    :param eps: ``ε``; SB3's PPO uses ``1e-5``.
    :param compiled: each step one loop over every stacked tensor (``masked_adam_update_`` compiled by
        ``torch.compile``), in place of about ten passes of eager operations over stacks that outgrow the
        processor's caches; the same arithmetic.
    """

    def __init__(
        self,
        parameters: Sequence[th.Tensor],
        learning_rates: th.Tensor,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-5,
        compiled: bool = False,
    ) -> None:
        self.parameters = list(parameters)
        self.learning_rates = learning_rates
        self.betas = betas
        self.eps = eps
        self.steps = th.zeros(len(learning_rates), dtype=th.float64, device=learning_rates.device)
        self.exp_avgs = [th.zeros_like(parameter) for parameter in self.parameters]
        self.exp_avg_sqs = [th.zeros_like(parameter) for parameter in self.parameters]
        self._masked_update = compile_function(masked_adam_update_) if compiled else masked_adam_update_
        self.compiled = compiled

    @th.no_grad()
    def step(self, active: th.Tensor) -> None:
        """One step for the agents where ``active`` is true; the others keep their parameters and moments.

        :param active: boolean ``(S,)``.
        """
        beta1, beta2 = self.betas
        self.steps += active.to(self.steps.dtype)
        steps = self.steps.clamp(min=1.0)
        step_sizes = (self.learning_rates.double() / (1.0 - beta1**steps)).to(self.parameters[0].dtype)
        bias_correction2_sqrt = ((1.0 - beta2**steps) ** 0.5).to(self.parameters[0].dtype)
        every_agent = not self.compiled and bool(active.all())
        for parameter, exp_avg, exp_avg_sq in zip(self.parameters, self.exp_avgs, self.exp_avg_sqs, strict=True):
            gradient = parameter.grad
            assert gradient is not None
            if every_agent:  # the common case of the eager step, in place
                exp_avg.lerp_(gradient, 1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(gradient, gradient, value=1.0 - beta2)
                denominator = (exp_avg_sq.sqrt() / _per_agent(bias_correction2_sqrt, parameter)).add_(self.eps)
                parameter.sub_(_per_agent(step_sizes, parameter) * exp_avg / denominator)
                continue
            self._masked_update(
                parameter,
                gradient,
                exp_avg,
                exp_avg_sq,
                _per_agent(step_sizes, parameter),
                _per_agent(bias_correction2_sqrt, parameter),
                _per_agent(active, parameter),
                beta1,
                beta2,
                self.eps,
            )

    def zero_grad(self) -> None:
        for parameter in self.parameters:
            parameter.grad = None
