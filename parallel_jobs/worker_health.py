"""Keeping a worker healthy over a long run: set-up, recycling, memory and thread limits, logs.

This is the worker's side of the health options, which travel in one frozen
:class:`~parallel_jobs.records.WorkerOptions` with the run's
:class:`~parallel_jobs.records.Payload` (inherited under fork, pickled with it under spawn);
the parent's side (checking the options, explaining a crash, replaying logs) is
:mod:`parallel_jobs.engine.health`. What happens in a worker:

- :func:`start_worker` runs once per run a worker serves, before its first task: it limits the
  BLAS/OpenMP thread pools, takes over the root logger, starts the memory watchdog of
  ``task_memory_limit`` and runs the user's ``initializer``. A failing initializer becomes an
  :class:`~parallel_jobs.errors.InitializerError` that the worker sends instead of its first
  batch; the parent raises it once.
- :func:`run_recycled` replaces :func:`~parallel_jobs.worker.run_chunk` only when
  ``max_tasks_per_worker`` or ``max_worker_memory`` is set: it runs a chunk in pieces and sets
  ``Batch.retire`` (with the reason) when the worker must run no further task.
- The watchdog of ``task_memory_limit`` is a thread that reads ``/proc/self/statm`` every
  :data:`WATCH_PERIOD` seconds while a task runs; past the limit it writes the RSS into the
  worker's shared slot and kills its own process, and the parent turns the crash into a
  :class:`~parallel_jobs.errors.MemoryLimitError` (``engine.health.crash_error``).
- In the default pool, the records that tasks log go back with their batch
  (:func:`run_keeping_logs`) and the caller's handlers handle them
  (``engine.health.replay_logs``).

Watching and recycling cost nothing unless their option is on; thread limits and log records
cost each worker a few microseconds per run, and each chunk one function call. This module is
loaded by workers: it imports nothing from the parent side.
"""

from __future__ import annotations

import ctypes  # imported here, in the parent, so that forked workers start without the cost
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from .errors import InitializerError, exception_text
from .protocol.messages import IDLE, INDEX, MEMORY, STARTED
from .records import Batch, Chunk, Payload, WorkerOptions

__all__ = [
    "THREAD_VARIABLES",
    "WATCH_PERIOD",
    "current_rss",
    "format_bytes",
    "limit_threads",
    "prepare_threads",
    "run_keeping_logs",
    "run_recycled",
    "start_in_thread",
    "start_worker",
    "worker_state",
]

#: Seconds between two readings of the watchdog of ``task_memory_limit``.
WATCH_PERIOD = 0.01

#: The environment variables that size the thread pools of BLAS and OpenMP libraries, read when
#: such a library loads.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)

#: Modules whose loading means a BLAS or OpenMP library may already run threads in a worker.
_THREADED_MODULES = ("numpy", "scipy", "torch", "sklearn", "numexpr")


_local = threading.local()


def worker_state() -> dict[str, Any]:
    """A dict that lives as long as the worker running the calling task.

    In a worker process it is one dict per process, empty when the process starts (an
    ``initializer`` typically fills it: a database connection, a loaded model). In a thread
    run it is one dict per thread of the pool; in a serial run, the caller's thread's own.
    Outside any run it is the calling thread's dict too.

    Examples:
        >>> worker_state()["seen"] = 1
        >>> worker_state()["seen"]
        1
    """
    state: dict[str, Any] | None = getattr(_local, "state", None)
    if state is None:
        state = _local.state = {}
    return state


class _Life:
    """What this worker process has done since it started: tasks run, and its pid (a forked
    child inherits the parent's record and must start its own)."""

    def __init__(self) -> None:
        self.pid = -1
        self.tasks = 0

    def begin(self) -> None:
        if self.pid != os.getpid():
            self.pid = os.getpid()
            self.tasks = 0
            _local.state = {}  # a forked worker must not see its parent's state


_LIFE = _Life()


def start_worker(payload: Payload, slot: Any) -> InitializerError | None:
    """Prepare this worker process for a run of ``payload``; the error to answer every chunk
    with if the initializer failed, else None."""
    options = payload.worker
    _LIFE.begin()
    # A kept worker's watchdog, started by an earlier run, must apply this run's limit.
    _Watchdog.limit = None if options is None else options.task_memory_limit
    if options is None:
        return None
    if options.threads is not None:
        limit_threads(options.threads)
    if options.log_level is not None:
        _LogKeeper.install(options.log_level, slot)
    if options.task_memory_limit is not None and len(slot) > MEMORY:
        _Watchdog.start(slot)
    if options.initializer is not None:
        try:
            options.initializer(*options.initargs)
        except BaseException as exc:
            import traceback

            detail = "".join(traceback.format_exception(exc))
            return InitializerError(os.getpid(), exception_text(exc), detail)
    return None


def limit_threads(count: int) -> None:
    """Have BLAS and OpenMP libraries use at most ``count`` threads in this process: through
    the environment for those not loaded yet, and through ``threadpoolctl`` (when installed)
    for those a module already loaded (a forked worker inherits them)."""
    value = str(count)
    for name in THREAD_VARIABLES:
        os.environ[name] = value
    controller = _thread_pools()
    if controller is not None:
        # Each library directly: threadpoolctl's limit() first re-reads every library's state.
        for library in controller.lib_controllers:
            if not _lower_idle_openblas(library, count):
                library.set_num_threads(count)


def _lower_idle_openblas(library: Any, count: int) -> bool:
    """Lower the thread count of an OpenBLAS whose thread server is not running (a forked
    worker's: the fork stopped it), without starting the server; False if this is not such a
    library.

    ``openblas_set_num_threads`` starts the server first, and its new threads spin for about
    0.1 s of CPU before they sleep: with two workers on two cores, that doubles the time of a
    short run. With the server down, OpenBLAS reads the count when a call needs threads, so
    writing the count is all it takes.
    """
    if getattr(library, "internal_api", None) != "openblas":
        return False
    try:
        running = ctypes.c_int.in_dll(library.dynlib, "blas_server_avail")
        current = ctypes.c_int.in_dll(library.dynlib, "blas_cpu_number")
    except (AttributeError, ValueError):
        return False
    if running.value or not 0 < count <= current.value:
        return False
    current.value = count
    return True


class _Pools:
    """The BLAS/OpenMP libraries found in this process, and which modules were loaded then."""

    loaded: tuple[bool, ...] | None = None
    controller: Any = None


def _thread_pools() -> Any:
    """threadpoolctl's controller of the libraries loaded here, or None when no module that
    loads one is imported (nothing to scan) or threadpoolctl is not installed.

    Finding the libraries takes milliseconds; limiting them, microseconds. The parent finds
    them once (see :func:`prepare_threads`) and forked workers inherit what it found.
    """
    loaded = tuple(name in sys.modules for name in _THREADED_MODULES)
    if not any(loaded):
        return None
    if _Pools.loaded != loaded:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            controller = None
        else:
            controller = ThreadpoolController()
        _Pools.loaded, _Pools.controller = loaded, controller
    return _Pools.controller


def prepare_threads(options: WorkerOptions | None) -> None:
    """In the parent, before forking workers: find the thread pools they will limit."""
    if options is not None and options.threads is not None:
        _thread_pools()


def run_recycled(payload: Payload, chunk: Chunk, slot: Any,
                 run_chunk: Callable[[Payload, Chunk, Any], Batch]) -> Batch:
    """Run ``chunk`` as :func:`~parallel_jobs.worker.run_chunk` does, but stop after the task
    that wears this worker out (``max_tasks_per_worker`` reached, or RSS past
    ``max_worker_memory``): the batch then has ``retire`` set, with the reason, and the tasks
    not run in ``requeue``."""
    options = payload.worker
    assert options is not None
    indices = chunk.indices
    pieces: list[Batch] = []
    done, reason = 0, ""
    while done < len(indices) and not reason:
        size = len(indices) - done
        if options.max_tasks is not None:
            size = min(size, max(1, options.max_tasks - _LIFE.tasks))
        if options.max_memory is not None:
            size = 1  # the worker's memory is read after each task
        batch = run_chunk(payload, _piece(chunk, done, done + size), slot)
        pieces.append(batch)
        ran = len(batch.indices)
        done += ran
        _LIFE.tasks += ran
        if batch.retire or ran < size:
            break  # stopped by the parent, or an inherited array was written: not ours
        reason = _worn_out(options)
    joined = _join(pieces, indices, done)
    if reason:
        joined.retire = True
        joined.retire_reason = reason
    return joined


def run_keeping_logs(payload: Payload, chunk: Chunk, slot: Any,
                     run: Callable[[Payload, Chunk, Any], Batch]) -> Batch:
    """``run(payload, chunk, slot)``, with the records its tasks logged in ``Batch.logs``."""
    batch = run(payload, chunk, slot)
    keeper = _LogKeeper.current
    if keeper is not None and keeper.records:
        batch.logs, keeper.records = keeper.records, []
    return batch


class _LogKeeper(logging.Handler):
    """The only handler of a worker's root logger: keeps each record a task logs, ready to be
    pickled (its message formatted, as ``logging.handlers.QueueHandler`` prepares one) and
    marked with the task's index (``task_index``), to go back with the batch.

    A forked worker inherits the caller's handlers; writing to a file or a stream from many
    processes at once interleaves lines, and a handler that keeps records in memory (pytest's
    ``caplog``, a GUI's) would keep them in the worker's copy, never seen. So they are
    replaced, and the caller's own handlers handle every record (``engine.health.replay_logs``).
    """

    current: _LogKeeper | None = None

    def __init__(self, slot: Any) -> None:
        super().__init__()
        self.slot = slot
        self.records: list[logging.LogRecord] = []

    @classmethod
    def install(cls, level: int, slot: Any) -> None:
        root = logging.getLogger()
        keeper = cls.current
        if keeper is None or keeper not in root.handlers:
            keeper = cls.current = cls(slot)
            for handler in list(root.handlers):
                root.removeHandler(handler)
            root.addHandler(keeper)
        keeper.slot = slot
        root.setLevel(level)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
        except Exception:
            self.handleError(record)
            return
        kept = logging.makeLogRecord(record.__dict__)
        kept.msg, kept.message, kept.args = message, message, None
        kept.exc_info, kept.exc_text, kept.stack_info = None, None, None
        running = self.slot is not None and len(self.slot) > STARTED
        kept.task_index = (int(self.slot[INDEX])
                           if running and self.slot[STARTED] != IDLE else None)
        self.records.append(kept)


def _worn_out(options: WorkerOptions) -> str:
    """Why this worker must run no further task, or ''."""
    if options.max_tasks is not None and _LIFE.tasks >= options.max_tasks:
        return f"ran max_tasks_per_worker={options.max_tasks} tasks"
    if options.max_memory is not None:
        rss = current_rss()
        if rss > options.max_memory:
            return (f"its memory ({format_bytes(rss)}) exceeded max_worker_memory="
                    f"{format_bytes(options.max_memory)}")
    return ""


def _piece(chunk: Chunk, start: int, stop: int) -> Chunk:
    if start == 0 and stop >= len(chunk.indices):
        return chunk
    return attrs.evolve(
        chunk,
        indices=chunk.indices[start:stop],
        itervals=None if chunk.itervals is None else chunk.itervals[start:stop],
        iterkwargs=None if chunk.iterkwargs is None else chunk.iterkwargs[start:stop],
    )


def _join(pieces: list[Batch], indices: Sequence[int], done: int) -> Batch:
    """One batch of the pieces' outcomes; the tasks after the first ``done`` go to requeue."""
    first = pieces[0]
    if len(pieces) == 1 and done == len(indices):
        return first
    capture = first.stdout is not None
    batch = Batch(
        indices=indices[:done], values=[], started=first.started[:0],
        elapsed=first.elapsed[:0], cpu_time=first.cpu_time[:0], peak_rss=first.peak_rss[:0],
        pid=first.pid, stdout=[] if capture else None, stderr=[] if capture else None,
    )
    offset = 0
    for piece in pieces:
        batch.values.extend(piece.values)
        batch.started.extend(piece.started)
        batch.elapsed.extend(piece.elapsed)
        batch.cpu_time.extend(piece.cpu_time)
        batch.peak_rss.extend(piece.peak_rss)
        if batch.stdout is not None and batch.stderr is not None:
            batch.stdout.extend(piece.stdout or ())
            batch.stderr.extend(piece.stderr or ())
        for pos, failure in piece.failures.items():
            batch.failures[offset + pos] = failure
        offset += len(piece.indices)
    batch.requeue = list(indices[done:])
    batch.retire = pieces[-1].retire
    return batch


def current_rss() -> int:
    """This process's resident memory in bytes (0 where it cannot be read)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:
        return 0


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class _Watchdog:
    """The thread of ``task_memory_limit`` in one worker process (one per process), and the
    limit of the run being served (None: watch nothing)."""

    _pid = -1
    limit: int | None = None

    @classmethod
    def start(cls, slot: Any) -> None:
        if cls._pid == os.getpid():
            return  # a kept worker serving its next run: the thread watches the same slot
        cls._pid = os.getpid()
        slot[MEMORY] = 0.0
        thread = threading.Thread(target=cls._watch, args=(slot,),
                                  name="parallel_jobs-memory-watchdog", daemon=True)
        thread.start()

    @classmethod
    def _watch(cls, slot: Any) -> None:
        try:
            statm = os.open("/proc/self/statm", os.O_RDONLY)
        except OSError:
            return  # no /proc: the limit cannot be watched here (documented)
        while True:
            time.sleep(WATCH_PERIOD)
            limit = cls.limit
            if limit is None or slot[STARTED] == IDLE:
                continue
            rss = int(os.pread(statm, 128, 0).split()[1]) * _PAGE
            if rss > limit and slot[STARTED] != IDLE:
                # The parent reads the slot once this process is gone: the task and the peak.
                slot[MEMORY] = float(rss)
                os.kill(os.getpid(), signal.SIGKILL)


def format_bytes(count: float) -> str:
    """``'1.5 GB'``: a byte count for people.

    Examples:
        >>> format_bytes(1_500_000_000), format_bytes(300)
        ('1.5 GB', '300 B')
    """
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.3g} {unit}"
    return f"{int(count)} B"


def start_in_thread(payload: Payload) -> None:
    """Run the initializer in the calling thread (a thread of a 'thread' run, or the caller's
    for 'serial'), before its first task.

    Raises:
        InitializerError: the initializer failed; its exception is the cause.
    """
    options = payload.worker
    if options is None or options.initializer is None:
        return
    try:
        options.initializer(*options.initargs)
    except Exception as exc:
        raise InitializerError(0, exception_text(exc)) from exc
