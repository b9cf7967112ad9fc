"""The 'thread' backend: tasks run in threads of the calling process.

Threads share memory, so nothing is pickled and ``globaldict`` is a plain dict; only code that
releases the GIL (NumPy, I/O) runs truly in parallel. A thread cannot be killed: a task that
overruns its timeout is recorded as timed out and abandoned (it may go on running in the
background), and a fresh thread takes its place.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

from ..protocol.messages import IDLE, INDEX, STARTED, STOP
from ..records import Batch, Chunk, Payload
from ..worker import run_chunk
from ..worker_health import start_in_thread
from .base import Backend, BackendOptions, run_copied
from .deadlines import Running, running_task

__all__ = ["ThreadBackend"]


class _ThreadWorker:
    def __init__(self, number: int, payload: Payload, outbox: queue.SimpleQueue[Any],
                 copy: bool) -> None:
        self.number = number
        self.payload = payload
        self.outbox = outbox
        self.copy = copy
        self.inbox: queue.SimpleQueue[Chunk | None] = queue.SimpleQueue()
        # The running task, since when, and the caller's stop (see worker.run_chunk).
        self.slot: list[float] = [0.0, IDLE, 0.0]
        self.chunk: Chunk | None = None
        self.abandoned = False
        self.thread = threading.Thread(
            target=self._loop, name=f"parallel_jobs-thread-{number}", daemon=True
        )
        self.thread.start()

    def _loop(self) -> None:
        started = False
        while True:
            chunk = self.inbox.get()
            if chunk is None:
                return
            try:
                if not started:
                    started = True
                    start_in_thread(self.payload)
                if self.copy:
                    batch = run_copied(self.payload, chunk, self.slot)
                else:
                    batch = run_chunk(self.payload, chunk, self.slot)
            except BaseException as exc:
                # run_chunk records whatever a task raises; what escapes it is a bug of ours,
                # and without a message the Runner would wait for this thread forever.
                self.outbox.put((self, exc))
                return
            self.outbox.put((self, batch))
            if self.abandoned:
                return


class ThreadBackend(Backend):
    """``ncpus`` threads, each fed its own chunks."""

    stops_mid_chunk = True
    abandons_overruns = True
    copies_per_chunk = True

    def __init__(self, options: BackendOptions) -> None:
        super().__init__(options)
        # None is a wake-up call (see wake()), not a batch.
        self.outbox: queue.SimpleQueue[tuple[_ThreadWorker, Batch | BaseException] | None] = (
            queue.SimpleQueue())
        self.workers: list[_ThreadWorker] = []
        self.payload: Payload | None = None

    def start(self, payload: Payload) -> None:
        self.payload = payload
        self.workers = [self._new(n) for n in range(self.options.ncpus)]

    def _new(self, number: int) -> _ThreadWorker:
        assert self.payload is not None
        return _ThreadWorker(number, self.payload, self.outbox, self.options.copy)

    def stop_tasks(self) -> None:
        for worker in self.workers:
            worker.slot[STOP] = 1.0

    def free_slots(self) -> int:
        return sum(1 for w in self.workers if w.chunk is None)

    def in_flight(self) -> int:
        return sum(1 for w in self.workers if w.chunk is not None)

    def submit(self, chunk: Chunk) -> None:
        worker = next(w for w in self.workers if w.chunk is None)
        worker.chunk = chunk
        if self.options.timeout is not None:
            # Start the clock now: collect() may wait before the thread records the start.
            worker.slot[INDEX] = chunk.indices[0]
            worker.slot[STARTED] = time.perf_counter()
        worker.inbox.put(chunk)

    def wake(self) -> None:
        self.outbox.put(None)

    def collect(self, timeout: float | None) -> list[Batch]:
        timeout = self.deadlines.wait(timeout, self._busy())
        batches: list[Batch] = []
        try:
            item = self.outbox.get(timeout=timeout) if self.in_flight() else None
            while item is not None:
                worker, batch = item
                if isinstance(batch, BaseException):
                    raise batch
                if not worker.abandoned:
                    worker.chunk = None
                    batches.append(batch)
                item = self.outbox.get_nowait()
        except queue.Empty:
            pass
        batches.extend(self._expire())
        return batches

    def _busy(self) -> Iterator[tuple[_ThreadWorker, Running | None]]:
        """Each busy thread and the task it runs (see ``Deadlines.wait``)."""
        for worker in self.workers:
            if worker.chunk is not None:
                yield worker, running_task(worker.slot)

    def _expire(self) -> list[Batch]:
        batches = []
        for overrun in self.deadlines.overdue(self._busy()):
            worker = overrun.holder
            assert worker.chunk is not None
            worker.abandoned = True
            batches.append(self.deadlines.timed_out(overrun, worker.chunk, pid=os.getpid(),
                                                    stopped=False, action="abandoning its thread"))
            self.workers[worker.number] = self._new(worker.number)
        return batches

    def shutdown(self, abort: bool = False) -> None:
        for worker in self.workers:
            worker.inbox.put(None)
        if not abort:
            for worker in self.workers:
                if not worker.abandoned:
                    worker.thread.join()
        self.workers = []
