"""Streams: results as they complete, from an input that may never end.

::

    user's iterable ──pull (only as dispatch needs)──▶ StreamPlan.held ──▶ Runner ──▶ StreamStore
                                                            ▲                            │
    imap's caller ◀──yield (in order, or as they finish)────┴────── forget when taken ◀──┘

A :class:`StreamPlan` reads the input lazily and holds each task's values only until its
outcome is taken; a :class:`StreamSource` hands out tasks without knowing how many there are,
and stops pulling while ``limit`` tasks are held (running, or finished and not yet taken), so
the parent's memory stays flat however long the input. A :class:`StreamStore` keeps only the
outcomes not yet taken. The Runner drives them exactly as it drives a run of known size.

This module owns the bookkeeping of a stream; it starts nothing and never touches a backend.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from ..protocol.pickling import Failure
from ..records import Batch, Chunk, Payload, Task, TaskResult
from .plan import MOST_PER_CHUNK, TaskSource
from .store import FAILED, SUCCEEDED

__all__ = ["Stream", "StreamPlan", "StreamSource", "StreamStore", "held_limit"]


class Stream:
    """Marks an input to be read lazily, by ``imap``, instead of being listed up front."""

    __slots__ = ("values",)

    def __init__(self, values: Any) -> None:
        self.values = values


def held_limit(ncpus: int) -> int:
    """How many tasks a stream holds at once: enough for every worker to have full chunks in
    flight with as many waiting to be taken, few enough to keep the parent's memory flat."""
    return 4 * ncpus * MOST_PER_CHUNK


def _kwargs_items(iterkwargs: Any) -> Iterator[Mapping[str, Any]]:
    """The per-task keyword dicts of a stream's ``iterkwargs``: a dict of iterables, zipped
    lazily, or an iterable of dicts."""
    if isinstance(iterkwargs, Mapping):
        keys = list(iterkwargs)
        for key in keys:
            if not isinstance(key, str):
                msg = f"iterkwargs keys must be argument names (str), not {key!r}"
                raise TypeError(msg)
        columns = [_iterate(iterkwargs[key], f"iterkwargs[{key!r}]") for key in keys]
        return (dict(zip(keys, values, strict=True)) for values in zip(*columns, strict=True))
    return _checked_dicts(_iterate(iterkwargs, "iterkwargs"))


def _checked_dicts(items: Iterator[Any]) -> Iterator[Mapping[str, Any]]:
    for position, item in enumerate(items):
        if not isinstance(item, Mapping):
            msg = f"iterkwargs[{position}] must be a dict of keyword arguments, not " \
                  f"{type(item).__name__}"
            raise TypeError(msg)
        yield item


def _iterate(values: Any, name: str) -> Iterator[Any]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        msg = f"{name} must be an iterable of per-task values, not {type(values).__name__}"
        raise TypeError(msg)
    return iter(values)


class StreamPlan:
    """The tasks of a lazily read input: what a :class:`~parallel_jobs.engine.plan.RunPlan` is for
    an input of known size, holding each task's values only from its pull until it is taken.

    Args:
        iterarg: the per-task values (an iterable), or None.
        iterkwargs: the per-task keyword arguments (a dict of iterables or an iterable of
            dicts), or None.
        payload: what every task shares.
        globaldict: the dict shared by every task, or None.
    """

    #: The number of tasks is not known in advance (callbacks see None).
    njobs: int | None = None

    def __init__(self, iterarg: Any, iterkwargs: Any, payload: Payload,
                 globaldict: Mapping[str, Any] | None = None) -> None:
        self.payload = payload
        self.globaldict = globaldict
        self.by_position = iterarg is not None
        self.by_keyword = iterkwargs is not None
        items: Iterator[Any]
        if self.by_position and self.by_keyword:
            items = zip(_iterate(iterarg, "iterarg"), _kwargs_items(iterkwargs), strict=True)
        elif self.by_keyword:
            items = _kwargs_items(iterkwargs)
        else:
            items = _iterate(iterarg, "iterarg")
        self._items = items
        self.pulled = 0
        self.exhausted = False
        self.held: dict[int, Any] = {}
        self._ahead: list[Any] = []  # one item read to learn whether the input has more

    def has_more(self) -> bool:
        """Whether the input has another item (reading one ahead to find out)."""
        if self._ahead:
            return True
        if not self.exhausted:
            self._ahead = list(itertools.islice(self._items, 1))
            self.exhausted = not self._ahead
        return not self.exhausted

    def pull(self, count: int) -> range:
        """Read up to ``count`` more items; return the indices of their tasks."""
        if self.exhausted and not self._ahead:
            return range(self.pulled, self.pulled)
        items = self._ahead + list(itertools.islice(self._items, count - len(self._ahead)))
        self._ahead = []
        if len(items) < count:
            self.exhausted = True
        start = self.pulled
        self.pulled += len(items)
        self.held.update(zip(range(start, self.pulled), items, strict=True))
        return range(start, self.pulled)

    def forget(self, index: int) -> None:
        """Drop the values of task ``index``, whose outcome was taken."""
        self.held.pop(index, None)

    def chunk(self, indices: Sequence[int]) -> Chunk:
        """The chunk of the given (held) tasks, with their per-task values."""
        items = [self.held[i] for i in indices]
        if self.by_position and self.by_keyword:
            return Chunk(indices, [item[0] for item in items], [item[1] for item in items])
        if self.by_keyword:
            return Chunk(indices, None, items)
        return Chunk(indices, items, None)

    def task(self, index: int) -> Task:
        """The :class:`Task` record of (held) task ``index``."""
        return next(iter(self.chunk([index]).tasks()))


class StreamSource(TaskSource):
    """Hands out the tasks of a :class:`StreamPlan` as its input is read; retries go first.

    No more is read while ``limit`` tasks are held, so the Runner's dispatch pauses until the
    caller of ``imap`` takes results.
    """

    def __init__(self, plan: StreamPlan, limit: int) -> None:
        super().__init__(0)
        self.plan = plan
        self.limit = limit
        self.cancelled = False

    def has_more(self) -> bool:
        return bool(self.retry) or (not self.cancelled and self.plan.has_more())

    def remaining(self) -> int:
        # Unknown: as many as may be held, so that chunks are sized by time, not by a share.
        return len(self.retry) + (0 if self.plan.exhausted else self.limit)

    def take(self, size: int) -> Sequence[int]:
        if self.retry:
            return [self.retry.popleft()]
        room = self.limit - len(self.plan.held)
        if self.cancelled or room <= 0:
            return ()
        return self.plan.pull(min(size, room))

    def cancel(self) -> None:
        self.retry.clear()
        self.cancelled = True


class StreamStore:
    """The outcomes of finished tasks until ``imap`` takes them; what a
    :class:`~parallel_jobs.engine.store.ResultStore` is for a run whose size is unknown.

    Args:
        records: keep each task's timings, to yield :class:`~parallel_jobs.TaskResult`s.
        capture: keep what each task printed.
        ordered: take outcomes in input order (else in the order they finished).
        forget: called with each index taken, to drop the task's input values.
    """

    def __init__(self, records: bool, capture: bool, ordered: bool,
                 forget: Callable[[int], None] | None = None) -> None:
        self.records = records
        self.values: dict[int, Any] = {}
        self.state: dict[int, int] = {}
        self.failures: dict[int, Failure] = {}
        self.stdout: dict[int, str] | None = {} if capture else None
        self.stderr: dict[int, str] | None = {} if capture else None
        self.attempts: dict[int, int] = {}
        self.timings: dict[int, tuple[float, float, float, int, int]] = {}
        self.finished: deque[int] | None = None if ordered else deque()
        self.next = 0
        self.forget = forget
        self.done = self.failed = self.cancelled = 0
        self.wall_offset = time.time() - time.perf_counter()

    def attempts_of(self, index: int) -> int:
        """How many times task ``index`` has run."""
        return self.attempts.get(index, 0)

    def exception(self, index: int) -> BaseException | None:
        """What task ``index`` raised, or None."""
        failure = self.failures.get(index)
        return None if failure is None else failure.exception

    def cancel_pending(self) -> int:
        """Nothing to mark: a stream's tasks that never ran are never yielded."""
        return 0

    def record(self, batch: Batch, final_failures: set[int]) -> None:
        """Store ``batch``; a failure not in ``final_failures`` is retried, counted only as an
        attempt."""
        failures, attempts, finished = batch.failures, self.attempts, self.finished
        for pos, index in enumerate(batch.indices):
            attempts[index] = attempts.get(index, 0) + 1
            failure = failures.get(pos)
            if failure is None:
                self.values[index] = batch.values[pos]
                self.state[index] = SUCCEEDED
            elif index in final_failures:
                self.values[index] = failure.exception  # as in run(): the exception is the result
                self.state[index] = FAILED
                self.failures[index] = failure
                self.failed += 1
            else:
                continue
            if self.records:
                self.timings[index] = (batch.started[pos], batch.elapsed[pos],
                                       batch.cpu_time[pos], batch.peak_rss[pos], batch.pid)
            if self.stdout is not None and self.stderr is not None and batch.stdout is not None:
                self.stdout[index] = batch.stdout[pos]
                self.stderr[index] = batch.stderr[pos] if batch.stderr else ""
            if finished is not None:
                finished.append(index)
            self.done += 1

    def ready(self, final: bool = False) -> Iterator[Any]:
        """Take the outcomes that may be yielded now: in input order, every one up to the
        first still missing (``final``: every one left); else all, in the order they finished."""
        if self.finished is not None:
            while self.finished:
                yield self._take(self.finished.popleft())
            return
        state = self.state
        while self.next in state:
            self.next += 1
            yield self._take(self.next - 1)
        if final:
            # The run ended early (a callback's stop): what finished after a gap still counts.
            for index in sorted(state):
                yield self._take(index)

    def _take(self, index: int) -> Any:
        value = self.values.pop(index)
        succeeded = self.state.pop(index) == SUCCEEDED
        failure = self.failures.pop(index, None)
        attempts = self.attempts.pop(index)
        stdout = "" if self.stdout is None else self.stdout.pop(index, "")
        stderr = "" if self.stderr is None else self.stderr.pop(index, "")
        if self.forget is not None:
            self.forget(index)
        if not self.records:
            return value
        started, elapsed, cpu_time, peak_rss, pid = self.timings.pop(index)
        wall = started + self.wall_offset if started else 0.0
        return TaskResult(
            index=index, value=value if succeeded else None, success=succeeded,
            exception=None if failure is None else failure.exception,
            traceback="" if failure is None else failure.traceback,
            started=wall, finished=wall + elapsed if started else 0.0, elapsed=elapsed,
            cpu_time=cpu_time, peak_rss=peak_rss, pid=pid, attempts=attempts,
            stdout=stdout, stderr=stderr,
        )
