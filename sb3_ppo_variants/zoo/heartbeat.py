"""Heartbeats for studies shared through a database, so that a killed worker's trial ends as FAIL.

rl-zoo3 hands ``--storage postgresql://...`` to ``optuna.create_study`` as a plain URL, which gives an
``RDBStorage`` without heartbeat: a worker killed mid-trial leaves its trial RUNNING forever, and that
trial keeps counting towards ``--max-total-trials``. The registration gives ``rl_zoo3.exp_manager`` an
``optuna`` whose ``create_study`` turns such a URL into an ``RDBStorage`` with a heartbeat; every other
attribute is optuna's own. The surviving workers then mark a trial whose heartbeat stopped as FAIL before
they start their next trial.

Environment variables (whole seconds):

- ``SB3_PPO_VARIANTS_HEARTBEAT_INTERVAL``: how often a running trial records its heartbeat (default 60;
  0 turns the heartbeat off);
- ``SB3_PPO_VARIANTS_HEARTBEAT_GRACE_PERIOD``: how long after its last heartbeat a trial counts as dead
  (default: twice the interval);
- ``SB3_PPO_VARIANTS_FAILED_TRIAL_MAX_RETRY``: how many times the parameters of a dead trial are queued
  again for another worker (default 0).

Journal storages (``--storage study.log``) have no heartbeat in optuna; they are left as they are.
"""

import inspect
import os
import time
import types
from typing import Any

import optuna

HEARTBEAT_INTERVAL_VARIABLE = "SB3_PPO_VARIANTS_HEARTBEAT_INTERVAL"
GRACE_PERIOD_VARIABLE = "SB3_PPO_VARIANTS_HEARTBEAT_GRACE_PERIOD"
MAX_RETRY_VARIABLE = "SB3_PPO_VARIANTS_FAILED_TRIAL_MAX_RETRY"
DEFAULT_HEARTBEAT_INTERVAL = 60

_logger = optuna.logging.get_logger("optuna")


def _seconds(variable: str, default: int | None) -> int | None:
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{variable} must be a whole number of seconds, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{variable} must be >= 0, got {value}")
    return value


def report_dead_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Stale-trial callback: say which trial was failed and why."""
    _logger.warning(
        f"Trial {trial.number} was marked FAIL: its worker stopped sending heartbeats (killed or disconnected)."
    )


def _stale_trial_callback(max_retry: int) -> Any:
    if max_retry == 0:
        return report_dead_trial
    # optuna >= 4.9 name, then the older one
    retry_class = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", optuna.storages.RetryFailedTrialCallback)
    retry = retry_class(max_retry=max_retry)

    def report_and_retry(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        report_dead_trial(study, trial)
        retry(study, trial)

    return report_and_retry


def is_database_url(storage: object) -> bool:
    """Whether rl-zoo3 would hand this ``--storage`` value to optuna as an ``RDBStorage`` URL."""
    return isinstance(storage, str) and "://" in storage and not storage.endswith(".log")


def storage_with_heartbeat(storage: Any) -> Any:
    """An ``RDBStorage`` with heartbeat for a database URL; anything else is returned unchanged."""
    if not is_database_url(storage):
        return storage
    interval = _seconds(HEARTBEAT_INTERVAL_VARIABLE, DEFAULT_HEARTBEAT_INTERVAL)
    if not interval:
        return storage
    grace_period = _seconds(GRACE_PERIOD_VARIABLE, None) or 2 * interval
    if grace_period <= interval:
        raise ValueError(
            f"{GRACE_PERIOD_VARIABLE} ({grace_period} s) must exceed {HEARTBEAT_INTERVAL_VARIABLE} ({interval} s), "
            "or live trials would be failed between two heartbeats"
        )
    callback = _stale_trial_callback(_seconds(MAX_RETRY_VARIABLE, 0) or 0)
    # optuna >= 4.9 renamed failed_trial_callback to heartbeat_stale_trial_callback
    parameters = inspect.signature(optuna.storages.RDBStorage).parameters
    callback_argument = (
        "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in parameters else "failed_trial_callback"
    )
    kwargs = {"heartbeat_interval": interval, "grace_period": grace_period, callback_argument: callback}
    return _create_rdb_storage(storage, kwargs)


def _create_rdb_storage(url: str, kwargs: dict[str, Any], attempts: int = 5) -> Any:
    # Workers started together on an empty database race to create optuna's tables; the loser gets an
    # integrity error from the database, and the tables exist when it tries again.
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


class OptunaWithHeartbeat(types.ModuleType):
    """``optuna`` as ``rl_zoo3.exp_manager`` sees it: ``create_study`` adds the heartbeat, the rest is optuna."""

    def __init__(self, wrapped: types.ModuleType) -> None:
        super().__init__(wrapped.__name__, wrapped.__doc__)
        self.wrapped = wrapped

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)

    def create_study(self, *args: Any, **kwargs: Any) -> optuna.Study:
        if "storage" in kwargs:
            kwargs["storage"] = storage_with_heartbeat(kwargs["storage"])
        elif args:
            args = (storage_with_heartbeat(args[0]), *args[1:])
        return self.wrapped.create_study(*args, **kwargs)
