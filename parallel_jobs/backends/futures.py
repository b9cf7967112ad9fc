"""The 'fast' backend: ``concurrent.futures.ProcessPoolExecutor`` from the standard library.

Kept for sciris compatibility. Its limits are the executor's: when one worker dies, the executor
breaks and cannot say which task killed it, so every task in flight at that moment fails with
``WorkerCrashedError`` (the executor is then rebuilt for the remaining tasks); and it cannot stop
one running task, so a task that overruns its timeout is abandoned and its process killed when
the run ends. The default backend has neither limit.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import pickle
import time
from collections.abc import Mapping, MutableMapping
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from ..errors import TaskTimeoutError, WorkerCrashedError
from ..task import Batch, Chunk, Payload
from ..worker import encode_batch, run_chunk
from .base import (
    Backend,
    BackendOptions,
    chunk_failed,
    kill_tree,
    logger,
    wait_for_deadlines,
)
from .wire import chunk_pickler, encode_chunk, pack_payload, pack_per_task

__all__ = ["FuturesBackend"]

_PAYLOAD: Payload | None = None


def _initialize(blob: bytes) -> None:
    global _PAYLOAD
    from .._shm import keep_segments_open, loads_payload

    keep_segments_open()
    _PAYLOAD = loads_payload(blob)


def _run(message: bytes) -> bytes:
    assert _PAYLOAD is not None
    return encode_batch(run_chunk(_PAYLOAD, pickle.loads(message)))


class FuturesBackend(Backend):
    """Chunks submitted to a ``ProcessPoolExecutor`` of ``ncpus`` processes."""

    name = "concurrent.futures"
    stops_tasks = False
    reseeds = True

    def __init__(self, options: BackendOptions) -> None:
        super().__init__(options)
        self.max_chunk = 1 if options.timeout is not None else None
        self.context = multiprocessing.get_context(options.start_method)
        # Chunks are pickled here, not by the executor: the standard pickler cannot send what a
        # notebook's __main__ defines to a spawned worker.
        self.pickle_chunk = chunk_pickler(self.context.get_start_method() == "fork")
        self.executor: cf.ProcessPoolExecutor | None = None
        self.blob = b""
        self.shared: Any = None
        self.manager: Any = None
        self.futures: dict[cf.Future[bytes], tuple[Chunk, float]] = {}
        self.abandoned: set[cf.Future[bytes]] = set()
        self.waker: cf.Future[bytes] = cf.Future()  # completed by wake()

    def start(self, payload: Payload) -> None:
        from .._shm import SharedArrays

        self.shared = SharedArrays()
        self.blob = pack_payload(pack_per_task(payload, self.shared), self.shared)
        self._new_executor()

    def _new_executor(self) -> None:
        self.executor = cf.ProcessPoolExecutor(
            max_workers=self.options.ncpus, mp_context=self.context,
            initializer=_initialize, initargs=(self.blob,),
        )
        logger.debug("started a concurrent.futures pool of %d processes", self.options.ncpus)

    def share_dict(self, initial: Mapping[str, Any]) -> MutableMapping[str, Any]:
        # A manager process serves the dict, so a write in one task is seen by later ones.
        self.manager = self.context.Manager()
        shared: MutableMapping[str, Any] = self.manager.dict(initial)
        return shared

    def free_slots(self) -> int:
        return max(0, self.options.ncpus - self.in_flight())

    def in_flight(self) -> int:
        return len(self.futures)

    def submit(self, chunk: Chunk) -> None:
        assert self.executor is not None
        message = encode_chunk(chunk, self.pickle_chunk)
        self.futures[self.executor.submit(_run, message)] = (chunk, time.perf_counter())
        # Outside fork, submit() wakes the executor's manager thread before starting the
        # process for this task, so the manager may wait without watching it and miss its
        # crash until another task ends (seen on CPython 3.11). Wake it again now that it exists.
        wakeup = getattr(self.executor, "_executor_manager_thread_wakeup", None)
        if wakeup is not None:
            wakeup.wakeup()

    def wake(self) -> None:
        try:
            self.waker.set_result(b"")
        except cf.InvalidStateError:
            pass  # already woken

    def collect(self, timeout: float | None) -> list[Batch]:
        starts = [sent for _, sent in self.futures.values()]
        timeout = wait_for_deadlines(timeout, starts, self.options.timeout)
        done, _ = cf.wait([*self.futures, self.waker], timeout, return_when=cf.FIRST_COMPLETED)
        batches = []
        broken = False
        for future in done:
            if future is self.waker:
                continue
            chunk, _ = self.futures.pop(future)
            try:
                batches.append(pickle.loads(future.result()))
            except BrokenProcessPool:
                broken = True
                detail = "concurrent.futures cannot tell which task killed its pool."
                errors = {i: WorkerCrashedError(i, None, detail) for i in chunk.indices}
                batches.append(chunk_failed(chunk, dict(errors), 0))
            except Exception as exc:
                batches.append(chunk_failed(chunk, dict.fromkeys(chunk.indices, exc), 0))
        if broken:
            logger.warning("the concurrent.futures pool broke; starting a new one")
            self._kill_executor()
            self._new_executor()
        batches.extend(self._expire())
        return batches

    def _expire(self) -> list[Batch]:
        limit = self.options.timeout
        if limit is None:
            return []
        now = time.perf_counter()
        batches = []
        for future, (chunk, sent) in list(self.futures.items()):
            if now - sent < limit:
                continue
            del self.futures[future]
            self.abandoned.add(future)
            index = chunk.indices[0]
            error = TaskTimeoutError(index, limit, stopped=False)
            batches.append(Batch.lost(index, error, pid=0, started=sent, elapsed=now - sent))
        return batches

    def _kill_executor(self) -> None:
        executor, self.executor = self.executor, None
        if executor is None:
            return
        processes = dict(getattr(executor, "_processes", None) or {})
        executor.shutdown(wait=False, cancel_futures=True)
        for process in processes.values():
            if process.is_alive():
                kill_tree(process.pid)
            process.join(1.0)

    def shutdown(self, abort: bool = False) -> None:
        if abort or self.abandoned:
            self._kill_executor()
        elif self.executor is not None:
            self.executor.shutdown(wait=True)
            self.executor = None
        self.futures.clear()
        self.abandoned.clear()
        logger.debug("stopped the concurrent.futures pool")
        if self.shared is not None:
            self.shared.close()
            self.shared = None
        if self.manager is not None:
            self.manager.shutdown()
            self.manager = None
