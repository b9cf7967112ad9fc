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
from typing import Any

from ..errors import TaskTimeoutError
from ..protocol.messages import IDLE, STOP
from ..records import Batch, Chunk, Payload
from ..worker import run_chunk
from ..worker_health import start_in_thread
from .base import Backend, BackendOptions, logger, run_copied, wait_for_deadlines

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

    name = "thread"
    stops_tasks = False
    stops_mid_chunk = True

    def __init__(self, options: BackendOptions) -> None:
        super().__init__(options)
        # A timed-out task is abandoned with its thread: give each task its own chunk then.
        self.max_chunk = 1 if (options.copy or options.timeout is not None) else None
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
            worker.slot[0] = chunk.indices[0]
            worker.slot[1] = time.perf_counter()
        worker.inbox.put(chunk)

    def wake(self) -> None:
        self.outbox.put(None)

    def collect(self, timeout: float | None) -> list[Batch]:
        starts = [w.slot[1] for w in self.workers if w.chunk is not None and w.slot[1] != IDLE]
        timeout = wait_for_deadlines(timeout, starts, self.options.timeout)
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

    def _expire(self) -> list[Batch]:
        limit = self.options.timeout
        if limit is None:
            return []
        batches = []
        now = time.perf_counter()
        for number, worker in enumerate(self.workers):
            started = worker.slot[1]
            if worker.chunk is None or started == IDLE or now - started < limit:
                continue
            index = int(worker.slot[0])
            worker.abandoned = True
            logger.warning("task %d overran its timeout of %g s; abandoning its thread",
                           index, limit)
            requeue = [i for i in worker.chunk.indices if i != index]
            error = TaskTimeoutError(index, limit, stopped=False)
            batches.append(
                Batch.lost(index, error, pid=os.getpid(), started=started, elapsed=now - started,
                           requeue=requeue)
            )
            self.workers[number] = self._new(number)
        return batches

    def shutdown(self, abort: bool = False) -> None:
        for worker in self.workers:
            worker.inbox.put(None)
        if not abort:
            for worker in self.workers:
                if not worker.abandoned:
                    worker.thread.join()
        self.workers = []
