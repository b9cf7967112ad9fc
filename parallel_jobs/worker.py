"""Code that runs where the tasks run: in a worker process, a thread, or the caller's own loop.

:func:`run_chunk` calls the function for each task of a chunk and measures each call (wall time
in the loop, CPU time and peak memory with a :class:`Meter`); every backend executes tasks
through it, so all backends agree on how a call is built and what a result holds.
:func:`worker_main` is the loop of one process of the default pool: receive a payload, then
chunks, run each and send its batch back, until :data:`~.protocol.messages.RELEASE`,
:data:`~.protocol.messages.EXIT` or the parent's end (see :mod:`.protocol.messages`).

It imports the protocol, the records, the seeding and the worker's health; it must not import
the parent side (engine, backends, api): it is what a worker loads.
"""

from __future__ import annotations

import functools
import gc
import io
import os
import pickle
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from .errors import CallerInterrupt, SerializationError
from .protocol.messages import (
    EXIT,
    IDLE,
    INDEX,
    RELEASE,
    STARTED,
    STOP,
    WORLD,
    encode_batch,
    take_world,
    unpickling_error,
)
from .protocol.pickling import Failure, Unloadable, dumps
from .records import Batch, Chunk, Payload
from .seeding import TaskSeeder
from .worker_health import run_keeping_logs, run_recycled, start_worker

__all__ = [
    "FINE",
    "UNMETERED_RUN",
    "Meter",
    "manager_main",
    "run_chunk",
    "worker_main",
]

try:
    import resource

    def _usage() -> tuple[float, int]:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        # ru_maxrss is in KiB on Linux, in bytes on macOS.
        scale = 1 if sys.platform == "darwin" else 1024
        status = _reset_peak.status
        peak = ru.ru_maxrss * scale if status is None else _read_hwm(status)
        return ru.ru_utime + ru.ru_stime, peak

except ImportError:  # pragma: no cover - Windows

    def _usage() -> tuple[float, int]:
        return time.process_time(), 0


def _read_hwm(status: int) -> int:
    """The peak RSS in bytes, from ``VmHWM`` in an open ``/proc/self/status``."""
    data = os.pread(status, 4096, 0)
    start = data.index(b"VmHWM:") + 6
    return int(data[start : data.index(b"kB", start)]) * 1024


class _PeakReset:
    """Resets this process's peak-RSS mark (Linux), so each task's peak is its own.

    ``getrusage`` never reports a peak below the one the process had when it called ``exec``:
    for a spawned worker, the size of its parent. Where that floor hides the reset, ``status``
    holds ``/proc/self/status`` open, and the peak is read from there instead.
    """

    def __init__(self) -> None:
        self.pid = -1
        self.fd: int | None = None
        self.status: int | None = None

    def __call__(self) -> None:
        if self.pid != os.getpid():
            # /proc/self resolves when opened: a forked child must open its own.
            self.pid = os.getpid()
            self.status = None
            try:
                self.fd = os.open("/proc/self/clear_refs", os.O_WRONLY)
            except OSError:
                self.fd = None
            if self.fd is not None:
                self._choose_reader(self.fd)
        if self.fd is not None:
            try:
                os.write(self.fd, b"5")
            except OSError:
                self.fd = None

    def _choose_reader(self, clear_refs: int) -> None:
        try:
            status = os.open("/proc/self/status", os.O_RDONLY)
            os.write(clear_refs, b"5")
            floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            if floor > _read_hwm(status):
                self.status = status
            else:
                os.close(status)
        except (OSError, ValueError):
            self.status = None


_reset_peak = _PeakReset()


#: A task shorter than this (seconds of wall time) is not metered with ``getrusage``: the
#: system call would cost more than the task. Its CPU time is booked as its wall time, and its
#: peak RSS as the worker's current peak, which it cannot have raised measurably in that time.
FINE = 20e-6

#: At most this many unmetered tasks in a row, so the next metered task's CPU time (taken as a
#: difference from the last reading) carries at most this many loop overheads of error.
UNMETERED_RUN = 32


def run_chunk(payload: Payload, chunk: Chunk, slot: Any = None) -> Batch:
    """Run every task of ``chunk`` and return their outcomes (see :func:`_run_tasks`); with
    ``Payload.echo``, what the tasks print is collected, by task, for the parent to show.

    Examples:
        >>> batch = run_chunk(Payload(abs), Chunk(range(2), itervals=[-3, 4]))
        >>> batch.values
        [3, 4]
    """
    if not payload.echo or payload.capture:
        return _run_tasks(payload, chunk, slot)
    if slot is None:
        slot = [0.0, IDLE]
    echo = _Echo(slot)
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = echo.stdout, echo.stderr
    try:
        batch = _run_tasks(payload, chunk, slot)
    finally:
        sys.stdout, sys.stderr = saved
    echo.fill(batch)
    return batch


class _Echo:
    """What the tasks of one chunk print, by task: one redirection per chunk, not per task, so
    that tasks that print nothing cost nothing (the task running is read from the slot)."""

    def __init__(self, slot: Any) -> None:
        self.out: dict[int, list[str]] = {}
        self.err: dict[int, list[str]] = {}
        self.stdout = _ByTask(self.out, slot)
        self.stderr = _ByTask(self.err, slot)

    def fill(self, batch: Batch) -> None:
        if not (self.out or self.err):
            return
        position = {index: pos for pos, index in enumerate(batch.indices)}
        n = len(batch.indices)
        batch.stdout, batch.stderr = [""] * n, [""] * n
        for parts, column in ((self.out, batch.stdout), (self.err, batch.stderr)):
            for index, texts in parts.items():
                if index in position:
                    column[position[index]] = "".join(texts)


class _ByTask(io.TextIOBase):
    def __init__(self, parts: dict[int, list[str]], slot: Any) -> None:
        self.parts = parts
        self.slot = slot

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.parts.setdefault(int(self.slot[INDEX]), []).append(text)
        return len(text)


def _run_tasks(payload: Payload, chunk: Chunk, slot: Any = None) -> Batch:
    """Run every task of ``chunk`` and return their outcomes.

    A task's exception is recorded, never raised. ``slot``, when given, is a small shared array
    that tells the parent which task is running and since when (``slot[STARTED]`` is ``IDLE``
    between chunks): that is how the parent times tasks out and names the task a crash killed,
    without a message per task. A slot of three values also carries the parent's stop request,
    read before each task: the tasks not yet started go back in ``Batch.requeue``.

    Each task gets its own copy of what tasks share when the payload was packed for it
    (``Payload.blob``), and its own seed when the payload carries entropy.
    """
    batch = Batch.empty(chunk.indices, os.getpid())
    if slot is None:
        slot = [0.0, IDLE]
    seeder = TaskSeeder.for_run(payload.entropy, payload.eager_seeding)
    _run_loop(payload, chunk, batch, slot, seeder)
    slot[STARTED] = IDLE
    if seeder is not None:
        seeder.end()
    if payload.blob is not None and not batch.retire and _wrote_inherited():
        batch.retire = True
    return batch


def _run_loop(payload: Payload, chunk: Chunk, batch: Batch, slot: Any,
              seeder: TaskSeeder | None) -> None:
    """The loop of :func:`_run_tasks`: fills ``batch``, one task after the other.

    Longer than our functions should be, on purpose: everything a tiny task needs is inlined
    here, on local variables, because one more function call per task would cost a 1 us task
    several percent. Only a task long enough to be metered calls out (:meth:`Meter.read`).
    """
    func, shared_args, shared_kwargs = payload.func, tuple(payload.args), payload.kwargs
    blob, owned = payload.blob, chunk.owned
    itervals, iterkwargs = chunk.itervals, chunk.iterkwargs
    values, started, elapsed = batch.values, batch.started, batch.elapsed
    cpu_time, peak_rss, failures = batch.cpu_time, batch.peak_rss, batch.failures
    stoppable = len(slot) > STOP
    capture = _Capture(batch) if payload.capture else None
    clock = time.perf_counter
    meter = Meter(batch)
    peak = meter.peak
    # Wall time of the tasks since the last reading, already booked as their CPU time.
    unmetered_wall, unmetered = 0.0, 0
    for pos, index in enumerate(chunk.indices):
        if stoppable and slot[STOP]:
            batch.cut(pos)
            break
        if pos and blob is not None and _wrote_inherited():
            # The last task wrote to an array this worker inherited: the rest would see it.
            batch.cut(pos)
            batch.retire = True
            break
        try:
            if blob is not None:
                func, shared_args, shared_kwargs = _fresh(payload, blob)
            # The call built from a task, as records.task_call builds it (inlined: hot loop).
            if itervals is None:
                args: tuple[Any, ...] = shared_args
            else:
                value = itervals[pos]
                if owned and type(value) is Unloadable:
                    raise unpickling_error(f"the arguments of task {index}", value.reason)
                args = value if isinstance(value, tuple) else (value,)
                if shared_args:
                    args += shared_args
            if iterkwargs is None:
                kwargs = shared_kwargs
            else:
                own = iterkwargs[pos]
                if owned and type(own) is Unloadable:
                    raise unpickling_error(f"the arguments of task {index}", own.reason)
                kwargs = {**shared_kwargs, **own}
        except Exception as exc:
            failures[pos] = Failure.capture(exc)
            continue
        if seeder is not None:
            # TaskSeeder.begin(), inlined for lazy seeding: a method call costs a tiny task 10%.
            seeder.index = index
            if seeder.eager or not seeder.armed:
                seeder.begin(index)
        t0 = clock()
        slot[INDEX] = index
        slot[STARTED] = t0
        try:
            if capture is None:
                values[pos] = func(*args, **kwargs)
            else:
                values[pos] = capture.call(pos, func, args, kwargs)
        except CallerInterrupt:
            raise  # the caller's Ctrl-C, in a task running in its thread: stop the run
        except BaseException as exc:  # SystemExit, KeyboardInterrupt, ...: the task's own
            failures[pos] = Failure.capture(exc)
        wall = clock() - t0
        started[pos] = t0
        elapsed[pos] = wall
        if wall < FINE and unmetered < UNMETERED_RUN:
            cpu_time[pos] = wall
            peak_rss[pos] = peak
            unmetered_wall += wall
            unmetered += 1
            continue
        peak = meter.read(pos, unmetered_wall)
        unmetered_wall, unmetered = 0.0, 0


class Meter:
    """Meters the tasks of one chunk: the CPU time and peak RSS of each, into its batch.

    A reading costs a system call, more than a tiny task takes, so the loop books a task
    shorter than :data:`FINE` itself (its wall time as its CPU time, the last peak as its
    peak) and calls :meth:`read` after the others; a reading after such tasks takes off the
    wall time already booked for them.

    Attributes:
        cpu: this process's CPU seconds at the last reading.
        peak: its peak RSS in bytes at the last reading, reset to its current RSS when a task
            raised it (so the next task's peak is its own).
    """

    __slots__ = ("cpu", "cpu_time", "peak", "peak_rss")

    def __init__(self, batch: Batch) -> None:
        self.cpu_time, self.peak_rss = batch.cpu_time, batch.peak_rss
        # A peak reached before this chunk (start-up, unpickling the chunk) belongs to no task.
        _reset_peak()
        self.cpu, self.peak = _usage()

    def read(self, pos: int, unmetered_wall: float) -> int:
        """Book the CPU time and peak of the task at ``pos``, which just ended; return the peak
        the next tasks start from. ``unmetered_wall`` is the wall time of the tasks booked
        since the last reading."""
        cpu, peak = _usage()
        self.cpu_time[pos] = max(0.0, cpu - self.cpu - unmetered_wall)
        self.peak_rss[pos] = peak
        if peak > self.peak:
            _reset_peak()
            cpu, self.peak = _usage()
        self.cpu = cpu
        return self.peak


def _wrote_inherited() -> bool:
    """Whether a task of this process wrote to an array it inherited (see ``protocol.shm``)."""
    from .protocol.shm import inherited_written  # for import cost: it imports dill

    return inherited_written()


def _fresh(payload: Payload, blob: bytes) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """This task's own copy of the function (if it carries state) and the shared arguments."""
    from .protocol.shm import loads_payload  # for import cost: it imports dill

    try:
        func, args, kwargs = loads_payload(blob)
    except Exception as exc:
        raise unpickling_error("the function or the shared arguments", exc) from exc
    if payload.kwargs:
        kwargs.update(payload.kwargs)  # what tasks share on purpose: never copied
    return payload.func if func is None else func, args, kwargs


class _Capture:
    """Keeps what each task of a batch prints (``capture=True``), as sciris' ``capture`` does."""

    def __init__(self, batch: Batch) -> None:
        n = len(batch.indices)
        self.stdout = batch.stdout = [""] * n
        self.stderr = batch.stderr = [""] * n

    def call(self, pos: int, func: Any, args: tuple[Any, ...], kwargs: Any) -> Any:
        import contextlib
        import io

        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                return func(*args, **kwargs)
        finally:
            # Kept even when the task fails: what it printed before failing says why.
            self.stdout[pos] = out.getvalue()
            self.stderr[pos] = err.getvalue()


def worker_main(conn: Any, payload: Payload | None, slot: Any, lifeline: Any = None) -> None:
    """Serve chunks from ``conn`` until it sends :data:`EXIT` or closes.

    ``payload`` is the Payload itself when the worker was forked (inherited, never pickled);
    otherwise it is None and each run starts with a :data:`WORLD` message, then the bytes
    :meth:`~parallel_jobs.protocol.shm.SharedArrays.dumps` made of the payload. Such a worker
    may then be kept between runs: :data:`RELEASE` ends a run, and the next messages start the
    next run. ``lifeline`` is the read end of a pipe that only the parent process writes to (see
    :func:`_die_with_parent`).
    """
    # A process group of its own: a terminal's Ctrl-C reaches the parent alone, which decides,
    # and the parent can kill this worker together with every process its tasks started.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.setpgid(0, 0)
    # The parent blocks SIGINT while it starts a worker, so that no Ctrl-C lands between fork
    # and the line above; one that did is discarded now, as SIGINT is ignored.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _die_with_parent(lifeline)
    if payload is None or payload.blob is not None:
        # Tasks will unpickle the shared arguments each: map their arrays without reopening.
        from .protocol.shm import keep_segments_open  # for import cost: it imports dill

        keep_segments_open()
    inherited = payload is not None
    if inherited:
        _after_fork()
    while True:
        # What cannot be unpickled here is answered, chunk by chunk, with an exception in place
        # of a batch: dying instead would only leave the reason on this process's stderr.
        refusal: SerializationError | None = None
        if not inherited:
            from .protocol.shm import loads_payload  # for import cost: it imports dill

            try:
                blob = conn.recv_bytes()
                if blob.startswith(WORLD):
                    take_world(blob)
                    blob = conn.recv_bytes()
            except (EOFError, OSError):
                return
            if blob == EXIT:
                return
            try:
                payload = loads_payload(blob)
            except Exception as exc:
                refusal = unpickling_error("the function or the shared arguments", exc)
        if not _serve(conn, payload, slot, refusal) or inherited:
            return
        payload = None
        gc.collect()  # unmap the released run's shared arrays now, not at some later collection
        from .protocol.shm import forget_segments  # for import cost: it imports dill

        forget_segments()


def _after_fork() -> None:
    """Run ``multiprocess``'s after-fork hooks in a worker the standard library forked.

    The standard library reset its own objects in this process (manager proxies reconnect
    rather than share the parent's socket, for one); objects of ``multiprocess`` that the
    worker inherited, such as a ``multiprocess`` manager's dict among the shared arguments,
    need the same from their own library.
    """
    library = sys.modules.get("multiprocess.util")
    if library is not None:
        # Private, but the only way to run them: tests/test_fork_library.py::
        # test_a_multiprocess_manager_dict_among_the_shared_arguments_works_in_forked_workers
        # fails without it.
        library._run_after_forkers()


def _serve(conn: Any, payload: Payload | None, slot: Any,
           refusal: Exception | None) -> bool:
    """Run chunks until the run ends; True if it ended with :data:`RELEASE` (keep serving)."""
    run: Callable[..., Batch] = run_chunk
    if payload is not None and refusal is None:
        run, refusal = _health_start(payload, slot)
    while True:
        retire = False
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            return False
        if message == RELEASE:
            return True
        if message == EXIT:
            return False
        try:
            chunk = pickle.loads(message)
        except Exception as exc:
            reply = dumps(unpickling_error("the arguments of the tasks sent", exc))
        else:
            if refusal is not None:
                reply = dumps(refusal)
            else:
                assert isinstance(payload, Payload)
                batch = run(payload, chunk, slot)
                reply = encode_batch(batch)
                retire = batch.retire  # the parent knows it from the batch
        try:
            conn.send_bytes(reply)
        except (BrokenPipeError, OSError):
            return False
        if retire:
            return False


def _health_start(payload: Payload, slot: Any) -> tuple[Callable[..., Batch], Exception | None]:
    """Set this worker up for the run (see ``worker_health``): how to run its chunks, and the error
    to answer them with if its initializer failed."""
    failed = start_worker(payload, slot)
    options = payload.worker
    run: Callable[..., Batch] = run_chunk
    if options is not None and options.recycles:
        run = functools.partial(run_recycled, run_chunk=run)
    if options is not None and options.log_level is not None:
        run = functools.partial(run_keeping_logs, run=run)
    return run, failed


_LIFELINE: list[int] = []
"""This worker's own open file of the parent's lifeline pipe, kept open for as long as it lives."""


def _die_with_parent(lifeline: Any) -> None:
    """On Linux, have the kernel kill this worker's process group the moment the parent process
    ends, however it ends (SIGKILL, the out-of-memory killer), whichever thread started it.

    ``lifeline`` is the read end of a pipe whose write end only the parent process holds: when
    the parent ends, the pipe reaches end-of-file, and the kernel then signals (``O_ASYNC``)
    the process group that owns this file with SIGKILL, so a busy task and any process it
    started die with it. The file is this worker's own (opened again through ``/proc``):
    the owner and signal belong to an open file, which an inherited descriptor would share with
    the parent and every other worker. Elsewhere the worker ends at its next read from the
    parent.
    """
    if lifeline is None:
        return
    try:
        if not sys.platform.startswith("linux"):
            return
        import fcntl
        import select

        fd = os.open(f"/proc/self/fd/{lifeline.fileno()}", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return
    finally:
        lifeline.close()
    _LIFELINE.append(fd)
    fcntl.fcntl(fd, fcntl.F_SETOWN, -os.getpgrp())
    fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGKILL)
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_ASYNC)
    # The parent may have ended before the line above armed the signal.
    if select.select([fd], [], [], 0)[0]:
        os.killpg(0, signal.SIGKILL)


def manager_main(lifeline: Any) -> None:
    """Initializer of the process that serves a run's ``globaldict``: it ends with the parent,
    as a worker does, and keeps out of the terminal's process group for the same reason."""
    os.setpgid(0, 0)
    _die_with_parent(lifeline)
