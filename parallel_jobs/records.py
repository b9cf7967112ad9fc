"""Immutable records that describe work and its outcome.

``Task`` says what to run, ``TaskResult`` what happened. ``Payload`` is what every task shares
(the function and the common arguments), sent to each worker once. ``Chunk`` and ``Batch`` are the
wire formats between the Runner and a backend: a chunk is a run of tasks sent together, a batch is
their outcomes, stored column-wise so that 100,000 tiny results cost a few arrays rather than
100,000 objects.

This module holds data and the rules for building a call from it; it starts no process and
imports nothing from the parent side. A :class:`~parallel_jobs.protocol.pickling.Failure` (a
task's exception, able to cross a process boundary) is pickling's own record: it lives there.
"""

from __future__ import annotations

import functools
import reprlib
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import attrs

from .protocol.pickling import Failure

__all__ = [
    "GLOBALDICT",
    "SHARED_ON_PURPOSE",
    "Batch",
    "Chunk",
    "Payload",
    "Task",
    "TaskResult",
    "WorkerOptions",
    "shorten",
    "task_call",
    "zeros",
]

GLOBALDICT = "globaldict"
"""The keyword under which tasks get the run's ``globaldict``."""

SHARED_ON_PURPOSE = frozenset({GLOBALDICT})
"""The keyword arguments that every task shares on purpose: one object for all of them, whose
changes every task sees. They are no task's input: never copied for a task, and no part of what
identifies a run's inputs. Every part of the package reads them from here."""


@attrs.frozen(slots=True)
class Task:
    """One call of the function: its place in the input and its own arguments.

    What all tasks share (the function, ``args``, ``kwargs``, ``globaldict``) lives in the run's
    :class:`Payload`, not here.

    Attributes:
        index: position of the task in the input, from 0.
        args: the task's own positional values (the ``iterarg`` item, unpacked if it is a tuple).
        kwargs: the task's own keyword values (its ``iterkwargs`` entry), or None.

    Examples:
        >>> Task(index=2, args=(5,))
        Task(index=2, args=(5,), kwargs=None)
    """

    index: int
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] | None = None


@attrs.frozen(slots=True)
class WorkerOptions:
    """What a worker process does to stay healthy (every field off by default).

    Attributes:
        initializer: called once in each worker, with ``initargs``, before its first task.
        initargs: the positional arguments of ``initializer``.
        max_tasks: tasks a worker runs before it is replaced, or None.
        max_memory: bytes of RSS past which a worker is replaced after its task, or None.
        task_memory_limit: bytes of RSS past which the running task is killed, or None.
        threads: threads each BLAS/OpenMP library may use in a worker, or None to leave them.
        log_level: the level of the caller's root logger, when the records that tasks log
            are sent back to the caller's handlers (see ``worker_health.run_keeping_logs``),
            else None.
    """

    initializer: Callable[..., Any] | None = None
    initargs: tuple[Any, ...] = ()
    max_tasks: int | None = None
    max_memory: int | None = None
    task_memory_limit: int | None = None
    threads: int | None = None
    log_level: int | None = None

    @property
    def recycles(self) -> bool:
        """Whether a worker may have to be replaced between two tasks."""
        return self.max_tasks is not None or self.max_memory is not None


@attrs.frozen(slots=True)
class Payload:
    """What every task of a run shares; it reaches each worker once.

    A process backend packs it (see ``protocol.messages.pack_per_task``) so that each task gets
    its own copy of what it shares, as sciris' pickling per task gives: the function (when it
    carries state) and the shared arguments are pickled once, into ``blob``, and unpickled
    afresh for every task. A task that mutates what it was handed never changes what the next
    one sees.

    Attributes:
        func: the function to call.
        args: positional arguments appended after each task's own values.
        kwargs: keyword arguments for every task (``globaldict`` included when given);
            a task's own keyword values win over these.
        blob: when set, the pickled ``(func or None, args, kwargs)`` that each task unpickles
            for itself; ``args`` is then empty and ``kwargs`` holds only what tasks share on
            purpose (:data:`SHARED_ON_PURPOSE`).
        entropy: the draw from the caller's NumPy RNG from which each task's seed is derived,
            or None to leave the random generators alone (see ``seeding.TaskSeeder``).
        eager_seeding: seed before every task instead of at a task's first random draw (the
            function holds a random function by another name, which no lazy hook can see).
        capture: keep what each task prints (its stdout and stderr) instead of showing it.
        echo: collect what each task prints, for the parent to show, each line prefixed with
            its task (a progress bar is drawn: worker processes printing to the terminal
            themselves would tear it).
    """

    func: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = attrs.field(factory=dict)
    blob: bytes | None = None
    entropy: int | None = None
    eager_seeding: bool = False
    capture: bool = False
    echo: bool = False
    worker: WorkerOptions | None = None
    """What worker processes do to stay healthy (set-up, recycling, limits), or None."""

    @property
    def globaldict(self) -> Any:
        """The object shared as ``globaldict`` with every task, or None."""
        return self.kwargs.get(GLOBALDICT)

    def sharing(self, globaldict: Any) -> Payload:
        """This payload, handing ``globaldict`` to every task (one object, never copied)."""
        return attrs.evolve(self, kwargs={**self.kwargs, GLOBALDICT: globaldict})

    @property
    def inputs(self) -> dict[str, Any]:
        """The shared keyword arguments that are inputs: all but :data:`SHARED_ON_PURPOSE`."""
        return {key: value for key, value in self.kwargs.items()
                if key not in SHARED_ON_PURPOSE}

    @property
    def on_purpose(self) -> dict[str, Any]:
        """The keyword arguments every task shares on purpose (:data:`SHARED_ON_PURPOSE`)."""
        return {key: value for key, value in self.kwargs.items() if key in SHARED_ON_PURPOSE}


@functools.lru_cache(maxsize=4)
def _shortener(each: int, items: int) -> reprlib.Repr:
    short = reprlib.Repr()
    short.maxstring = short.maxother = each
    short.maxlist = short.maxtuple = short.maxdict = short.maxset = items
    return short


def shorten(task: Task, each: int, items: int, most: int) -> str:
    """``task``'s own values as ``5, 'a', n=2``, reprlib-style: each value to about ``each``
    characters and ``items`` items, all of them to ``most`` characters.

    Examples:
        >>> shorten(Task(0, args=("x" * 100,), kwargs={"n": 2}), 24, 4, 60)
        "'xxxxxxxxx...xxxxxxxxxx', n=2"
    """
    short = _shortener(each, items)
    parts = [short.repr(value) for value in task.args]
    parts += [f"{key}={short.repr(value)}" for key, value in (task.kwargs or {}).items()]
    text = ", ".join(parts)
    return text if len(text) <= most else text[: most - 3] + "..."


def task_call(payload: Payload, task: Task) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Return the ``(args, kwargs)`` that calling ``task`` passes to the function: the task's
    own values, then the shared ``args``; the shared ``kwargs``, which the task's own keyword
    values override.

    This is the rule; the worker's loop (``worker._run_loop``) applies it inline, a call per
    task being too dear for tiny tasks, and a test pins that the two agree
    (``tests/test_records.py::test_the_worker_calls_each_task_as_task_call_builds_it``).

    Examples:
        >>> task_call(Payload(max, args=(10,), kwargs={}), Task(0, args=(3,)))
        ((3, 10), {})
    """
    args = task.args + payload.args
    kwargs = dict(payload.kwargs)
    if task.kwargs:
        kwargs.update(task.kwargs)
    return args, kwargs


def _as_args(value: Any) -> tuple[Any, ...]:
    # sciris compatibility: a tuple item is unpacked into positional arguments.
    return value if isinstance(value, tuple) else (value,)


@attrs.frozen(slots=True)
class Chunk:
    """A run of tasks sent to one worker in one message.

    Attributes:
        indices: the task indices (a ``range`` when they are consecutive, which pickles in bytes).
        itervals: the raw ``iterarg`` item of each task, or None when tasks take no iterated
            positional value.
        iterkwargs: the ``iterkwargs`` dict of each task, or None.
    """

    indices: Sequence[int]
    itervals: Sequence[Any] | None = None
    iterkwargs: Sequence[Mapping[str, Any]] | None = None
    owned: bool = False
    """Whether values were pickled one by one (see :class:`Own`), so that one that could not
    be unpickled arrives as an :class:`Unloadable` and fails its own task only."""

    def __len__(self) -> int:
        return len(self.indices)

    def tasks(self) -> Iterator[Task]:
        """Yield the chunk's tasks as :class:`Task` records."""
        for pos, index in enumerate(self.indices):
            args = () if self.itervals is None else _as_args(self.itervals[pos])
            kwargs = None if self.iterkwargs is None else self.iterkwargs[pos]
            yield Task(index, args, kwargs)


_DOUBLE = "d"
_INT64 = "q"


def zeros(typecode: str, n: int) -> array[Any]:
    """An ``array`` of ``n`` zeros, allocated in one step (no temporary buffer of the same size:
    that would raise a big run's peak memory by the column's size).

    Examples:
        >>> zeros("f", 3)
        array('f', [0.0, 0.0, 0.0])
    """
    return array(typecode, [0]) * n


@attrs.define(slots=True)
class Batch:
    """The outcomes of the tasks of one chunk, column-wise.

    Times are ``time.perf_counter()`` readings of the worker, which on every supported platform
    share their origin with the parent's. ``failures`` maps a position in ``indices`` to what that
    task raised; the value at that position is None. ``requeue`` lists tasks of the chunk that
    did not run (their worker died first, or the run was stopped before they started): a
    running run dispatches them again, a stopped one marks them skipped. ``stdout`` and
    ``stderr`` hold what each task printed, with ``capture=True``.
    """

    indices: Sequence[int]
    values: list[Any]
    started: array[float]
    elapsed: array[float]
    cpu_time: array[float]
    peak_rss: array[int]
    pid: int
    failures: dict[int, Failure] = attrs.field(factory=dict)
    requeue: Sequence[int] = ()
    stdout: list[str] | None = None
    stderr: list[str] | None = None
    retire: bool = False
    """Set by a forked worker that must run no further task (one of its tasks wrote to an
    array it inherited, see ``protocol.shm``, or it wore out, see ``worker_health``): it exits
    once this batch is sent."""
    retire_reason: str = ""
    """Why the worker retires, when a health option made it (logged and reported)."""
    logs: list[Any] | None = None
    """The ``logging`` records the tasks emitted in a worker process, for the caller's
    handlers (see ``engine.health.replay_logs``)."""

    def cut(self, ran: int) -> None:
        """Keep only the first ``ran`` tasks; the others did not run and go to ``requeue``."""
        self.requeue = list(self.indices[ran:])
        self.indices = self.indices[:ran]
        del self.values[ran:], self.started[ran:], self.elapsed[ran:]
        del self.cpu_time[ran:], self.peak_rss[ran:]
        if self.stdout is not None and self.stderr is not None:
            del self.stdout[ran:], self.stderr[ran:]

    @classmethod
    def empty(cls, indices: Sequence[int], pid: int) -> Batch:
        """A batch for ``indices`` with every column zeroed, to be filled in."""
        n = len(indices)
        return cls(
            indices=indices,
            values=[None] * n,
            started=zeros(_DOUBLE, n),
            elapsed=zeros(_DOUBLE, n),
            cpu_time=zeros(_DOUBLE, n),
            peak_rss=zeros(_INT64, n),
            pid=pid,
        )

    @classmethod
    def failed(cls, indices: Sequence[int], error_for: Mapping[int, BaseException],
               pid: int) -> Batch:
        """A batch in which every task of ``indices`` failed with ``error_for[index]``."""
        batch = cls.empty(indices, pid)
        for pos, index in enumerate(indices):
            batch.failures[pos] = Failure.capture(error_for[index])
        return batch

    @classmethod
    def lost(
        cls,
        index: int,
        error: BaseException,
        *,
        pid: int,
        started: float,
        elapsed: float,
        requeue: Sequence[int] = (),
    ) -> Batch:
        """A batch saying that task ``index`` failed with ``error`` outside the function itself
        (its worker crashed or overran), and that ``requeue`` must run again."""
        batch = cls.empty([index], pid)
        batch.started[0] = started
        batch.elapsed[0] = elapsed
        batch.failures[0] = Failure.capture(error)
        batch.requeue = requeue
        return batch


def _same_value(a: Any, b: Any) -> bool:
    """Whether two return values are equal, also when ``==`` compares element-wise (arrays)."""
    if a is b:
        return True
    try:
        return bool(a == b)
    except ValueError:  # an element-wise result has no single truth value
        pass
    if isinstance(a, (list, tuple)) and type(a) is type(b):
        return len(a) == len(b) and all(map(_same_value, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_value(a[key], b[key]) for key in a)
    import numpy as np

    return bool(np.array_equal(a, b))


@attrs.frozen(slots=True)
class TaskResult:
    """What happened when a task ran.

    Attributes:
        index: position of the task in the input.
        value: what the function returned (None if it failed or never ran).
        success: True if the function returned.
        exception: what it raised, or what stopped it (a crash, a timeout), else None.
        traceback: the formatted traceback of ``exception``, or ``""``.
        started: wall-clock time (``time.time()`` seconds) when the last attempt began.
        finished: wall-clock time when it ended.
        elapsed: seconds the last attempt ran.
        cpu_time: user + system CPU seconds the last attempt used.
        peak_rss: the worker's peak resident memory in bytes while the last attempt ran
            (0 where the backend cannot tell).
        pid: the process that ran it.
        attempts: how many times it was run (more than 1 with ``retries``); 0 if never run.
        stdout: what it printed to standard output, with ``capture=True`` (else ``""``).
        stderr: what it printed to standard error, with ``capture=True`` (else ``""``).

    Examples:
        >>> r = TaskResult(index=0, value=4, success=True)
        >>> r.value, r.success
        (4, True)
    """

    index: int
    value: Any = attrs.field(default=None, eq=attrs.cmp_using(eq=_same_value), hash=False)
    success: bool = False
    exception: BaseException | None = attrs.field(default=None, eq=False)
    traceback: str = ""
    started: float = 0.0
    finished: float = 0.0
    elapsed: float = 0.0
    cpu_time: float = 0.0
    peak_rss: int = 0
    pid: int = 0
    attempts: int = 0
    stdout: str = ""
    stderr: str = ""
