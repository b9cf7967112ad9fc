"""The 'fast' backend: ``concurrent.futures.ProcessPoolExecutor`` from the standard library.

Kept for sciris compatibility. Its limits are the executor's: when one worker dies, the executor
breaks and cannot say which task killed it, so every task in flight at that moment fails with
``WorkerCrashedError`` (the executor is then rebuilt for the remaining tasks); and it cannot stop
one running task, so a task that overruns its timeout is abandoned and its process killed when
the run ends. The default backend has neither limit.

With a ``timeout``, each worker process claims one of ``ncpus`` shared slots when it starts and
writes there which task it runs and since when, as the default pool's workers do: a task's clock
starts when it starts, not when it was handed to the executor. An abandoned task still holds
its process, so it still counts against ``ncpus``: no task is handed to the executor to wait
behind it. Once abandoned tasks hold every process and nothing else runs, the executor is
replaced (its processes killed) so that the remaining tasks have somewhere to run.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import pickle
import signal
from collections.abc import Iterator, Mapping, MutableMapping
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from ..errors import InitializerError, WorkerCrashedError
from ..protocol.messages import (
    IDLE,
    chunk_pickler,
    decode_batch,
    encode_batch,
    encode_chunk,
    pack_payload,
    pack_per_task,
)
from ..records import Batch, Chunk, Payload
from ..worker import run_chunk
from ..worker_health import prepare_threads, start_worker
from .base import Backend, BackendOptions, chunk_failed, kill_tree, logger
from .deadlines import Running, running_task

__all__ = ["FuturesBackend"]

_PAYLOAD: Payload | None = None
#: This worker's slot (the task it runs and since when), with a ``timeout`` only.
_SLOT: Any = None
#: Why this worker cannot run tasks: its ``initializer`` failed (see ``health``).
_SET_UP_FAILED: InitializerError | None = None


def _initialize(blob: bytes, slots: list[Any] | None, claimed: Any) -> None:
    global _PAYLOAD, _SLOT, _SET_UP_FAILED
    from ..protocol.shm import keep_segments_open, loads_payload

    # Ctrl-C in a terminal reaches the whole process group; the parent decides what happens
    # (as in the default pool's workers). Otherwise a task would record the caller's
    # KeyboardInterrupt as its own failure, and the run would go on.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    keep_segments_open()
    _PAYLOAD = loads_payload(blob)
    _SET_UP_FAILED = start_worker(_PAYLOAD, ())
    if slots is not None:
        # The executor never starts more than ncpus processes, one slot each.
        with claimed.get_lock():
            _SLOT = slots[claimed.value]
            claimed.value += 1


def _run(message: bytes) -> bytes:
    assert _PAYLOAD is not None
    if _SET_UP_FAILED is not None:
        raise _SET_UP_FAILED  # re-raised once in the parent: the run stops
    return encode_batch(run_chunk(_PAYLOAD, pickle.loads(message), _SLOT))


class FuturesBackend(Backend):
    """Chunks submitted to a ``ProcessPoolExecutor`` of ``ncpus`` processes."""

    reseeds = True
    abandons_overruns = True

    def __init__(self, options: BackendOptions) -> None:
        super().__init__(options)
        self.context = multiprocessing.get_context(options.start_method)
        # Chunks are pickled here, not by the executor: the standard pickler cannot send what a
        # notebook's __main__ defines to a spawned worker.
        self.pickle_chunk = chunk_pickler(self.context.get_start_method() == "fork")
        self.executor: cf.ProcessPoolExecutor | None = None
        self.blob = b""
        self.shared: Any = None
        self.manager: Any = None
        self.futures: dict[cf.Future[bytes], Chunk] = {}
        self.abandoned: set[cf.Future[bytes]] = set()
        self.slots: list[Any] | None = None
        self.waker: cf.Future[bytes] = cf.Future()  # completed by wake()

    def start(self, payload: Payload) -> None:
        from ..protocol.shm import SharedArrays

        self.shared = SharedArrays()
        self.blob = pack_payload(pack_per_task(payload, self.shared), self.shared)
        prepare_threads(payload.worker)
        self._new_executor()

    def _new_executor(self) -> None:
        claimed = None
        if self.options.timeout is not None:
            self.slots = [self.context.RawArray("d", [0.0, IDLE])
                          for _ in range(self.options.ncpus)]
            claimed = self.context.Value("i", 0)
        self.executor = cf.ProcessPoolExecutor(
            max_workers=self.options.ncpus, mp_context=self.context,
            initializer=_initialize, initargs=(self.blob, self.slots, claimed),
        )
        logger.debug("started a concurrent.futures pool of %d processes", self.options.ncpus)

    def share_dict(self, initial: Mapping[str, Any]) -> MutableMapping[str, Any]:
        # A manager process serves the dict, so a write in one task is seen by later ones.
        self.manager = self.context.Manager()
        shared: MutableMapping[str, Any] = self.manager.dict(initial)
        return shared

    def free_slots(self) -> int:
        if self.abandoned:
            self.abandoned = {future for future in self.abandoned if not future.done()}
            if self.abandoned and not self.futures and len(self.abandoned) >= self.options.ncpus:
                # Every process runs a task that was abandoned and already failed: only new
                # processes can run the rest.
                logger.warning("every concurrent.futures worker runs an abandoned task; "
                               "starting a new pool")
                self._kill_executor()
                self._new_executor()
        return max(0, self.options.ncpus - self.in_flight() - len(self.abandoned))

    def in_flight(self) -> int:
        return len(self.futures)

    def submit(self, chunk: Chunk) -> None:
        assert self.executor is not None
        message = encode_chunk(chunk, self.pickle_chunk)
        self.futures[self.executor.submit(_run, message)] = chunk
        # Outside fork, submit() wakes the executor's manager thread before starting the
        # process for this task, so the manager may wait without watching it and miss its
        # crash until another task ends (seen on CPython 3.11). Wake it again now that it exists.
        # The executor has no public way to do so: a private name, read with getattr so that a
        # Python without it still runs. Without it test_faults.py::
        # test_fast_backend_dies_on_a_crash_without_waiting[spawn] fails one run in three.
        wakeup = getattr(self.executor, "_executor_manager_thread_wakeup", None)
        if wakeup is not None:
            wakeup.wakeup()

    def wake(self) -> None:
        try:
            self.waker.set_result(b"")
        except cf.InvalidStateError:
            pass  # already woken

    def _busy(self) -> Iterator[tuple[cf.Future[bytes], Running | None]]:
        """Each future in flight and its task, running since when the workers' slots say (see
        ``Deadlines.wait``; with a timeout, every chunk holds one task)."""
        starts = dict(task for task in map(running_task, self.slots or ()) if task is not None)
        for future, chunk in self.futures.items():
            index = chunk.indices[0]
            yield future, ((index, starts[index]) if index in starts else None)

    def collect(self, timeout: float | None) -> list[Batch]:
        timeout = self.deadlines.wait(timeout, self._busy())
        done, _ = cf.wait([*self.futures, self.waker], timeout, return_when=cf.FIRST_COMPLETED)
        batches = []
        broken = False
        for future in done:
            if future is self.waker:
                continue
            chunk = self.futures.pop(future)
            try:
                batches.append(decode_batch(future.result(), chunk, 0))
            except InitializerError:
                raise
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
        batches = []
        for overrun in self.deadlines.overdue(self._busy()):
            future = overrun.holder
            if future.done():
                continue  # it ended in time and is on its way to collect()
            chunk = self.futures.pop(future)
            self.abandoned.add(future)
            batches.append(self.deadlines.timed_out(
                overrun, chunk, pid=0, stopped=False,
                action="abandoning it (its process dies with the pool)"))
        return batches

    def _kill_executor(self) -> None:
        self.abandoned.clear()  # their processes die here
        executor, self.executor = self.executor, None
        if executor is None:
            return
        # shutdown() lets running tasks finish, and a hung or abandoned task never does: its
        # process must be killed. The executor names its processes only in a private attribute
        # (a public kill_workers() arrives in Python 3.14); without it test_interrupt.py::
        # test_an_interrupt_stops_the_run_cleanly[*-fast-*] fails, its workers left running.
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
