"""The outcomes of one run, stored column-wise.

A run of a million tiny tasks must not hold a million result objects: the store keeps one list
of values and a few typed arrays, filled a batch at a time, and builds a
:class:`~parallel_jobs.task.TaskResult` only when one is asked for.
"""

from __future__ import annotations

import time
from array import array
from typing import Any

from .task import Batch, Failure, TaskResult, zeros

__all__ = ["CANCELLED", "FAILED", "PENDING", "SUCCEEDED", "ResultStore"]

PENDING, SUCCEEDED, FAILED, CANCELLED = 0, 1, 2, 3


class ResultStore:
    """Per-task values, states, timings and failures of a run of ``njobs`` tasks.

    Times are kept as the workers measured them (``perf_counter``) and converted to wall-clock
    time with one offset taken when the store was made.
    """

    def __init__(self, njobs: int) -> None:
        self.njobs = njobs
        self.values: list[Any] = [None] * njobs
        self.state = zeros("b", njobs)
        self.started = zeros("d", njobs)
        self.elapsed = zeros("d", njobs)
        self.cpu_time = zeros("d", njobs)
        self.peak_rss = zeros("q", njobs)
        self.pid = zeros("q", njobs)
        self.attempts = zeros("H", njobs)
        self.failures: dict[int, Failure] = {}
        self.done = 0
        self.failed = 0
        self.wall_offset = time.time() - time.perf_counter()

    def record(self, batch: Batch, final_failures: set[int]) -> None:
        """Store ``batch``; positions not in ``final_failures`` but failed are being retried and
        are recorded only as an attempt."""
        indices = batch.indices
        failures = batch.failures
        if not failures and type(indices) is range and indices.step == 1:
            # The hot path: a clean chunk of consecutive tasks, stored by slice assignment.
            lo, hi = indices.start, indices.stop
            self.values[lo:hi] = batch.values
            self.state[lo:hi] = array("b", bytes([SUCCEEDED])) * (hi - lo)
            self.started[lo:hi] = batch.started
            self.elapsed[lo:hi] = batch.elapsed
            self.cpu_time[lo:hi] = batch.cpu_time
            self.peak_rss[lo:hi] = batch.peak_rss
            self.pid[lo:hi] = array("q", [batch.pid]) * (hi - lo)
            # A range chunk is always a first attempt: retries and requeues travel as lists.
            self.attempts[lo:hi] = array("H", [1]) * (hi - lo)
            self.done += hi - lo
            return
        for pos, index in enumerate(indices):
            self.attempts[index] += 1
            self.started[index] = batch.started[pos]
            self.elapsed[index] = batch.elapsed[pos]
            self.cpu_time[index] = batch.cpu_time[pos]
            self.peak_rss[index] = batch.peak_rss[pos]
            self.pid[index] = batch.pid
            failure = failures.get(pos)
            if failure is None:
                self.values[index] = batch.values[pos]
                self.state[index] = SUCCEEDED
                self.failures.pop(index, None)
                self.done += 1
            elif index in final_failures:
                self.values[index] = None
                self.state[index] = FAILED
                self.failures[index] = failure
                self.done += 1
                self.failed += 1

    def cancel_pending(self) -> int:
        """Mark every task that never finished as cancelled; return how many."""
        count = 0
        for index, state in enumerate(self.state):
            if state == PENDING:
                self.state[index] = CANCELLED
                count += 1
        return count

    def exception(self, index: int) -> BaseException | None:
        """What task ``index`` raised, or None."""
        failure = self.failures.get(index)
        return None if failure is None else failure.exception

    def task_result(self, index: int) -> TaskResult:
        """The :class:`TaskResult` of task ``index``."""
        failure = self.failures.get(index)
        started = self.started[index]
        wall = started + self.wall_offset if started else 0.0
        return TaskResult(
            index=index,
            value=self.values[index],
            success=self.state[index] == SUCCEEDED,
            exception=None if failure is None else failure.exception,
            traceback="" if failure is None else failure.traceback,
            started=wall,
            finished=wall + self.elapsed[index] if started else 0.0,
            elapsed=self.elapsed[index],
            cpu_time=self.cpu_time[index],
            peak_rss=self.peak_rss[index],
            pid=self.pid[index],
            attempts=self.attempts[index],
        )
