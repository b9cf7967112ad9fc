"""What a run has to do: the plan of its tasks, and the source that hands them out.

A :class:`RunPlan` holds a run's validated per-task values and turns any set of task indices
into a :class:`~parallel_jobs.records.Chunk`; a :class:`TaskSource` says which indices go next
(retries first, then fresh consecutive ones). A lazily read input has its own plan and source
(:mod:`~parallel_jobs.engine.stream`); the Runner reads both through :class:`TaskPlan`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import attrs

from ..records import Chunk, Payload, Task

__all__ = ["MOST_PER_CHUNK", "RunPlan", "TaskPlan", "TaskSource"]


class TaskPlan(Protocol):
    """What the Runner reads of a plan, whether its input is a list or a stream."""

    @property
    def njobs(self) -> int | None:
        """The number of tasks, or None while a stream's length is unknown."""

    @property
    def payload(self) -> Payload:
        """What every task shares."""

    @property
    def globaldict(self) -> Mapping[str, Any] | None:
        """The dict shared by every task, or None."""

    def chunk(self, indices: Sequence[int]) -> Chunk:
        """The chunk of the given tasks, with their per-task values."""

    def task(self, index: int) -> Task:
        """The :class:`Task` record of task ``index``."""


MOST_PER_CHUNK = 4096
"""The most tasks an automatically sized chunk holds (see :class:`Chunker`)."""


@attrs.frozen(slots=True)
class RunPlan:
    """Everything validated about the tasks of a run, ready to be turned into chunks.

    Attributes:
        njobs: the number of tasks.
        iterarg: an indexable of per-task values, or None (no iterated positional value).
        iterkwargs: a dict of equal-length indexables, a list of dicts, or None.
        payload: what every task shares.
    """

    njobs: int
    iterarg: Sequence[Any] | None
    iterkwargs: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]] | None
    payload: Payload
    globaldict: Mapping[str, Any] | None = None

    def task(self, index: int) -> Task:
        """The :class:`Task` record of task ``index``."""
        return next(iter(self.chunk([index]).tasks()))

    def chunk(self, indices: Sequence[int]) -> Chunk:
        """The chunk of the given tasks, with their per-task values."""
        itervals: Sequence[Any] | None = None
        if self.iterarg is not None:
            if type(indices) is range and isinstance(self.iterarg, (list, tuple, range)):
                itervals = self.iterarg[indices.start : indices.stop]
            elif type(indices) is range and hasattr(self.iterarg, "__array__"):
                itervals = list(self.iterarg[indices.start : indices.stop])
            else:
                itervals = [self.iterarg[i] for i in indices]
        kwargs: list[Mapping[str, Any]] | None = None
        if isinstance(self.iterkwargs, Mapping):
            items = list(self.iterkwargs.items())
            kwargs = [{key: values[i] for key, values in items} for i in indices]
        elif self.iterkwargs is not None:
            kwargs = [self.iterkwargs[i] for i in indices]
        return Chunk(indices, itervals, kwargs)


class TaskSource:
    """Hands out the run's tasks lazily, as chunks of consecutive indices; retries go first."""

    def __init__(self, njobs: int) -> None:
        self.njobs = njobs
        self.next_index = 0
        self.retry: deque[int] = deque()

    def has_more(self) -> bool:
        return bool(self.retry) or self.next_index < self.njobs

    def remaining(self) -> int:
        return len(self.retry) + self.njobs - self.next_index

    def take(self, size: int) -> Sequence[int]:
        """Up to ``size`` task indices: requeued ones one by one, then fresh consecutive ones."""
        if self.retry:
            return [self.retry.popleft()]
        start = self.next_index
        self.next_index = min(self.njobs, start + size)
        return range(start, self.next_index)

    def cancel(self) -> None:
        """Hand out nothing more."""
        self.retry.clear()
        self.next_index = self.njobs
