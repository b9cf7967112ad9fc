"""The one interface every backend offers the Runner.

A backend executes chunks of tasks somewhere (worker processes, threads, the caller's own loop,
a user's map function, a dask cluster) and hands back a :class:`~parallel_jobs.records.Batch` per
chunk. The Runner decides what to run and when; a backend decides only where and how, so the
Runner never branches on which backend it has.

Besides :class:`Backend`, the helpers several backends share: deep copies for the '-copy'
parallelizers (:func:`run_copied`), a batch failing a whole chunk (:func:`chunk_failed`), and
killing a worker's process tree (:func:`kill_tree`). Timeouts are decided by
:class:`~parallel_jobs.backends.deadlines.Deadlines`, which every backend holds.
"""

from __future__ import annotations

import abc
import logging
import os
import signal
from collections.abc import Mapping, MutableMapping
from typing import Any

import attrs

from ..errors import SerializationError, exception_text
from ..records import SHARED_ON_PURPOSE, Batch, Chunk, Payload
from ..worker import run_chunk
from .deadlines import Deadlines

__all__ = [
    "Backend",
    "BackendOptions",
    "chunk_failed",
    "copied",
    "kill_group",
    "kill_tree",
    "logger",
    "run_copied",
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

    #: The largest chunk this backend takes, whatever the options (None: any size).
    chunk_limit: int | None = None
    #: Whether a task that overruns its timeout is only abandoned with what runs it (a thread, a
    #: future) rather than stopped: with a timeout, each task then needs a chunk of its own.
    abandons_overruns: bool = False
    #: Whether this backend makes the '-copy' deep copies itself, once per chunk (see
    #: :func:`run_copied`): each task then needs a chunk of its own to get a copy of its own.
    copies_per_chunk: bool = False
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
        self.deadlines = Deadlines(options.timeout)
        #: (pid, reason) of each worker replaced because a health option said so, and how
        #: many tasks broke ``task_memory_limit`` (see ``health``).
        self.replaced: list[tuple[int, str]] = []
        self.memory_limits_hit = 0

    @property
    def max_chunk(self) -> int | None:
        """The largest chunk to hand this backend: 1 when each task must be timed or copied on
        its own (see :attr:`abandons_overruns` and :attr:`copies_per_chunk`), else
        :attr:`chunk_limit`."""
        timed_alone = self.abandons_overruns and self.options.timeout is not None
        if timed_alone or (self.copies_per_chunk and self.options.copy):
            return 1
        return self.chunk_limit

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

