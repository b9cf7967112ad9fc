"""The one interface every backend offers the Runner.

A backend executes chunks of tasks somewhere (worker processes, threads, the caller's own loop,
a user's map function, a dask cluster) and hands back a :class:`~parallel_jobs.records.Batch` per
chunk. The Runner decides what to run and when; a backend decides only where and how, so the
Runner never branches on which backend it has.
"""

from __future__ import annotations

import abc
import logging
import os
import signal
import time
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from typing import Any

import attrs

from ..errors import SerializationError, exception_text
from ..records import SHARED_ON_PURPOSE, Batch, Chunk, Payload
from ..worker import run_chunk

__all__ = [
    "Backend",
    "BackendOptions",
    "chunk_failed",
    "copied",
    "kill_group",
    "kill_tree",
    "logger",
    "mark_overruns",
    "run_copied",
    "wait_for_deadlines",
]

logger = logging.getLogger("parallel_jobs")


@attrs.frozen(slots=True)
class BackendOptions:
    """Settings a backend needs from the run.

    Attributes:
        ncpus: how many tasks may run at once.
        timeout: seconds a task may run, or None.
        start_method: 'fork', 'spawn', 'forkserver', or None for the library's choice.
        copy: give every task its own deep copy of the arguments (the '-copy' parallelizers).
        njobs: how many tasks the run has (0: unknown).
    """

    ncpus: int
    timeout: float | None = None
    start_method: str | None = None
    copy: bool = False
    njobs: int = 0


class Backend(abc.ABC):
    """Where tasks execute.

    The lifecycle is ``start()``, then any number of ``submit()`` and ``collect()`` calls, then
    ``shutdown()``, which is always called, also after errors and Ctrl-C.
    """

    #: Short name shown in ``Parallel.method`` and reports.
    name: str = "?"
    #: Whether a task that overruns its timeout is actually stopped (processes) or only abandoned.
    stops_tasks: bool = True
    #: The largest chunk this backend accepts (1 when each task must be timed on its own).
    max_chunk: int | None = None
    #: Seconds of work a chunk aims at, and the least it holds once tasks are timed (see
    #: ``runner.Chunker``): a backend whose round trip costs more wants longer chunks.
    chunk_target: float = 0.02
    chunk_floor: float = 0.002
    #: Whether tasks run in processes of their own, whose random generators sciris reseeds for
    #: each task (the Runner then draws the run's entropy; see ``seeding.TaskSeeder``).
    reseeds: bool = False
    #: Whether :meth:`stop_tasks` reaches into chunks already sent; if not, a run that a
    #: callback may stop sends one task at a time, so that none starts after the stop.
    stops_mid_chunk: bool = False

    def __init__(self, options: BackendOptions) -> None:
        self.options = options
        #: (pid, reason) of each worker replaced because a health option said so, and how
        #: many tasks broke ``task_memory_limit`` (see ``health``).
        self.replaced: list[tuple[int, str]] = []
        self.memory_limits_hit = 0

    def note_replaced(self, pid: int, reason: str) -> None:
        """Record (and log) that worker ``pid`` was replaced for ``reason``."""
        self.replaced.append((pid, reason))
        logger.info("replacing worker (pid %d): %s", pid, reason)

    @abc.abstractmethod
    def start(self, payload: Payload) -> None:
        """Prepare to run tasks of ``payload`` (start workers, ship shared data)."""

    @abc.abstractmethod
    def free_slots(self) -> int:
        """How many more chunks ``submit`` accepts right now."""

    @abc.abstractmethod
    def submit(self, chunk: Chunk) -> None:
        """Start running ``chunk``; its batch comes back from a later ``collect``."""

    @abc.abstractmethod
    def collect(self, timeout: float | None) -> list[Batch]:
        """Wait up to ``timeout`` seconds (None: until something happens) and return the batches
        of the chunks that finished, crashed or timed out meanwhile (possibly none)."""

    @abc.abstractmethod
    def in_flight(self) -> int:
        """How many submitted chunks have not been collected yet."""

    @abc.abstractmethod
    def shutdown(self, abort: bool = False) -> None:
        """Release every resource. ``abort``: stop running tasks now instead of letting workers
        finish politely. Must be safe to call twice."""

    def share_dict(self, initial: Mapping[str, Any]) -> MutableMapping[str, Any]:
        """A dict that every task sees and may write to (``globaldict``); a plain dict for
        backends whose tasks share this process's memory."""
        return dict(initial)

    def retire_idle(self) -> None:
        """No chunk is left to hand out: idle workers may stop now rather than at ``shutdown``,
        so that their exit overlaps the work still running. A chunk submitted later (a retry)
        must still find a worker."""
        return None

    def wake(self) -> None:
        """Make a ``collect`` blocked in another thread return now; safe from any thread.

        Called to end the run (``Runner.interrupt``), so a woken backend may keep returning at
        once. Backends whose ``collect`` never blocks for long need not override this.
        """
        return None

    def stop_tasks(self) -> None:
        """Start no further task of the chunks already submitted; running tasks finish, and the
        others come back in their batch's ``requeue`` (see :attr:`stops_mid_chunk`)."""
        return None

    def worker_pids(self) -> Sequence[int]:
        """The process ids of the live workers (empty for in-process backends)."""
        return ()


def kill_tree(pid: int) -> None:
    """Kill process ``pid`` and every process below it, deepest first, and every process of the
    process group it leads (a default pool's worker leads one: see :func:`kill_group`)."""
    import psutil

    try:
        root = psutil.Process(pid)
        children = root.children(recursive=True)
    except psutil.Error:
        children = []
    kill_group(pid)
    for child in reversed(children):
        try:
            child.kill()
        except psutil.Error:
            pass
    try:
        os.kill(pid, 9)
    except OSError:
        pass


def kill_group(pid: int) -> None:
    """Kill the process group that process ``pid`` leads, if any, even after ``pid`` ended.

    That is how processes a task started are stopped with a worker that crashed: they belong
    to their parent's group even once they are orphans, and a group's id is not given to a new
    process while any member lives. (A process that leads no group, such as a 'fast' worker,
    has no group of that id to kill.)
    """
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def chunk_failed(chunk: Chunk, error_for: dict[int, BaseException], pid: int) -> Batch:
    """A batch in which every task of ``chunk`` failed with ``error_for[index]``."""
    return Batch.failed(chunk.indices, error_for, pid)


def mark_overruns(batch: Batch, timeout: float | None) -> Batch:
    """Fail the tasks of ``batch`` that ran longer than ``timeout``, for backends that can only
    notice an overrun after the task returns."""
    from ..errors import TaskTimeoutError
    from ..protocol.pickling import Failure

    if timeout is None:
        return batch
    for pos, seconds in enumerate(batch.elapsed):
        if seconds > timeout:
            batch.values[pos] = None
            error = TaskTimeoutError(batch.indices[pos], timeout, stopped=False)
            batch.failures[pos] = Failure.capture(error)
    return batch


def copied(payload: Payload, chunk: Chunk) -> tuple[Payload, Chunk]:
    """Deep copies of the arguments in ``payload`` and ``chunk``, for the '-copy' parallelizers.

    What tasks share on purpose (``globaldict``, see ``records.SHARED_ON_PURPOSE``) is never
    copied.

    Raises:
        SerializationError: naming the argument that cannot be copied (its ``reason`` is what
            ``copy.deepcopy`` raised), so that the Runner fails the chunk's tasks with it.
    """
    kwargs = {
        key: value if key in SHARED_ON_PURPOSE else _copy(value, f"keyword argument {key!r}")
        for key, value in payload.kwargs.items()
    }
    args = tuple(_copy(value, f"args[{pos}]") for pos, value in enumerate(payload.args))
    itervals = chunk.itervals
    if itervals is not None:
        itervals = [_copy(value, f"the iterated value of task {index}")
                    for index, value in zip(chunk.indices, itervals, strict=True)]
    iterkwargs = chunk.iterkwargs
    if iterkwargs is not None:
        iterkwargs = [
            {key: _copy(value, f"keyword argument {key!r} of task {index}")
             for key, value in values.items()}
            for index, values in zip(chunk.indices, iterkwargs, strict=True)
        ]
    # evolve: the payload's other settings (capture, seeding) and the chunk's hold on.
    return (attrs.evolve(payload, args=args, kwargs=kwargs),
            attrs.evolve(chunk, itervals=itervals, iterkwargs=iterkwargs))


def _copy(value: Any, what: str) -> Any:
    import copy

    try:
        return copy.deepcopy(value)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exception_text(exc)}"
        action = "deep-copied (a '-copy' parallelizer gives each task its own copy)"
        raise SerializationError(what, reason, action) from exc


def run_copied(payload: Payload, chunk: Chunk, slot: Any = None) -> Batch:
    """Run ``chunk`` on deep copies of its arguments; if one cannot be copied, every task of
    the chunk fails with the :class:`SerializationError` that names it."""
    try:
        payload, chunk = copied(payload, chunk)
    except SerializationError as error:
        return chunk_failed(chunk, dict.fromkeys(chunk.indices, error), os.getpid())
    return run_chunk(payload, chunk, slot)


def wait_for_deadlines(
    timeout: float | None, starts: Iterable[float], limit: float | None
) -> float | None:
    """How long a backend may wait for outcomes: the caller's ``timeout``, cut short at the
    earliest deadline of tasks that started at ``starts`` (``perf_counter`` seconds) and may each
    run ``limit`` seconds (None: no limit).

    Examples:
        >>> wait_for_deadlines(5.0, [], 1.0)
        5.0
        >>> wait_for_deadlines(None, [time.perf_counter()], None) is None
        True
    """
    if limit is None:
        return timeout
    now = time.perf_counter()
    for started in starts:
        remaining = max(0.0, started + limit - now)
        timeout = remaining if timeout is None else min(timeout, remaining)
    return timeout
