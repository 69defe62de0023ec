"""Where the runs of a grid execute: in this process, in a pool of local processes, or as Ray tasks.

An executor only computes: the driver (the process that called :func:`execute`) receives every
result and writes it, so workers need no access to the results directory and a worker that dies
never leaves a half-written file. Ray is imported only by :class:`RayTasks`, so the ``ray`` extra
is needed only for ``--ray-address``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Generator, Hashable
from concurrent import futures
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

Item = TypeVar("Item")
Result = dict[str, Any]


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@dataclass(frozen=True)
class Outcome(Generic[Item]):
    """A finished item: its result, or the error that ended it (``result`` is then ``None``)."""

    item: Item
    result: Result | None
    error: BaseException | None = None


class Executor(Protocol):
    def capacity(self) -> int:
        """How many items may run at once."""

    def submit(self, function: Callable[[Any], Result], item: Any) -> Hashable: ...

    def wait(self, handles: list[Any]) -> list[Any]:
        """Block until at least one of ``handles`` has finished; return the finished ones."""

    def result(self, handle: Any) -> Result:
        """The item's result, or raise its error."""

    def close(self, cancel: bool) -> None: ...


class Listener(Protocol):
    def started(self, item: Any) -> None: ...


def execute(
    executor: Executor, function: Callable[[Item], Result], items: list[Item], listener: Listener | None = None
) -> Generator[Outcome[Item], None, None]:
    """Run ``function`` on every item, in order, at most ``executor.capacity()`` at a time.

    Outcomes come in the order items finish. An item whose function raises yields its error and
    the others go on. Submitting only what can run keeps "running" true for the progress display
    and keeps the grid's order (seeds outermost) when the cluster is smaller than the grid.
    """
    pending = deque(items)
    in_flight: dict[Hashable, Item] = {}
    try:
        while pending or in_flight:
            while pending and len(in_flight) < executor.capacity():
                item = pending.popleft()
                in_flight[executor.submit(function, item)] = item
                if listener is not None:
                    listener.started(item)
            for handle in executor.wait(list(in_flight)):
                item = in_flight.pop(handle)
                try:
                    outcome = Outcome(item, executor.result(handle))
                except Exception as error:  # the run's own error, or its worker's death
                    outcome = Outcome(item, None, error)
                yield outcome
    except BaseException:
        executor.close(cancel=True)
        raise
    executor.close(cancel=False)


class InProcess:
    """One item at a time in this process (``--workers 1``): what the benchmark always did."""

    def capacity(self) -> int:
        return 1

    def submit(self, function: Callable[[Any], Result], item: Any) -> futures.Future[Result]:
        future: futures.Future[Result] = futures.Future()
        future.set_running_or_notify_cancel()
        self._next = (future, function, item)
        return future

    def wait(self, handles: list[Any]) -> list[Any]:
        future, function, item = self._next
        try:
            future.set_result(function(item))
        except Exception as error:
            future.set_exception(error)
        return [future]

    def result(self, handle: futures.Future[Result]) -> Result:
        return handle.result()

    def close(self, cancel: bool) -> None:
        pass


class ProcessPool:
    """``workers`` local processes, each running one item at a time.

    Processes are started with ``spawn``: a forked copy of a parent that already ran torch can
    deadlock in its thread pools. Each process imports the package once and serves many items.
    """

    def __init__(self, workers: int):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self.pool = futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))

    def capacity(self) -> int:
        return self.workers

    def submit(self, function: Callable[[Any], Result], item: Any) -> futures.Future[Result]:
        return self.pool.submit(function, item)

    def wait(self, handles: list[Any]) -> list[Any]:
        done, _ = futures.wait(handles, return_when=futures.FIRST_COMPLETED)
        return list(done)

    def result(self, handle: futures.Future[Result]) -> Result:
        try:
            return handle.result()
        except futures.process.BrokenProcessPool:
            # a worker died (killed, out of memory): every item in flight is lost with the pool;
            # a fresh pool runs the rest of the grid and the next command reruns the lost items
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = futures.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
            raise

    def close(self, cancel: bool) -> None:
        if cancel:
            # an interrupted grid stops its runs now: shutdown() alone lets them finish, and the
            # interpreter's exit waits for them (the pool has no public way to stop a running item)
            for process in list((getattr(self.pool, "_processes", None) or {}).values()):
                process.terminate()
        self.pool.shutdown(wait=not cancel, cancel_futures=cancel)


def call(function: Callable[[Any], Result], item: Any) -> Result:
    """The Ray task: ``function(item)`` on whichever node Ray chose."""
    return function(item)


class RayTasks:
    """Every item a Ray task on an existing cluster, asking for ``cpus_per_item`` CPUs.

    A task whose worker process or node dies is retried up to ``max_retries`` times by Ray;
    an exception raised by the function itself is not retried (it would raise again) but returned.

    :param address: the cluster's address (``auto``: the cluster started on this machine with ``ray start``)
    :param cpus_per_item: CPUs Ray reserves for each task (the run's torch threads)
    :param max_retries: Ray's retries of a task after a system failure
    """

    def __init__(self, address: str, cpus_per_item: int, max_retries: int = 3):
        try:
            import ray
        except ImportError as error:
            raise ImportError("--ray-address needs Ray: pip install 'sb3-ppo-variants[ray]'") from error

        self.ray = ray
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        self.cpus_per_item = cpus_per_item
        self.task = ray.remote(num_cpus=cpus_per_item, max_retries=max_retries, retry_exceptions=False)(call)

    def capacity(self) -> int:
        # the cluster's size now (nodes join and leave); at least 1, so an autoscaling cluster with
        # no worker yet still receives a task that makes it scale up
        cpus = self.ray.cluster_resources().get("CPU", 0.0)
        return max(1, int(cpus // self.cpus_per_item))

    def submit(self, function: Callable[[Any], Result], item: Any) -> Any:
        return self.task.options(name=str(item)).remote(function, item)

    def wait(self, handles: list[Any]) -> list[Any]:
        ready, _ = self.ray.wait(handles, num_returns=1)
        return ready

    def result(self, handle: Any) -> Result:
        return self.ray.get(handle)

    def close(self, cancel: bool) -> None:
        # disconnecting ends this driver's job, and Ray stops the job's tasks still running
        self.ray.shutdown()


def describe(error: BaseException) -> str:
    """One line for a failed item: the exception raised by the function, wherever it ran."""
    cause = getattr(error, "cause", None)  # a RayTaskError wraps the function's own exception
    if isinstance(cause, BaseException):
        error = cause
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[0] if message else ''}".rstrip(": ")
