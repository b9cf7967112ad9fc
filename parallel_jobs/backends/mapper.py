"""A user's map-like callable as the backend: ``parallelizer=pool.map``, a dask map, ...

The callable is called once, as ``mapfunc(run_task_call, calls)``, with one :class:`TaskCall`
per task, exactly as sciris calls it (a function and a list of arguments). Each ``TaskCall``
holds the whole payload, because the map may send each item anywhere. Timeouts can only be
noticed after a task returns, and a failure can only stop the run after the map returns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, cast

import attrs

from ..records import Batch, Chunk, Payload
from ..worker import run_chunk
from .base import Backend, BackendOptions

__all__ = ["MapBackend", "TaskCall", "run_task_call"]


@attrs.frozen(slots=True)
class TaskCall:
    """One task with everything it needs, for a map function that sees only its items."""

    payload: Payload
    chunk: Chunk


def run_task_call(call: TaskCall) -> Batch:
    """Run one :class:`TaskCall`; this is the function handed to the user's map."""
    return run_chunk(call.payload, call.chunk)


class MapBackend(Backend):
    """Collects every task, then hands them all to the user's map in one call."""

    chunk_limit = 1  # the map is given one item per task, as sciris gives it

    def __init__(self, options: BackendOptions, mapfunc: Callable[..., Any]) -> None:
        super().__init__(options)
        self.mapfunc = mapfunc
        self.payload: Payload | None = None
        self.pending: list[Chunk] = []

    def start(self, payload: Payload) -> None:
        self.payload = payload

    def share_dict(self, initial: Mapping[str, Any]) -> MutableMapping[str, Any]:
        # Only the user knows where their map runs tasks: their globaldict is used as given (a
        # manager's dict, say, shared by their pool's processes), never copied.
        return cast("MutableMapping[str, Any]", initial)

    def free_slots(self) -> int:
        return 1 << 30

    def in_flight(self) -> int:
        return len(self.pending)

    def submit(self, chunk: Chunk) -> None:
        self.pending.append(chunk)

    def collect(self, timeout: float | None) -> list[Batch]:
        assert self.payload is not None
        calls = [TaskCall(self.payload, chunk) for chunk in self.pending]
        self.pending = []
        if not calls:
            return []
        outputs = list(self.mapfunc(run_task_call, calls))
        if len(outputs) != len(calls):
            msg = (
                f"parallelizer {self.mapfunc!r} returned {len(outputs)} results for "
                f"{len(calls)} tasks; it must behave like map(func, items)"
            )
            raise ValueError(msg)
        for output in outputs:
            if not isinstance(output, Batch):
                msg = (
                    f"parallelizer {self.mapfunc!r} returned a {type(output).__name__}; it must "
                    "return what the function it was given returns, like map(func, items)"
                )
                raise TypeError(msg)
        return [self.deadlines.mark(batch) for batch in outputs]

    def shutdown(self, abort: bool = False) -> None:
        self.pending = []
