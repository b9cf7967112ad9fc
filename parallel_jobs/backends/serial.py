"""The 'serial' backend: tasks run one by one in the caller's own thread.

Useful for debugging (a task's exception has its full local traceback) and as the reference
behaviour of every other backend. A timeout cannot interrupt a running task here; a task that
overran is marked as timed out when it returns.

Tasks run in the caller's thread, so the caller's Ctrl-C arrives inside a task, as a
KeyboardInterrupt like one the task might raise itself. While a run is in the main thread,
this backend tells them apart by wrapping the SIGINT and SIGTERM handlers: what the caller's
handler raises is re-raised as :class:`~parallel_jobs.errors.CallerInterrupt`, which stops the
run; any other KeyboardInterrupt fails its task only, as on every other backend.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

from ..errors import CallerInterrupt
from ..records import Batch, Chunk, Payload
from ..worker import run_chunk
from ..worker_health import start_in_thread
from .base import Backend, BackendOptions, run_copied

__all__ = ["SerialBackend"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _marking(handler: Callable[[int, Any], Any]) -> Callable[[int, Any], Any]:
    """A signal handler that calls ``handler`` and marks the KeyboardInterrupt it raises as
    the caller's."""

    def marked(signum: int, frame: Any) -> Any:
        try:
            return handler(signum, frame)
        except CallerInterrupt:
            raise
        except KeyboardInterrupt as interrupt:
            raise CallerInterrupt(*interrupt.args) from None

    return marked


class SerialBackend(Backend):
    """Runs each submitted chunk at once, in the calling thread."""

    copies_per_chunk = True

    def __init__(self, options: BackendOptions) -> None:
        super().__init__(options)
        self.payload: Payload | None = None
        self.done: list[Batch] = []
        self.handlers: dict[int, Any] = {}

    def start(self, payload: Payload) -> None:
        self.payload = payload
        start_in_thread(payload)
        if threading.current_thread() is not threading.main_thread():
            return  # the caller's signals reach the main thread, never these tasks
        for signum in _SIGNALS:
            handler = signal.getsignal(signum)
            if callable(handler):
                signal.signal(signum, _marking(handler))
                self.handlers[signum] = handler

    def free_slots(self) -> int:
        # One chunk at a time, so that the Runner sees every outcome before the next starts.
        return 0 if self.done else 1

    def in_flight(self) -> int:
        return len(self.done)

    def submit(self, chunk: Chunk) -> None:
        assert self.payload is not None
        if self.options.copy:
            batch = run_copied(self.payload, chunk)
        else:
            batch = run_chunk(self.payload, chunk)
        self.done.append(self.deadlines.mark(batch))

    def collect(self, timeout: float | None) -> list[Batch]:
        done, self.done = self.done, []
        return done

    def shutdown(self, abort: bool = False) -> None:
        self.done = []
        handlers, self.handlers = self.handlers, {}
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
