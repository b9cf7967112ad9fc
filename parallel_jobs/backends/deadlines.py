"""The one place that decides when a task's time is up.

A run's ``timeout`` is measured in the parent with ``time.perf_counter``, from the moment a task
starts (not from when it was handed over). Each backend knows where its tasks' start times live
(a worker's shared slot, a dask event) and what it can do about an overrun (kill and replace a
worker process, abandon a thread or a future, or only mark the task once it returned); it asks a
:class:`Deadlines` how long it may wait, which of its tasks are overdue, and for the batch that
reports an overrun, so that every backend times out the same way, with the same error.

It lives among the backends, not in ``engine``: the backends are its only users, and the slot
protocol it reads is theirs; the Runner only passes its own wait to ``Backend.collect``.

Imports :mod:`~parallel_jobs.errors`, :mod:`~parallel_jobs.records` and the slot layout of
:mod:`~parallel_jobs.worker`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any, Generic, TypeVar

import attrs

from ..errors import TaskTimeoutError
from ..protocol.messages import IDLE, INDEX, STARTED
from ..protocol.pickling import Failure
from ..records import Batch, Chunk

__all__ = ["Deadlines", "Overrun", "Running", "running_task"]

T = TypeVar("T")
#: A running task: its index, and when it started (``perf_counter`` seconds).
Running = tuple[int, float]

logger = logging.getLogger("parallel_jobs")


@attrs.frozen(slots=True)
class Overrun(Generic[T]):
    """A task past its deadline: what runs it (the backend's own handle), the task, when it
    started (``perf_counter`` seconds) and how long it has run."""

    holder: T
    index: int
    started: float
    elapsed: float


def running_task(slot: Sequence[float]) -> Running | None:
    """The task that a worker's shared ``slot`` says is running, and since when; None when the
    worker runs none.

    The worker writes the index before the start time, so reading the start time again after the
    index tells a task that ended (and another that began) meanwhile: that one is not reported.

    Examples:
        >>> running_task([3.0, 12.5]), running_task([3.0, IDLE])
        ((3, 12.5), None)
    """
    started = slot[STARTED]
    if started == IDLE:
        return None
    index = int(slot[INDEX])
    if slot[STARTED] != started:
        return None
    return index, started


class Deadlines:
    """A run's task ``limit`` (seconds, or None for none), and what it makes of start times.

    Examples:
        >>> deadlines = Deadlines(1.0)
        >>> deadlines.wait(5.0, [])
        5.0
        >>> Deadlines(None).wait(None, [("worker", (7, time.perf_counter()))]) is None
        True
        >>> [o.index for o in deadlines.overdue([("worker", (7, time.perf_counter() - 2.0))])]
        [7]
    """

    __slots__ = ("limit",)

    def __init__(self, limit: float | None) -> None:
        self.limit = limit

    def wait(self, timeout: float | None,
             busy: Iterable[tuple[Any, Running | None]]) -> float | None:
        """How long a backend may wait for outcomes: the caller's ``timeout`` (None: as long as
        it takes), cut short at the earliest deadline of the tasks of ``busy``.

        ``busy`` holds, for each chunk handed over, what runs it (the backend's own handle) and
        its running task, or None when none has started yet (a spawned worker may still be
        importing): that one has no deadline so far, so look again after one ``limit``, which
        cannot be later than the deadline of a task that starts meanwhile. It is only read
        when there is a limit.
        """
        limit = self.limit
        if limit is None:
            return timeout
        now = time.perf_counter()
        for _, task in busy:
            remaining = limit if task is None else max(0.0, task[1] + limit - now)
            timeout = remaining if timeout is None else min(timeout, remaining)
        return timeout

    def overdue(self, busy: Iterable[tuple[T, Running | None]]) -> list[Overrun[T]]:
        """The tasks of ``busy`` (as for :meth:`wait`) that are past their deadline."""
        limit = self.limit
        if limit is None:
            return []
        now = time.perf_counter()
        return [Overrun(holder, task[0], task[1], now - task[1])
                for holder, task in busy
                if task is not None and now - task[1] >= limit]

    def timed_out(self, overrun: Overrun[Any], chunk: Chunk, *, pid: int, stopped: bool,
                  action: str) -> Batch:
        """The batch saying that ``overrun``'s task failed with :class:`TaskTimeoutError`
        (``stopped``: whether what ran it was stopped, or only abandoned), and that the other
        tasks of its ``chunk`` must run again; logs what the backend did about it (``action``).
        """
        assert self.limit is not None
        index = overrun.index
        logger.warning("task %d overran its timeout of %g s; %s", index, self.limit, action)
        error = TaskTimeoutError(index, self.limit, stopped=stopped)
        requeue = [i for i in chunk.indices if i != index]
        return Batch.lost(index, error, pid=pid, started=overrun.started,
                          elapsed=overrun.elapsed, requeue=requeue)

    def mark(self, batch: Batch) -> Batch:
        """Fail the tasks of ``batch`` that ran longer than the limit, for backends that can only
        notice an overrun after the task returns (the task was not stopped)."""
        limit = self.limit
        if limit is None:
            return batch
        for pos, seconds in enumerate(batch.elapsed):
            if seconds > limit:
                batch.values[pos] = None
                error = TaskTimeoutError(batch.indices[pos], limit, stopped=False)
                batch.failures[pos] = Failure.capture(error)
        return batch
