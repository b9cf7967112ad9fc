"""The default backend: worker processes that the Runner starts and watches itself.

::

    parent (Runner thread)                              worker process (worker_main)
    ----------------------                              ----------------------------
    submit(chunk) --- send_bytes(pickle(chunk)) -----> recv_bytes -> run_chunk()
                                                          | writes slot = (task index, start time)
    collect(): wait([result pipes..., sentinels...])      v
        <------------------- send_bytes(pickle(batch)) -- encode_batch()
        sentinel fires  -> the worker died: read slot, fail that task, requeue the rest, replace it
        slot too old    -> the task overran: kill the worker tree, fail that task, requeue the rest
        waker pipe      -> Runner.interrupt() from another thread: return, the Runner stops

A worker that cannot unpickle what it was sent answers with a SerializationError instead of a
batch. A worker leads a process group of its own and ignores SIGINT: the parent decides, and
kills the whole group (the worker and whatever its tasks started) when a task crashes or
overruns. On Linux the kernel kills that group when the parent process ends, however it ends
(see :func:`.kept.lifeline`), so no worker outlives a parent killed outright. What outlives
one run (workers kept for the next, lifelines) is in :mod:`.kept`.

Nothing polls: the parent blocks on result pipes and process sentinels together, so a dead worker
is seen the moment it dies, and the only timer is the earliest task deadline. The payload
(function, shared arguments) reaches a worker once: inherited under fork, pickled once (large
arrays through shared memory) otherwise. Each message carries a chunk, never a single tiny task.
"""

from __future__ import annotations

import contextlib
import importlib
import mmap
import multiprocessing
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

from ..engine.health import crash_error, replay_logs
from ..errors import MemoryLimitError, WorkerCrashedError
from ..protocol.messages import (
    STOP,
    chunk_pickler,
    decode_batch,
    encode_chunk,
    needs_copies,
    pack_payload,
    pack_per_task,
    world,
)
from ..records import Batch, Chunk, Payload, WorkerOptions
from ..worker import manager_main, worker_main
from ..worker_health import prepare_threads
from . import kept
from .base import Backend, BackendOptions, chunk_failed, kill_group, kill_tree, logger
from .deadlines import Running, running_task
from .kept import Worker

__all__ = ["ProcessPoolBackend", "daemonic", "default_start_method"]


def default_start_method() -> str | None:
    """'fork' where the platform has it (fastest start, shared data for free), else its default."""
    if sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods():
        return "fork"
    return None


def daemonic(method: str) -> bool:
    """Whether this process is a daemon of the library that ``method`` starts processes with.

    Such a process (a worker of a ``Pool``, say) may not start processes of its own.
    ``multiprocess`` and ``multiprocessing`` keep separate records, so a daemon of one is no
    daemon to the other.

    Examples:
        >>> daemonic("multiprocess")
        False
    """
    module = sys.modules.get("multiprocess" if method == "multiprocess" else "multiprocessing")
    return module is not None and bool(module.current_process().daemon)


def _process_library(library: str, method: str | None) -> Any:
    """The module that starts the workers of ``library``'s pool under start ``method``.

    ``multiprocess`` differs from the standard library in one thing, pickling with dill, which
    a spawned or fork-server worker needs to be sent a lambda or a closure. A forked worker is
    sent nothing of the kind: it inherits the function and the shared arguments, and what else
    crosses the pipe falls back to dill by itself (:func:`~parallel_jobs.records.dumps`). So under
    fork the standard library starts the workers, and a run that pickles nothing exotic never
    imports dill: 40 ms and 3 MB of the parent's memory saved. The worker then runs
    ``multiprocess``'s after-fork hooks itself (:func:`~parallel_jobs.worker.worker_main`).
    Except in a daemon of the standard library (a task of its ``Pool``), which it forbids to
    start processes, while ``multiprocess`` allows it.
    """
    import multiprocessing.connection

    if library != "multiprocess":
        return multiprocessing
    forks = multiprocessing.get_context(method).get_start_method() == "fork"
    if forks and not multiprocessing.current_process().daemon:
        return multiprocessing
    import multiprocess
    import multiprocess.connection

    return multiprocess


def _preload_forkserver(module: Any) -> None:
    """Have the fork server import the worker's code (and NumPy, when the caller uses it) once,
    so that a worker forked from it starts in milliseconds instead of importing them again.

    Modules already asked for are kept; nothing changes once the server runs.
    """
    # The list the caller asked for is kept only in the fork server's private attributes; read
    # it, or this call would drop it (test_pool_lifecycle.py::
    # test_the_fork_server_keeps_what_the_caller_asked_it_to_preload fails without it).
    server = getattr(importlib.import_module(f"{module.__name__}.forkserver"), "_forkserver", None)
    preload = list(getattr(server, "_preload_modules", None) or ["__main__"])
    for name in ("parallel_jobs.worker", "numpy"):
        if name in sys.modules and name not in preload:
            preload.append(name)
    module.set_forkserver_preload(preload)


INHERIT_MOST_TASKS = 200
"""Forked workers inherit the large arrays of a run of up to this many tasks per worker (see
``protocol.shm``); longer runs copy them to shared memory once."""


class ProcessPoolBackend(Backend):
    """A fixed number of worker processes from a ``multiprocess`` (dill) or stdlib context."""

    reseeds = True
    stops_mid_chunk = True

    def __init__(self, options: BackendOptions, library: str = "multiprocess") -> None:
        super().__init__(options)
        self.library = library
        method = options.start_method or default_start_method()
        module = _process_library(library, method)
        self.context = module.get_context(method)
        # Forked workers inherit the payload, start with their first chunk and are never kept.
        self.forked = self.context.get_start_method() == "fork"
        self.pickle_chunk = chunk_pickler(self.forked)
        if self.context.get_start_method() == "forkserver":
            _preload_forkserver(module)
            kept.used_forkserver(module.__name__)
        self.wait = module.connection.wait
        self.key = (library, self.context.get_start_method())
        self.workers: list[Worker | None] = [None] * options.ncpus
        self.payload: Payload | bytes | None = None
        self.shared: Any = None
        self.manager: Any = None
        self.retiring: list[Worker] = []  # asked to exit before shutdown (see retire_idle)
        self.waker: tuple[Any, Any] | None = None  # (reader, writer): see wake()
        self.world = b""  # the parent's cwd, environment and path, sent with the payload
        self.health: WorkerOptions | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, payload: Payload) -> None:
        self.health = payload.worker
        prepare_threads(self.health)
        self.waker = self.context.Pipe(duplex=False)
        if self.forked:
            # Each worker is forked when its first chunk is submitted: the first one is at
            # work while the next fork takes its millisecond. It inherits the packed payload
            # (packed only if a task could change it: a plain run never imports dill).
            if needs_copies(payload):
                from ..protocol.shm import SharedArrays

                # Large arrays stay where they are, inherited, unless a run of many tasks
                # makes checking them after each task cost more than one copy to shared memory
                # (a check reads 8 bytes of page table per 4 KiB: 1/200 of copying them).
                njobs = self.options.njobs  # 0: not known (a stream), so possibly endless
                inherit = 0 < njobs <= INHERIT_MOST_TASKS * self.options.ncpus
                self.shared = SharedArrays(inherit=inherit)
                payload = pack_per_task(payload, self.shared)
            self.payload = payload
            return
        reusable = kept.take(self.key, len(self.workers))
        for number in range(len(self.workers)):
            if reusable:
                reused = reusable.pop()
                reused.number = number
                reused.slot[STOP] = 0.0
                self.workers[number] = reused
                logger.debug("reusing worker %d (pid %d)", number, reused.process.pid)
            else:
                self._spawn(number)
        # Packed only now, while the workers boot: under spawn their imports take as long as
        # copying hundreds of megabytes into shared memory.
        from ..protocol.shm import SharedArrays

        self.shared = SharedArrays()
        self.payload = pack_payload(pack_per_task(payload, self.shared), self.shared)
        self.world = world()
        for worker in self.workers:
            if worker is not None:
                kept.send_payload(worker, self.world, self.payload)

    def _spawn(self, number: int) -> Worker:
        parent_conn, child_conn = self.context.Pipe(duplex=True)
        slot = self._shared_slot()
        inherited = self.payload if isinstance(self.payload, Payload) else None
        process = self.context.Process(
            target=worker_main,
            args=(child_conn, inherited, slot, kept.lifeline(self.context)),
            name=f"parallel_jobs-worker-{number}",
            daemon=False,  # daemonic processes may not start their own pools (nested runs)
        )
        with _interrupts_held():
            process.start()
            child_conn.close()
            worker = Worker(number, process, parent_conn, slot)
            self.workers[number] = worker
        if isinstance(self.payload, bytes):
            kept.send_payload(worker, self.world, self.payload)
        logger.debug("started worker %d (pid %d)", number, process.pid)
        return worker

    def retire_idle(self) -> None:
        # Forked workers only: spawned ones are kept for the next run when this one ends.
        if not self.forked:
            return
        idle = [w for w in self.workers if w is not None and w.chunk is None]
        for worker in idle:
            self.workers[worker.number] = None
        kept.tell_to_exit(idle)
        self.retiring.extend(idle)

    def _shared_slot(self) -> Any:
        """Four doubles shared with a worker: the task it runs and since when, which it
        writes, whether to start no further task, which this process writes (see
        :func:`~parallel_jobs.worker.run_chunk`), and the memory that broke
        ``task_memory_limit`` (see :mod:`~parallel_jobs.worker_health`)."""
        if self.forked:
            # A shared anonymous mapping, which a forked worker inherits. A RawArray would cost a
            # worker's start a file in /dev/shm and an arena of multiprocessing's heap.
            return memoryview(mmap.mmap(-1, 32)).cast("d")
        return self.context.RawArray("d", 4)

    def stop_tasks(self) -> None:
        for worker in self.workers:
            if worker is not None:
                worker.slot[STOP] = 1.0

    def shutdown(self, abort: bool = False) -> None:
        live = [w for w in self.workers if w is not None]
        self.workers = [None] * len(self.workers)
        retiring, self.retiring = self.retiring, []
        with contextlib.ExitStack() as release:
            # Released after the workers (last in, first out), also when stopping them fails.
            manager, waker, shared = self.manager, self.waker, self.shared
            self.manager = self.waker = self.shared = None
            if manager is not None:
                release.callback(manager.shutdown)
            for end in waker or ():
                release.callback(end.close)
            if shared is not None:
                release.callback(shared.close)
            try:
                if not abort:
                    # Spawned and forkserver workers are kept for the next run if they can be.
                    live = [w for w in live if self.forked or not kept.keep(self.key, w)]
                    kept.tell_to_exit(live)
                    kept.join([*retiring, *live], grace=2.0)
            finally:
                for worker in retiring + live:
                    kept.stop(worker)

    # -- dispatch ------------------------------------------------------------------------------

    def share_dict(self, initial: Mapping[str, Any]) -> MutableMapping[str, Any]:
        # A manager process serves the dict, so a write in one task is seen by later ones. It
        # comes from the pool's own library, so that with multiprocess it pickles with dill.
        library = importlib.import_module(self.library)
        context = library.get_context(self.context.get_start_method())
        self.manager = importlib.import_module(f"{self.library}.managers").SyncManager(ctx=context)
        self.manager.start(manager_main, (kept.lifeline(context),))
        shared: MutableMapping[str, Any] = self.manager.dict(initial)
        return shared

    def free_slots(self) -> int:
        return sum(1 for w in self.workers if w is None or w.chunk is None)

    def in_flight(self) -> int:
        return sum(1 for w in self.workers if w is not None and w.chunk is not None)

    def submit(self, chunk: Chunk) -> None:
        number = next(i for i, w in enumerate(self.workers) if w is None or w.chunk is None)
        worker = self.workers[number]
        if worker is not None and not worker.process.is_alive():
            # It died after sending its last batch (os._exit at the very end of a task, say).
            self._discard(worker)
            worker = None
        if worker is None:
            worker = self._spawn(number)
        message = encode_chunk(chunk, self.pickle_chunk)
        try:
            worker.conn.send_bytes(message)
        except OSError:
            # It died idle (killed, and reaped by someone else's SIGCHLD handler, so it still
            # looked alive): the chunk never reached it, so a fresh worker gets it.
            self._discard(worker)
            worker = self._spawn(number)
            worker.conn.send_bytes(message)
        worker.chunk = chunk

    def wake(self) -> None:
        waker = self.waker
        if waker is not None:
            try:
                waker[1].send_bytes(b"")
            except OSError:
                pass  # closed by a shutdown in the meantime: nothing left to wake

    def collect(self, timeout: float | None) -> list[Batch]:
        busy = [w for w in self.workers if w is not None and w.chunk is not None]
        if not busy:
            return []
        wait_for = self.deadlines.wait(timeout, _running(busy))
        handles: dict[Any, Worker | None] = {}
        for worker in busy:
            handles[worker.conn] = worker
            handles[worker.process.sentinel] = worker
        if self.waker is not None:
            handles[self.waker[0]] = None
        ready = self.wait(list(handles), wait_for)
        batches: list[Batch] = []
        seen: set[int] = set()
        for handle in ready:
            owner = handles[handle]
            if owner is None or owner.number in seen:
                continue  # the waker, or a worker whose pipe and sentinel are both ready
            seen.add(owner.number)
            batch = self._receive(owner)
            if batch is not None:
                batches.append(batch)
        batches.extend(self._expire(busy))
        return batches

    # -- outcomes ------------------------------------------------------------------------------

    def _receive(self, worker: Worker) -> Batch | None:
        chunk = worker.chunk
        assert chunk is not None
        try:
            if worker.conn.poll():
                data = worker.conn.recv_bytes()
                worker.chunk = None
                batch = decode_batch(data, chunk, worker.process.pid)
                if batch.logs:
                    replay_logs(batch.logs)
                if batch.retire:
                    # It wrote to an array it inherited, or wore out (see health), and exits
                    # now; the next chunk for its slot starts a fresh worker.
                    if batch.retire_reason:
                        self.note_replaced(worker.process.pid, batch.retire_reason)
                    self._discard(worker)
                return batch
        except (EOFError, OSError):
            pass
        if worker.process.is_alive():
            return None
        return self._crashed(worker, chunk)

    def _crashed(self, worker: Worker, chunk: Chunk) -> Batch:
        worker.process.join(1.0)
        exitcode = worker.process.exitcode
        pid = worker.process.pid
        # What its tasks started would otherwise run on, orphaned, for good.
        kill_group(pid)
        culprit, started = _running_task(worker, chunk)
        self._discard(worker)
        now = time.perf_counter()
        logger.warning(
            "worker %d (pid %s) died with exit code %s while running task %s; replacing it",
            worker.number, pid, exitcode, culprit,
        )
        if culprit is None:
            detail = (
                "It died outside any task: while starting (under spawn, importing the main "
                "module or unpickling what it was sent), or while sending its results."
            )
            errors: dict[int, BaseException] = {
                i: WorkerCrashedError(i, exitcode, detail) for i in chunk.indices
            }
            return chunk_failed(chunk, errors, pid)
        limit = None if self.health is None else self.health.task_memory_limit
        error = crash_error(culprit, exitcode, worker.slot, limit)
        if isinstance(error, MemoryLimitError):
            self.memory_limits_hit += 1
            self.note_replaced(pid, f"task {culprit} broke task_memory_limit")
        requeue = [i for i in chunk.indices if i != culprit]
        return Batch.lost(
            culprit, error, pid=pid, started=started,
            elapsed=now - started, requeue=requeue,
        )

    def _expire(self, busy: list[Worker]) -> list[Batch]:
        batches = []
        for overrun in self.deadlines.overdue(_running(busy)):
            worker = overrun.holder
            chunk = worker.chunk
            if chunk is None:
                continue  # its batch came in this collect(): it ended in time
            pid = worker.process.pid
            kill_tree(pid)
            self._discard(worker)
            action = f"stopped worker {worker.number} (pid {pid})"
            batches.append(self.deadlines.timed_out(overrun, chunk, pid=pid, stopped=True,
                                                    action=action))
        return batches

    def _discard(self, worker: Worker) -> None:
        worker.process.join(1.0)
        kept.close(worker)
        worker.chunk = None
        self.workers[worker.number] = None


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C back while a worker starts, and deliver it once the worker is recorded.

    Otherwise it could land in the child between fork and the worker's first line, running the
    caller's handler there (and the caller's code after it), or in the parent halfway through
    ``Process.start`` (an exception in an at-fork hook is printed and dropped), leaving a worker
    that shutdown does not know. SIGINT is blocked in this thread, which a forked or spawned
    child inherits until :func:`~parallel_jobs.worker.worker_main` ignores it; and as another
    thread may still take the signal for the process, a Python handler in the main thread only
    notes it meanwhile.
    """
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    held: list[int] = []
    previous: Any = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.getsignal(signal.SIGINT)
        if callable(previous):
            signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        if callable(previous):
            signal.signal(signal.SIGINT, previous)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        if held and callable(previous):
            previous(signal.SIGINT, None)


def _running(busy: list[Worker]) -> Iterator[tuple[Worker, Running | None]]:
    """Each busy worker and the task it runs (see ``Deadlines.wait``)."""
    for worker in busy:
        yield worker, running_task(worker.slot)


def _running_task(worker: Worker, chunk: Chunk) -> tuple[int | None, float]:
    """The task of ``chunk`` that ``worker`` ran when it died (None: none), and since when."""
    task = running_task(worker.slot)
    if task is None:
        return None, time.perf_counter()
    index, started = task
    return (index if index in chunk.indices else None), started

