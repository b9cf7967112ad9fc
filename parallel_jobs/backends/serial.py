"""The 'serial' backend: tasks run one by one in the caller's own thread.

Useful for debugging (a task's exception has its full local traceback) and as the reference
behaviour of every other backend. A timeout cannot interrupt a running task here; a task that
overran is marked as timed out when it returns.
"""

from __future__ import annotations

from ..task import Batch, Chunk, Payload
from ..worker import run_chunk
from .base import Backend, BackendOptions, copied, mark_overruns

__all__ = ["SerialBackend"]


class SerialBackend(Backend):
    """Runs each submitted chunk at once, in the calling thread."""

    name = "serial"
    stops_tasks = False

    def __init__(self, options: BackendOptions) -> None:
        super().__init__(options)
        self.max_chunk = 1 if options.copy else None
        self.payload: Payload | None = None
        self.done: list[Batch] = []

    def start(self, payload: Payload) -> None:
        self.payload = payload

    def free_slots(self) -> int:
        # One chunk at a time, so that the Runner sees every outcome before the next starts.
        return 0 if self.done else 1

    def in_flight(self) -> int:
        return len(self.done)

    def submit(self, chunk: Chunk) -> None:
        assert self.payload is not None
        payload = self.payload
        if self.options.copy:
            payload, chunk = copied(payload, chunk)
        self.done.append(mark_overruns(run_chunk(payload, chunk), self.options.timeout))

    def collect(self, timeout: float | None) -> list[Batch]:
        done, self.done = self.done, []
        return done

    def shutdown(self, abort: bool = False) -> None:
        self.done = []
