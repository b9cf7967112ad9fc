"""What of the default pool outlives one run: kept workers, lifelines, and the at-fork cleanup.

A spawned worker is a new interpreter that must import Python's and the caller's modules (0.2 s
on a small machine) before its first task; a forked one is ready in a millisecond. So spawned and
forkserver workers whose run ended cleanly are kept, idle and holding nothing of that run (see
:data:`~parallel_jobs.protocol.messages.RELEASE`), for the next run of the same library and
start method in this process (:func:`take`, :func:`keep`). They are stopped at interpreter exit, by
:func:`release_workers`, and by the kernel when this process ends (Linux: see :func:`lifeline`).

A kept worker has imported the caller's modules as they were: once any module is reloaded
(``importlib.reload``, a notebook's autoreload), every kept worker is stopped rather than reused,
so that a run always calls the caller's current code. The working directory, environment and
``sys.path`` are sent with each run's payload instead (:func:`send_payload`, the
:data:`~parallel_jobs.worker.WORLD` message).

All of this is state of the process, not of a run: a child forked from this process (a worker,
or the caller's own ``os.fork``) drops it without touching it (:func:`_after_fork_in_child`).

Imports :mod:`~parallel_jobs.worker` (the messages) and :mod:`.base` (killing a process tree).
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from .._cpus import cpu_count
from ..protocol.messages import EXIT, RELEASE
from ..records import Chunk
from .base import kill_tree, logger

__all__ = [
    "Worker",
    "close",
    "join",
    "keep",
    "lifeline",
    "release_workers",
    "send_payload",
    "stop",
    "take",
    "tell_to_exit",
    "used_forkserver",
]


@attrs.define(slots=True, eq=False)
class Worker:
    """A worker process of the default pool: its number in the pool, the process, the parent's
    end of its pipe, the slot it shares with the parent (see ``worker.run_chunk``), and the
    chunk it runs (None: idle). Two handles are equal only if they are the same."""

    number: int
    process: Any
    conn: Any
    slot: Any
    chunk: Chunk | None = None


def tell_to_exit(workers: Sequence[Worker]) -> None:
    """Tell idle ``workers`` to exit (without waiting for them)."""
    for worker in workers:
        try:
            worker.conn.send_bytes(EXIT)
        except OSError:
            pass


def join(workers: Sequence[Worker], grace: float) -> None:
    """Give ``workers``, told to exit, ``grace`` seconds in all to do so."""
    deadline = time.monotonic() + grace
    for worker in workers:
        worker.process.join(max(0.0, deadline - time.monotonic()))


def close(worker: Worker) -> None:
    """Free the handles of ``worker``, which has exited (or is left to the kernel)."""
    worker.conn.close()
    try:
        worker.process.close()
    except ValueError:
        pass  # still running: its handles go with it


def stop(worker: Worker) -> None:
    """Make sure ``worker`` and any process it started are gone, and free its handles."""
    pid = worker.process.pid
    if worker.process.is_alive():
        kill_tree(pid)
    worker.process.join(1.0)
    close(worker)
    logger.debug("stopped worker %d (pid %s)", worker.number, pid)


def send_payload(worker: Worker, world: bytes, blob: bytes) -> None:
    """Start a run on a spawned or forkserver ``worker``, new or kept: first the caller's
    ``world`` (a kept worker still has the one of the run it was started for), then the packed
    payload ``blob``."""
    try:
        worker.conn.send_bytes(world)
        worker.conn.send_bytes(blob)
    except OSError:
        pass  # it died booting: its sentinel tells collect() and submit() so


# -- lifelines --------------------------------------------------------------------------------


class _Lifelines:
    """One pipe per process library whose write end only this process holds, and never writes.

    Each worker and manager process reads it (see ``worker._die_with_parent``): when this process
    ends, however it ends, the pipe reaches end-of-file and the kernel kills them. Unlike
    PR_SET_PDEATHSIG, which fires when the *thread* that started a process ends and, under
    forkserver, follows the fork server instead of this process, the pipe lives as long as this
    process does. A child forked from this process closes the write ends (see
    :func:`_after_fork_in_child`), or its parent's workers would live as long as it does.
    """

    def __init__(self) -> None:
        self.owner = os.getpid()
        self.pipes: dict[str, tuple[Any, Any]] = {}

    def reader(self, context: Any) -> Any:
        """The read end for processes of ``context``'s library, created on first use."""
        library = type(context).__module__.split(".")[0]
        pipe = self.pipes.get(library)
        if pipe is None:
            pipe = self.pipes[library] = context.Pipe(duplex=False)
        return pipe[0]

    def forget(self) -> None:
        """In a forked child: close the copies of the parent's write ends."""
        for _, writer in self.pipes.values():
            writer.close()
        self.owner, self.pipes = os.getpid(), {}


_LIFELINES = _Lifelines()


def lifeline(context: Any) -> Any:
    """The read end of this process's lifeline for a worker or manager of ``context``: it
    reaches end-of-file when this process ends, however it ends."""
    return _LIFELINES.reader(context)


# -- kept workers -----------------------------------------------------------------------------


def _loaded_code() -> dict[str, Any]:
    """The spec of each loaded module: ``importlib.reload`` gives a module a new one."""
    return {name: getattr(module, "__spec__", None) for name, module in list(sys.modules.items())}


def _reloaded(before: Mapping[str, Any]) -> bool:
    """Whether a module loaded when ``before`` was taken has been reloaded (or replaced) since."""
    now = sys.modules
    for name, spec in before.items():
        module = now.get(name)
        if module is not None and getattr(module, "__spec__", None) is not spec:
            return True
    return False


class _KeptWorkers:
    """The idle workers kept for later runs, by (library, start method)."""

    def __init__(self) -> None:
        self.owner = os.getpid()
        self.idle: dict[tuple[str, str], list[Worker]] = {}
        self.code: dict[str, Any] = {}  # _loaded_code() when the first worker was kept

    def take(self, key: tuple[str, str], count: int) -> list[Worker]:
        """Up to ``count`` live kept workers for ``key``; the dead ones are reaped."""
        if os.getpid() != self.owner:
            # A forked child inherited the registry, not the workers: they are its parent's.
            self.forget()
            return []
        if self.idle and _reloaded(self.code):
            logger.debug("a module was reloaded: stopping the kept workers")
            self.release()
        taken: list[Worker] = []
        pool = self.idle.get(key, [])
        while pool and len(taken) < count:
            worker = pool.pop()
            if worker.process.is_alive():
                taken.append(worker)
            else:
                close(worker)
        return taken

    def keep(self, key: tuple[str, str], worker: Worker) -> bool:
        """Keep ``worker`` for a later run; False if enough are kept already."""
        pool = self.idle.setdefault(key, [])
        if os.getpid() != self.owner or len(pool) >= cpu_count():
            return False
        try:
            worker.conn.send_bytes(RELEASE)
        except OSError:
            return False
        # multiprocess and multiprocessing each register an exit handler that joins every child,
        # the first time they start one; handlers run last-registered first, so this one is
        # registered again after every such start, to stop the kept workers before those join.
        atexit.unregister(release_workers)
        atexit.register(release_workers)
        if not any(self.idle.values()):
            self.code = _loaded_code()
        pool.append(worker)
        return True

    def forget(self) -> None:
        """In a forked child: drop the parent's kept workers without touching them, and take
        them out of the process libraries' records, whose exit handler would join them."""
        for pool in self.idle.values():
            for worker in pool:
                # Those records are private (multiprocessing.process._children), and no public
                # call drops a process the child did not start; without this the child's exit
                # fails, test_kept_workers.py::
                # test_a_forked_child_leaves_the_parents_kept_workers_alone[spawn] shows how.
                for name in ("multiprocess.process", "multiprocessing.process"):
                    module = sys.modules.get(name)
                    if module is not None:
                        module._children.discard(worker.process)
                worker.conn.close()
        self.owner, self.idle, self.code = os.getpid(), {}, {}

    def release(self) -> None:
        """Stop every kept worker."""
        if os.getpid() != self.owner:
            self.forget()
            return
        workers = [w for pool in self.idle.values() for w in pool]
        self.idle = {}
        tell_to_exit(workers)
        join(workers, grace=1.0)
        for worker in workers:
            stop(worker)


_KEPT = _KeptWorkers()


def take(key: tuple[str, str], count: int) -> list[Worker]:
    """Up to ``count`` idle workers kept for (library, start method) ``key``, to reuse."""
    return _KEPT.take(key, count)


def keep(key: tuple[str, str], worker: Worker) -> bool:
    """Keep idle, healthy ``worker`` for the next run of ``key``; False if it was not kept
    (enough are kept already, or it could not be told its run ended), so stop it."""
    if worker.chunk is not None or not worker.process.is_alive():
        return False
    if not _KEPT.keep(key, worker):
        return False
    logger.debug("keeping worker %d (pid %d) for the next run", worker.number, worker.process.pid)
    return True


def release_workers() -> None:
    """Stop the idle worker processes that parallel_jobs keeps between spawn/forkserver runs.

    They are stopped at interpreter exit anyway; call this to get their memory back sooner, or
    before counting a process's children.

    Examples:
        >>> release_workers()
    """
    _KEPT.release()


# -- forked children --------------------------------------------------------------------------

_FORKSERVER_LIBRARIES: set[str] = set()
"""The process libraries whose fork server this process has used."""


def used_forkserver(library: str) -> None:
    """Note that ``library``'s fork server serves this process: a forked child lets go of it
    (see :func:`_after_fork_in_child`)."""
    _FORKSERVER_LIBRARIES.add(library)


def _after_fork_in_child() -> None:
    """In any child forked from this process (a worker, or the caller's own ``os.fork``): the
    parent's kept workers, lifelines and fork servers are the parent's. The child neither
    touches nor keeps them alive; it starts its own when it runs something itself."""
    _KEPT.forget()
    _LIFELINES.forget()
    # The fork server's state is private (no public call resets it); without resetting it the
    # child waits on its parent's server: test_kept_workers.py::
    # test_a_forked_child_leaves_the_parents_kept_workers_alone[forkserver] fails.
    for library in _FORKSERVER_LIBRARIES:
        module = sys.modules.get(f"{library}.forkserver")
        server = getattr(module, "_forkserver", None)
        if server is None or server._forkserver_pid is None:
            continue
        # The server is not this child's to wait for; its alive pipe must not outlive the parent.
        if server._forkserver_alive_fd is not None:
            try:
                os.close(server._forkserver_alive_fd)
            except OSError:
                pass
        server._forkserver_address = None
        server._forkserver_alive_fd = None
        server._forkserver_pid = None
    _FORKSERVER_LIBRARIES.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
