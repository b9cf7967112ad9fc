"""The outcomes of one run, stored column-wise.

A run of a million tiny tasks must not hold a million result objects: the store keeps one list
of values and a few typed arrays, filled a batch at a time, and builds a
:class:`~parallel_jobs.records.TaskResult` only when one is asked for.
"""

from __future__ import annotations

import time
from array import array
from typing import Any, Protocol

from ..protocol.pickling import Failure
from ..records import Batch, TaskResult, zeros

__all__ = ["CANCELLED", "FAILED", "PENDING", "SUCCEEDED", "OutcomeStore", "ResultStore"]

PENDING, SUCCEEDED, FAILED, CANCELLED = 0, 1, 2, 3


class OutcomeStore(Protocol):
    """What the Runner needs of a store: a :class:`ResultStore`, or the store of a stream
    (``stream.StreamStore``), whose size is unknown. ``values``, ``state`` and ``stdout`` are
    indexed by task index."""

    done: int
    failed: int
    values: Any
    state: Any
    stdout: Any

    def record(self, batch: Batch, final_failures: set[int]) -> None: ...

    def attempts_of(self, index: int) -> int: ...

    def exception(self, index: int) -> BaseException | None: ...

    def cancel_pending(self) -> int: ...


class ResultStore:
    """Per-task values, states, timings and failures of a run of ``njobs`` tasks.

    Columns are as narrow as their meaning allows, 19 bytes of bookkeeping per task besides the
    value: start times are float32 seconds since the store was made, durations and CPU times
    float32 seconds, peak memory in KiB. Start times are converted back to wall-clock time with
    one offset taken when the store was made. A task's process is a one-byte number into the
    table of the run's worker pids (widened if a run ever sees more than 255 workers), and
    its attempts take one byte unless ``retries`` allows more than 255.

    Without ``records``, only values, states and failures are kept (1 byte a task besides the
    value), and attempts only when a failed task may be retried.

    Args:
        njobs: the number of tasks.
        retries: how many times a failed task may run again, so how many attempts to count.
        records: keep each task's timings, resources, process and attempts.

    Examples:
        >>> store = ResultStore(3)
        >>> store.task_result(0).attempts, store.done
        (0, 0)
    """

    def __init__(
        self, njobs: int, retries: int = 0, records: bool = True, capture: bool = False
    ) -> None:
        self.njobs = njobs
        self.records = records
        self.values: list[Any] = [None] * njobs
        # What each task printed, with capture=True.
        self.stdout: list[str] | None = [""] * njobs if capture else None
        self.stderr: list[str] | None = [""] * njobs if capture else None
        self.state = zeros("b", njobs)
        timed = njobs if records else 0
        self.started = zeros("f", timed)
        self.elapsed = zeros("f", timed)
        self.cpu_time = zeros("f", timed)
        self.peak_kib = zeros("I", timed)
        self.worker = zeros("B", timed)
        self.pids: list[int] = [0]  # worker number 0: no process (the task never ran)
        self._numbers: dict[int, int] = {0: 0}
        counted = njobs if records or retries else 0
        self.attempts = zeros("B" if retries < 255 else "I", counted)
        self.failures: dict[int, Failure] = {}
        self.done = 0
        self.failed = 0
        self.cancelled = 0
        self.origin = time.perf_counter()
        self.wall_origin = time.time()

    @property
    def succeeded(self) -> int:
        """How many tasks have succeeded so far."""
        return self.done - self.failed

    def attempts_of(self, index: int) -> int:
        """How many times task ``index`` has run (1 for a finished one whose attempts were not
        counted: without records, a task that may not be retried runs once)."""
        if self.attempts:
            return self.attempts[index]
        return 0 if self.state[index] in (PENDING, CANCELLED) else 1

    def _number(self, pid: int) -> int:
        """The worker number of process ``pid``, given a new one (widening the column when
        numbers outgrow it) the first time it is seen."""
        number = self._numbers.get(pid)
        if number is None:
            number = self._numbers[pid] = len(self.pids)
            self.pids.append(pid)
            if number == 256 or number == 65536:
                self.worker = array("H" if number == 256 else "I", self.worker)
        return number

    def pid(self, index: int) -> int:
        """The pid of the process that last ran task ``index`` (0: none did)."""
        return self.pids[self.worker[index]]

    def record(self, batch: Batch, final_failures: set[int]) -> None:
        """Store ``batch``; positions not in ``final_failures`` but failed are being retried and
        are recorded only as an attempt."""
        indices = batch.indices
        failures = batch.failures
        if not failures and type(indices) is range and indices.step == 1:
            # The hot path: a clean chunk of consecutive tasks, stored by slice assignment.
            lo, hi = indices.start, indices.stop
            n = hi - lo
            self.values[lo:hi] = batch.values
            self.state[lo:hi] = array("b", bytes([SUCCEEDED])) * n
            if self.stdout is not None and self.stderr is not None and batch.stdout is not None:
                self.stdout[lo:hi] = batch.stdout
                self.stderr[lo:hi] = batch.stderr or [""] * n
            if self.attempts:
                # A range chunk is always a first attempt: retries and requeues travel as lists.
                self.attempts[lo:hi] = array(self.attempts.typecode, [1]) * n
            if self.records:
                self._record_times(batch, lo, hi)
            self.done += n
            return
        for pos, index in enumerate(indices):
            if self.attempts:
                self.attempts[index] += 1
            if self.records:
                self._record_times(batch, index, index + 1, pos)
            if self.stdout is not None and self.stderr is not None and batch.stdout is not None:
                self.stdout[index] = batch.stdout[pos]
                self.stderr[index] = batch.stderr[pos] if batch.stderr else ""
            failure = failures.get(pos)
            if failure is None:
                self.values[index] = batch.values[pos]
                self.state[index] = SUCCEEDED
                self.failures.pop(index, None)
                self.done += 1
            elif index in final_failures:
                # As sciris documents: "store the exception as the result".
                self.values[index] = failure.exception
                self.state[index] = FAILED
                self.failures[index] = failure
                self.done += 1
                self.failed += 1

    def _record_times(self, batch: Batch, lo: int, hi: int, pos: int = 0) -> None:
        """Copy the timings and resources of tasks ``lo:hi``, at ``pos`` on in ``batch``."""
        origin = self.origin
        end = pos + hi - lo
        started = batch.started[pos:end]
        self.started[lo:hi] = array("f", [t - origin if t else 0.0 for t in started])
        self.elapsed[lo:hi] = array("f", batch.elapsed[pos:end])
        self.cpu_time[lo:hi] = array("f", batch.cpu_time[pos:end])
        self.peak_kib[lo:hi] = array("I", [b >> 10 for b in batch.peak_rss[pos:end]])
        number = self._number(batch.pid)  # first: it may widen the column
        self.worker[lo:hi] = array(self.worker.typecode, [number]) * (hi - lo)

    def cancel_pending(self) -> int:
        """Mark every task that never finished as cancelled; return how many."""
        if self.done + self.cancelled == self.njobs:
            return 0
        count = 0
        for index, state in enumerate(self.state):
            if state == PENDING:
                self.state[index] = CANCELLED
                count += 1
        self.cancelled += count
        return count

    def exception(self, index: int) -> BaseException | None:
        """What task ``index`` raised, or None."""
        failure = self.failures.get(index)
        return None if failure is None else failure.exception

    def task_result(self, index: int) -> TaskResult:
        """The :class:`TaskResult` of task ``index`` (only when the store keeps records)."""
        if not self.records:
            msg = "this store keeps no per-task records"
            raise RuntimeError(msg)
        failure = self.failures.get(index)
        ran = self.attempts[index] > 0
        wall = self.wall_origin + self.started[index] if ran else 0.0
        return TaskResult(
            index=index,
            value=self.values[index] if failure is None else None,
            success=self.state[index] == SUCCEEDED,
            exception=None if failure is None else failure.exception,
            traceback="" if failure is None else failure.traceback,
            started=wall,
            finished=wall + self.elapsed[index] if ran else 0.0,
            elapsed=self.elapsed[index],
            cpu_time=self.cpu_time[index],
            peak_rss=self.peak_kib[index] << 10,
            pid=self.pid(index),
            attempts=self.attempts[index],
            stdout="" if self.stdout is None else self.stdout[index],
            stderr="" if self.stderr is None else self.stderr[index],
        )
