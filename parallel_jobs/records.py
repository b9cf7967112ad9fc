"""Immutable records that describe work and its outcome.

``Task`` says what to run, ``TaskResult`` what happened. ``Payload`` is what every task shares
(the function and the common arguments), sent to each worker once. ``Chunk`` and ``Batch`` are the
wire formats between the Runner and a backend: a chunk is a run of tasks sent together, a batch is
their outcomes, stored column-wise so that 100,000 tiny results cost a few arrays rather than
100,000 objects.

This module holds data and the rules for building a call from it; it starts no process and
imports nothing from the parent side.
"""

from __future__ import annotations

import functools
import io
import pickle
import reprlib
import sys
import traceback as traceback_module
import types
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import attrs

from .errors import RemoteTaskError, exception_text

__all__ = [
    "Batch",
    "Chunk",
    "Failure",
    "Own",
    "Payload",
    "Task",
    "TaskResult",
    "Unloadable",
    "atomic_values",
    "dumps",
    "dumps_for_spawned",
    "is_immutable",
    "own",
    "own_values",
    "shorten",
    "task_call",
]


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
class Payload:
    """What every task of a run shares; it reaches each worker once.

    A process backend packs it (see ``_shm.pack_payload``) so that each task gets its own
    copy of what it shares, as sciris' pickling per task gives: the function (when it carries
    state) and the shared arguments are pickled once, into ``blob``, and unpickled afresh for
    every task. A task that mutates what it was handed never changes what the next one sees.

    Attributes:
        func: the function to call.
        args: positional arguments appended after each task's own values.
        kwargs: keyword arguments for every task (``globaldict`` included when given);
            a task's own keyword values win over these.
        blob: when set, the pickled ``(func or None, args, kwargs)`` that each task unpickles
            for itself; ``args`` is then empty and ``kwargs`` holds only what tasks share on
            purpose (``globaldict``).
        entropy: the draw from the caller's NumPy RNG from which each task's seed is derived,
            or None to leave the random generators alone (see ``worker.TaskSeeder``).
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
    worker: Any = None
    """The run's ``health.WorkerOptions`` (set-up, recycling, limits), or None."""


_ATOMIC = frozenset({int, float, complex, bool, str, bytes, type(None), range, type(Ellipsis)})
"""Types whose values no task can change: sharing one is the same as handing out copies."""


def is_immutable(value: Any, depth: int = 0) -> bool:
    """Whether no task could change ``value`` (so one object may serve every task).

    Numbers, strings and bytes are, and tuples and frozensets of them; so are functions that
    close over nothing, classes and modules, which pickling passes by reference anyway, so
    that sciris' tasks shared them too.

    Examples:
        >>> is_immutable((1, "a", None)), is_immutable({"a": 1}), is_immutable(len)
        (True, False, True)
    """
    kind = type(value)
    if kind in _ATOMIC:
        return True
    if kind is tuple or kind is frozenset:
        return depth < 8 and all(is_immutable(item, depth + 1) for item in value)
    if kind is types.FunctionType:
        return value.__closure__ is None
    if kind in _BY_REFERENCE:
        return True
    np = sys.modules.get("numpy")  # NumPy's scalars (np.float64, ...) are values too
    return np is not None and isinstance(value, np.generic) and not isinstance(value, np.void)


_BY_REFERENCE = frozenset({
    types.BuiltinFunctionType, types.ModuleType, type,
})


def atomic_values(values: Sequence[Any]) -> bool:
    """Whether every item of ``values`` is of an atomic type (checked at C speed).

    Examples:
        >>> atomic_values([1, 2.5, "x"]), atomic_values([1, [2]])
        (True, False)
    """
    return _ATOMIC.issuperset(map(type, values))


class Own:
    """One value pickled on its own, so that it shares no object with its neighbours.

    A chunk's values, or a batch's results, travel in one pickle, in which one object met twice
    is sent once and comes back as one object: two tasks handed the same list would share it,
    and two results that are the same dict would come back as one. sciris pickles each task
    and each result separately; wrapping each value that could be shared in an ``Own`` gives
    the same. Unpickling it gives the value, or an :class:`Unloadable` saying why it could not.
    """

    __slots__ = ("blob",)

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return _load_own, (self.blob,)


class Unloadable:
    """Stands for a value that could not be unpickled where it arrived."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _load_own(blob: bytes) -> Any:
    try:
        return pickle.loads(blob)
    except Exception as exc:
        return Unloadable(f"{type(exc).__name__}: {exc}")


def own(value: Any) -> Any:
    """``value`` itself if it is atomic, else an :class:`Own` pickle of it.

    Raises:
        Exception: whatever pickling ``value`` raises.
    """
    return value if is_immutable(value) else Own(dumps(value))


def own_values(values: Sequence[Any]) -> list[Any] | None:
    """``values`` with every value that is not atomic in its own pickle, or None when none
    needs it (the common case of numbers and strings costs one C-speed pass)."""
    if len(values) < 2 or atomic_values(values):
        return None
    return [own(value) for value in values]


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
    """Return the ``(args, kwargs)`` that calling ``task`` passes to the function.

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


def _format_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` as Python prints it, or ``""`` for an exception never raised
    (a crash or a timeout that the parent describes): its text would only repeat the message."""
    if exc.__traceback__ is None:
        return ""
    try:
        return "".join(traceback_module.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:
        # The traceback module guards str() of the exception, but not everything a hostile
        # exception can break (a __notes__ that is not a list, say): keep the type at least.
        return f"{type(exc).__qualname__}: {exception_text(exc)}\n"


def _rebuild_failure(blob: bytes | None, type_name: str, message: str, tb: str) -> Failure:
    exception: BaseException | None = None
    if blob is not None:
        try:
            exception = _assemble(pickle.loads(blob))
        except Exception:
            exception = None
    if exception is None:
        exception = RemoteTaskError(type_name, message, tb)
    return Failure(exception, type_name, message, tb)


class _Shell(tuple):
    """An exception taken apart: its class, ``args`` and attributes.

    Pickling an exception records ``cls(*args)``, which fails for a class whose ``__init__``
    takes other parameters than it passes to ``super().__init__``; a shell re-creates such an
    exception without calling ``__init__``, so the caller still gets its own exception type.
    """


def _assemble(loaded: Any) -> BaseException:
    if not isinstance(loaded, _Shell):
        assert isinstance(loaded, BaseException)
        return loaded
    cls, args, attributes = loaded
    exception: BaseException = BaseException.__new__(cls)
    exception.args = args
    exception.__dict__.update(attributes)
    return exception


def dumps(obj: Any) -> bytes:
    """Pickle with the C pickler, falling back to dill for lambdas, closures and the like.

    For a process that shares this one's ``__main__``: a forked worker, or the parent that a
    worker answers (:func:`dumps_for_spawned` serves the others). What the C pickler refuses is
    retried with the classes and functions that ``__main__`` lacks by value (a spawned worker's
    copies of the caller's classes), then with dill.

    What dill pickles travels wrapped, so that plain ``pickle.loads`` reads it back: dill's
    pickles name modules that exist only once dill is imported, and the process reading them
    (a forked worker, or the parent of a run that pickled nothing exotic so far) may not have
    imported it.

    Examples:
        >>> import pickle
        >>> pickle.loads(dumps({"x": (1, 2.5)}))
        {'x': (1, 2.5)}
    """
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        from ._main_pickling import SharedMainCPickler, SharedMainPickler

        buffer = io.BytesIO()
        return _pickle_with(SharedMainCPickler(buffer), buffer, SharedMainPickler, obj)


def dumps_for_spawned(obj: Any, blobs: dict[Any, bytes] | None = None) -> bytes:
    """Pickle for a worker that did not inherit this process's ``__main__`` (spawn, forkserver).

    Where ``__main__`` cannot be imported by such a worker (a notebook, a REPL, ``python -c``),
    the classes and functions it defines travel by value (see :mod:`._main_pickling`), pickled
    once per ``blobs`` dict (one per run); else this is :func:`dumps`. Either way the C pickler
    does the work and dill only what it refuses.

    Examples:
        >>> import pickle
        >>> pickle.loads(dumps_for_spawned([1, "a"]))
        [1, 'a']
    """
    from ._main_pickling import MainPickler, SpawnPickler, main_is_importable

    if main_is_importable():
        return dumps(obj)
    buffer = io.BytesIO()
    return _pickle_with(SpawnPickler(buffer, blobs), buffer, MainPickler, obj)


def _pickle_with(c_pickler: pickle.Pickler, buffer: io.BytesIO, dill_pickler: Any,
                 obj: Any) -> bytes:
    """Pickle ``obj`` with ``c_pickler`` (writing to ``buffer``), else with ``dill_pickler``."""
    try:
        c_pickler.dump(obj)
        return buffer.getvalue()
    except Exception:
        from ._main_pickling import dill_dumps

        blob = dill_dumps(dill_pickler, obj)
    return pickle.dumps(_Dilled(blob), protocol=pickle.HIGHEST_PROTOCOL)


class _Dilled:
    """Bytes that dill made; unpickling this unpickles them with dill (imported then)."""

    __slots__ = ("blob",)

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return _undill, (self.blob,)


def _undill(blob: bytes) -> Any:
    import dill

    return dill.loads(blob)


def _dumps_exception(exc: BaseException) -> bytes | None:
    exc_tb = exc.__traceback__
    try:
        # The traceback holds frames, which never pickle; the text travels separately.
        exc.__traceback__ = None
        blob = dumps(exc)
        try:
            pickle.loads(blob)
        except Exception:
            blob = dumps(_Shell((type(exc), exc.args, dict(getattr(exc, "__dict__", {})))))
        return blob
    except Exception:
        return None
    finally:
        exc.__traceback__ = exc_tb


@attrs.frozen(slots=True)
class Failure:
    """An exception raised by a task, able to cross a process boundary.

    In the process that caught it, ``exception`` is the original object. When pickled, the
    exception travels as bytes beside its type name, message and traceback text; if it cannot be
    pickled, or cannot be re-created on the other side, a :class:`RemoteTaskError` keeping that
    text takes its place.
    """

    exception: BaseException
    type_name: str
    message: str
    traceback: str

    @classmethod
    def capture(cls, exc: BaseException) -> Failure:
        """Record ``exc`` with its formatted traceback (``""`` if it was never raised).

        Never raises, whatever ``exc`` does: a ``__str__`` that raises costs only the message.
        """
        cls_ = type(exc)
        name = f"{cls_.__module__}.{cls_.__qualname__}"
        return cls(exc, name, exception_text(exc), _format_traceback(exc))

    def __reduce__(self) -> tuple[Any, ...]:
        blob = _dumps_exception(self.exception)
        return (_rebuild_failure, (blob, self.type_name, self.message, self.traceback))


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
    array it inherited, see ``_shm``, or it wore out, see ``health``): it exits once this
    batch is sent."""
    retire_reason: str = ""
    """Why the worker retires, when a health option made it (logged and reported)."""
    logs: list[Any] | None = None
    """The ``logging`` records the tasks emitted in a worker process, for the caller's
    handlers (see ``health.replay_logs``)."""

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
