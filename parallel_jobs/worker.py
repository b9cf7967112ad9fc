"""Code that runs where the tasks run: in a worker process, a thread, or the caller's own loop.

:func:`run_chunk` calls the function for each task of a chunk and measures each call (wall time,
CPU time, peak memory); every backend executes tasks through it, so all backends agree on how a
call is built and what a result holds. :func:`worker_main` is the loop of one process of the
default pool: receive a chunk, run it, send the batch back, until told to stop or the parent goes.

This module must not import the parent side (runner, backends, Parallel): it is what a worker
loads.
"""

from __future__ import annotations

import ctypes  # imported here, in the parent, so that forked workers start without the cost
import gc
import os
import pickle
import signal
import sys
import time
from typing import Any

from .errors import SerializationError
from .task import Batch, Chunk, Failure, Payload, dumps

__all__ = [
    "FINE",
    "IDLE",
    "RELEASE",
    "UNMETERED_RUN",
    "dumps",
    "encode_batch",
    "reseed_numpy",
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


IDLE = 0.0
"""The value of a worker's ``slot[1]`` (task start time) while no task is running."""


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
    """Run every task of ``chunk`` and return their outcomes.

    A task's exception is recorded, never raised. ``slot``, when given, is a two-element shared
    array that tells the parent which task is running and since when (``slot[1]`` is ``IDLE``
    between chunks): that is how the parent times tasks out and names the task a crash killed,
    without a message per task.

    Examples:
        >>> batch = run_chunk(Payload(abs), Chunk(range(2), itervals=[-3, 4]))
        >>> batch.values
        [3, 4]
    """
    func = payload.func
    shared_args = tuple(payload.args)
    shared_kwargs = payload.kwargs
    indices, itervals, iterkwargs = chunk.indices, chunk.itervals, chunk.iterkwargs
    batch = Batch.empty(indices, os.getpid())
    values, started, elapsed = batch.values, batch.started, batch.elapsed
    cpu_time, peak_rss, failures = batch.cpu_time, batch.peak_rss, batch.failures
    clock = time.perf_counter
    # A peak reached before this chunk (start-up, unpickling the chunk) belongs to no task.
    _reset_peak()
    cpu_before, peak_before = _usage()
    # Wall time of the tasks since the last reading, already booked as their CPU time.
    unmetered_wall, unmetered = 0.0, 0
    for pos, index in enumerate(indices):
        if itervals is None:
            args: tuple[Any, ...] = shared_args
        else:
            value = itervals[pos]
            args = value if isinstance(value, tuple) else (value,)
            if shared_args:
                args += shared_args
        kwargs = shared_kwargs if iterkwargs is None else {**shared_kwargs, **iterkwargs[pos]}
        t0 = clock()
        if slot is not None:
            slot[0] = index
            slot[1] = t0
        try:
            values[pos] = func(*args, **kwargs)
        except Exception as exc:
            failures[pos] = Failure.capture(exc)
        wall = clock() - t0
        started[pos] = t0
        elapsed[pos] = wall
        if wall < FINE and unmetered < UNMETERED_RUN:
            cpu_time[pos] = wall
            peak_rss[pos] = peak_before
            unmetered_wall += wall
            unmetered += 1
            continue
        cpu_after, peak_after = _usage()
        cpu_time[pos] = max(0.0, cpu_after - cpu_before - unmetered_wall)
        peak_rss[pos] = peak_after
        unmetered_wall, unmetered = 0.0, 0
        if peak_after > peak_before:
            # This task raised the high-water mark: reset it so the next task's peak is its own.
            _reset_peak()
            cpu_before, peak_before = _usage()
        else:
            cpu_before = cpu_after
    if slot is not None:
        slot[1] = IDLE
    return batch


def _picklable(value: Any) -> Exception | None:
    try:
        dumps(value)
    except Exception as exc:
        return exc
    return None


def encode_batch(batch: Batch) -> bytes:
    """Pickle ``batch``; a return value that cannot be pickled fails its own task only."""
    try:
        return dumps(batch)
    except Exception:
        pass
    for pos, value in enumerate(batch.values):
        error = _picklable(value)
        if error is not None:
            index = batch.indices[pos]
            what = f"the return value of task {index} ({type(value).__qualname__})"
            failure = SerializationError(what, f"{type(error).__name__}: {error}")
            batch.values[pos] = None
            batch.failures[pos] = Failure.capture(failure)
    return dumps(batch)


def draw_seed() -> int | None:
    """One draw from the caller's NumPy global RNG (as sciris does), from which each worker's
    seed is derived; None when the caller has not imported NumPy.

    Workers are seeded, not tasks: reseeding before every task would cost tiny tasks more than
    they take. Tasks in different workers draw different numbers, but which task gets which
    numbers depends on scheduling, so a seeded caller does not reproduce them; tasks that need
    reproducible randomness take a seed among their arguments.
    """
    np = sys.modules.get("numpy")
    if np is None:
        return None
    return int(np.random.randint(0, 2**31 - 1))


def reseed_numpy(seed: int | None) -> None:
    """Seed NumPy's global RNG in this process, if NumPy is loaded and a seed is given."""
    # Forked workers inherit the parent's NumPy RNG state; give each worker its own stream.
    np = sys.modules.get("numpy")
    if seed is not None and np is not None:
        np.random.seed(seed % (2**32))


RELEASE = b"parallel_jobs.release"
"""Told to a worker whose run has ended but which the parent keeps for its next run: drop the
payload (and with it any shared-memory mapping), then wait for the next one."""


def worker_main(conn: Any, payload: Payload | None, slot: Any, seed: int | None) -> None:
    """Serve chunks from ``conn`` until it sends None or closes.

    ``payload`` is the Payload itself when the worker was forked (inherited, never pickled);
    otherwise it is None and the first message is the bytes
    :meth:`~parallel_jobs._shm.SharedArrays.dumps` made of it. Such a worker may then be kept
    between runs: :data:`RELEASE` ends a run, and the next message is the next run's payload.
    """
    # Ctrl-C in a terminal reaches the whole process group; the parent decides what happens.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    reseed_numpy(seed)
    inherited = payload is not None
    if inherited:
        _after_fork()
    while True:
        # What cannot be unpickled here is answered, chunk by chunk, with an exception in place
        # of a batch: dying instead would only leave the reason on this process's stderr.
        refusal: SerializationError | None = None
        if not inherited:
            from ._shm import loads_payload

            try:
                blob = conn.recv_bytes()
            except (EOFError, OSError):
                return
            if blob == pickle.dumps(None):
                return
            try:
                payload = loads_payload(blob)
            except Exception as exc:
                refusal = _unpickling_error("the function or the shared arguments", exc)
        if not _serve(conn, payload, slot, refusal) or inherited:
            return
        payload = None
        gc.collect()  # unmap the released run's shared arrays now, not at some later collection


def _after_fork() -> None:
    """Run ``multiprocess``'s after-fork hooks in a worker the standard library forked.

    The standard library reset its own objects in this process (manager proxies reconnect
    rather than share the parent's socket, for one); objects of ``multiprocess`` that the
    worker inherited, such as a ``multiprocess`` manager's dict among the shared arguments,
    need the same from their own library.
    """
    library = sys.modules.get("multiprocess.util")
    if library is not None:
        library._run_after_forkers()


def _serve(conn: Any, payload: Payload | None, slot: Any,
           refusal: SerializationError | None) -> bool:
    """Run chunks until the run ends; True if it ended with :data:`RELEASE` (keep serving)."""
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            return False
        if message == RELEASE:
            return True
        try:
            chunk = pickle.loads(message)
        except Exception as exc:
            reply = dumps(_unpickling_error("the arguments of the tasks sent", exc))
        else:
            if chunk is None:
                return False
            if refusal is not None:
                reply = dumps(refusal)
            else:
                assert isinstance(payload, Payload)
                reply = encode_batch(run_chunk(payload, chunk, slot))
        try:
            conn.send_bytes(reply)
        except (BrokenPipeError, OSError):
            return False


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """On Linux, have the kernel kill this worker when the thread that started it ends.

    That thread is the run's (the caller's or the background runner's), which outlives every
    worker it starts unless the whole process dies; then the parent had no chance to stop its
    workers (SIGKILL, the out-of-memory killer), and a hung task would run on for hours.
    """
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _find_prctl() -> Any:
    """libc's ``prctl``, looked up once in the parent so that forked workers start faster; None
    off Linux or where libc has none (the worker then ends at its next read from the parent)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).prctl
    except (OSError, AttributeError):
        return None


_prctl = _find_prctl()


def _unpickling_error(what: str, exc: Exception) -> SerializationError:
    reason = f"pickled, but unpickling in the worker failed: {type(exc).__name__}: {exc}"
    return SerializationError(what, reason)

