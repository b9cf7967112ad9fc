"""Pickling for every process boundary: the C pickler first, dill only for what it refuses.

:func:`dumps` pickles for a process that shares this one's ``__main__`` (a forked worker, or the
parent a worker answers), :func:`dumps_for_spawned` for one that does not. :class:`Own` pickles
one value on its own, so that values sent together share no object, and :class:`Unloadable`
stands for one that could not be unpickled where it arrived. :class:`Failure` carries a task's
exception across, with its traceback text, and falls back to a
:class:`~parallel_jobs.errors.RemoteTaskError` where the exception cannot travel as itself.

Both sides import this module; it imports nothing of the package but the errors (dill, through
:mod:`.dilled`, only when a pickle needs it).
"""

from __future__ import annotations

import io
import pickle
import sys
import traceback as traceback_module
import types
from collections.abc import Sequence
from typing import Any

import attrs

from ..errors import RemoteTaskError, exception_text

__all__ = [
    "Failure",
    "Own",
    "Unloadable",
    "atomic_values",
    "dumps",
    "dumps_exception",
    "dumps_for_spawned",
    "is_immutable",
    "own",
    "rebuild_failure",
]

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
        from .dilled import SharedMainCPickler, SharedMainPickler  # imports dill: only if needed

        buffer = io.BytesIO()
        return _pickle_with(SharedMainCPickler(buffer), buffer, SharedMainPickler, obj)


def dumps_for_spawned(obj: Any, blobs: dict[Any, bytes] | None = None) -> bytes:
    """Pickle for a worker that did not inherit this process's ``__main__`` (spawn, forkserver).

    Where ``__main__`` cannot be imported by such a worker (a notebook, a REPL, ``python -c``),
    the classes and functions it defines travel by value (see :mod:`.dilled`), pickled
    once per ``blobs`` dict (one per run); else this is :func:`dumps`. Either way the C pickler
    does the work and dill only what it refuses.

    Examples:
        >>> import pickle
        >>> pickle.loads(dumps_for_spawned([1, "a"]))
        [1, 'a']
    """
    from .dilled import MainPickler, SpawnPickler, main_is_importable  # imports dill

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
        from .dilled import Dilled, dill_dumps

        blob = dill_dumps(dill_pickler, obj)
    return pickle.dumps(Dilled(blob), protocol=pickle.HIGHEST_PROTOCOL)


# -- a task's failure, across the boundary -------------------------------------------------------


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


def rebuild_failure(blob: bytes | None, type_name: str, message: str, tb: str) -> Failure:
    """The :class:`Failure` that :func:`dumps_exception` made ``blob`` of: its exception
    re-created, or a :class:`~parallel_jobs.errors.RemoteTaskError` keeping its type name,
    message and traceback text ``tb`` where it cannot be (``blob`` is None, or fails)."""
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


def dumps_exception(exc: BaseException) -> bytes | None:
    """``exc`` pickled without its traceback, as itself or, when it would not unpickle as
    itself, taken apart; None when it cannot be pickled at all."""
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
        blob = dumps_exception(self.exception)
        return (rebuild_failure, (blob, self.type_name, self.message, self.traceback))
