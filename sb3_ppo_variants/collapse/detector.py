"""The drop rule: return values in, collapse decisions out (no SB3, no torch).

A *collapse* is ``patience`` consecutive returns below ``best − margin`` (``best −
margin·|best|`` when ``relative``), once the running best has reached ``min_best``. A
collapse stays one event until a return comes back above the threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DropDetector", "DropRule", "Observation"]


def is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def is_non_negative_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class DropRule:
    """How far and how long the return must fall below its running best to count as a collapse.

    :param margin: how far below the running best a return must fall: a fraction of
        ``|best|`` when ``relative``, else in return units. Must be positive.
    :param relative: read ``margin`` as a fraction of the magnitude of the best return.
    :param patience: number of consecutive returns below the threshold that make a collapse.
    :param min_best: the running best must reach this return before a drop counts
        (``None``: any best).
    :param warmup_steps: timesteps during which returns neither set the best nor count as drops.
    """

    margin: float = 0.5
    relative: bool = True
    patience: int = 3
    min_best: float | None = None
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if not is_finite_number(self.margin) or self.margin <= 0:
            raise ValueError(
                f"margin must be a positive finite number (a fraction of |best| when relative=True, "
                f"return units otherwise), got {self.margin!r}"
            )
        if not isinstance(self.relative, bool):
            raise ValueError(f"relative must be True or False, got {self.relative!r}")
        if not is_positive_int(self.patience):
            raise ValueError(f"patience must be an integer >= 1, got {self.patience!r}")
        if self.min_best is not None and not is_finite_number(self.min_best):
            raise ValueError(f"min_best must be None or a finite number, got {self.min_best!r}")
        if not is_non_negative_int(self.warmup_steps):
            raise ValueError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")

    def threshold(self, best: float) -> float:
        """The return below which an observation counts as a drop (``-inf`` before any best)."""
        if not math.isfinite(best):
            return -math.inf
        return best - (self.margin * abs(best) if self.relative else self.margin)


@dataclass(frozen=True)
class Observation:
    """What one return meant.

    :param timesteps: when it was observed.
    :param value: the return.
    :param new_best: it raised the running best.
    :param below_count: consecutive returns below the threshold, this one included.
    :param collapsed: it completed a collapse (``patience`` returns below the threshold).
    """

    timesteps: int
    value: float
    new_best: bool
    below_count: int
    collapsed: bool


@dataclass
class DropDetector:
    """Applies a :class:`DropRule` to a stream of returns.

    ``last_good_timesteps`` is the last return at or above the threshold (or the point a
    rollback restarted from): the updates after it are those that can have caused the drop.
    """

    rule: DropRule = field(default_factory=DropRule)
    best_return: float = -math.inf
    best_timesteps: int | None = None
    last_good_timesteps: int | None = None
    restarted: bool = False
    drop_start_timesteps: int | None = None
    below_returns: list[float] = field(default_factory=list)
    collapse_open: bool = False

    @property
    def threshold(self) -> float:
        return self.rule.threshold(self.best_return)

    def observe(self, timesteps: int, value: float) -> Observation | None:
        """Feed one return; ``None`` for a non-finite value, which is ignored."""
        value = float(value)
        if not math.isfinite(value):
            return None
        new_best = collapsed = False
        if timesteps >= self.rule.warmup_steps:
            if value > self.best_return:
                self.best_return, self.best_timesteps, new_best = value, int(timesteps), True
            if value < self.threshold:
                if not self.below_returns:
                    self.drop_start_timesteps = int(timesteps)
                self.below_returns.append(value)
                good_enough = self.rule.min_best is None or self.best_return >= self.rule.min_best
                if len(self.below_returns) >= self.rule.patience and not self.collapse_open and good_enough:
                    self.collapse_open = collapsed = True
            else:
                self.last_good_timesteps = int(timesteps)
                self.restarted = False
                self.below_returns, self.drop_start_timesteps = [], None
                self.collapse_open = False
        return Observation(int(timesteps), value, new_best, len(self.below_returns), collapsed)

    def restart_from(self, timesteps: int) -> None:
        """The policy was restored at ``timesteps``: a later drop is measured from there."""
        self.below_returns, self.drop_start_timesteps = [], None
        self.collapse_open = False
        self.last_good_timesteps = int(timesteps)
        self.restarted = True

    def first_cause_timesteps(self) -> int:
        """The first update stamp that can have caused the open drop.

        After a rollback at ``R`` the update stamped ``R`` was made before it and discarded.
        """
        last_good = self.last_good_timesteps if self.last_good_timesteps is not None else self.best_timesteps
        assert last_good is not None
        return last_good + 1 if self.restarted else last_good
