"""What crosses a process boundary, for every backend whose workers are other processes.

A chunk goes out pickled (the C pickler, dill for what it refuses); a batch, or the error that
stands for one, comes back; the payload is packed once, with large arrays moved to shared
memory. When something cannot be pickled, the error names what: the function, an argument, the
arguments of task 7, the result of task 3.
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Callable
from typing import Any, NoReturn

import attrs

from ..errors import InitializerError, SerializationError
from ..records import (
    Batch,
    Chunk,
    Failure,
    Own,
    Payload,
    Unloadable,
    atomic_values,
    dumps,
    dumps_for_spawned,
    is_immutable,
)
from .base import chunk_failed

__all__ = [
    "chunk_pickler",
    "decode_batch",
    "encode_chunk",
    "needs_copies",
    "pack_payload",
    "pack_per_task",
]


def chunk_pickler(forked: bool) -> Callable[[Any], bytes]:
    """How to pickle the chunks of one run for workers that were forked from this process, or
    were not: those cannot look up what a notebook's ``__main__`` defines, so it is sent by
    value (pickled once per run)."""
    return dumps if forked else functools.partial(dumps_for_spawned, blobs={})


def encode_chunk(chunk: Chunk, pickler: Callable[[Any], bytes] = dumps) -> bytes:
    """Pickle ``chunk`` with ``pickler`` (see :func:`chunk_pickler`) for a worker; when it cannot
    be, name the task whose arguments fail.

    Each task's values that could be shared with another task's (anything but numbers and
    strings) are pickled on their own, so that no two tasks are handed one object.
    """
    try:
        return pickler(_owned(chunk, pickler))
    except Exception:
        pass
    for task in chunk.tasks():
        try:
            pickler(task)
        except Exception as exc:
            raise SerializationError(f"the arguments of task {task.index}", str(exc)) from exc
    raise SerializationError(f"the chunk of tasks {list(chunk.indices)}", "unknown reason")


def _owned(chunk: Chunk, pickler: Callable[[Any], bytes]) -> Chunk:
    """``chunk`` with each task's values that could alias another task's in a pickle of its
    own; the chunk itself when all are numbers and strings (one C-speed pass)."""
    itervals = chunk.itervals
    if itervals is not None and (len(itervals) < 2 or atomic_values(itervals)
                                 or all(map(is_immutable, itervals))):
        itervals = None
    iterkwargs = chunk.iterkwargs
    if iterkwargs is not None and (len(iterkwargs) < 2 or all(
        _immutable_values(values) for values in iterkwargs
    )):
        iterkwargs = None
    if itervals is None and iterkwargs is None:
        return chunk
    if itervals is not None:
        itervals = [value if is_immutable(value) else Own(pickler(value)) for value in itervals]
    if iterkwargs is not None:
        iterkwargs = [Own(pickler(values)) for values in iterkwargs]  # type: ignore[misc]
    return Chunk(chunk.indices, itervals or chunk.itervals, iterkwargs or chunk.iterkwargs,
                 owned=True)


def _immutable_values(values: Any) -> bool:
    items = tuple(values.values())
    return atomic_values(items) or all(map(is_immutable, items))


def decode_batch(data: bytes, chunk: Chunk, pid: int) -> Batch:
    """Unpickle a worker's reply to ``chunk``: its batch, or a batch in which every task of the
    chunk failed with the reason (the reply could not be unpickled, or the worker could not
    unpickle what it was sent)."""
    try:
        batch = pickle.loads(data)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        errors: dict[int, BaseException] = {
            i: SerializationError(f"the result of task {i}", f"could not be unpickled: {reason}")
            for i in chunk.indices
        }
        return chunk_failed(chunk, errors, pid)
    if isinstance(batch, InitializerError):
        raise batch  # no task can run in that worker: the run stops, once
    if isinstance(batch, SerializationError):
        # The worker could not unpickle the chunk or the payload: none of its tasks ran.
        return chunk_failed(chunk, dict.fromkeys(chunk.indices, batch), pid)
    assert isinstance(batch, Batch)
    for pos, value in enumerate(batch.values):
        if type(value) is Unloadable:
            # This result alone could not be unpickled here: only its task fails.
            index = batch.indices[pos]
            error = SerializationError(
                f"the return value of task {index}", f"could not be unpickled: {value.reason}")
            batch.values[pos] = None
            batch.failures[pos] = Failure.capture(error)
    return batch


def pack_per_task(payload: Payload, shared: Any) -> Payload:
    """The payload as process workers get it: what a task could change (the shared arguments,
    and the function when it carries state) pickled once into ``blob``, from which each task
    unpickles its own copy; large arrays go to shared memory (``shared``), to be mapped
    copy-on-write by each task.

    Nothing is pickled when nothing shared could be changed (numbers, strings, plain
    functions): the tasks then share the objects, which is the same. ``globaldict`` is shared on
    purpose and stays out of the copies.

    Raises:
        SerializationError: naming the part that cannot be pickled.
    """
    if not needs_copies(payload):
        return payload
    kwargs = dict(payload.kwargs)
    on_purpose = {key: kwargs.pop(key) for key in _SHARED_ON_PURPOSE if key in kwargs}
    func = None if is_immutable(payload.func) else payload.func
    try:
        blob = shared.dumps((func, tuple(payload.args), kwargs))
    except Exception as exc:
        _name_the_culprit(payload, shared, exc)
    return attrs.evolve(payload, args=(), kwargs=on_purpose, blob=blob)


_SHARED_ON_PURPOSE = ("globaldict",)


def needs_copies(payload: Payload) -> bool:
    """Whether a task could change what tasks share, so that each needs its own copy."""
    shared = [value for key, value in payload.kwargs.items() if key not in _SHARED_ON_PURPOSE]
    return not (is_immutable(payload.func) and is_immutable(tuple(payload.args))
                and is_immutable(tuple(shared)))


def pack_payload(payload: Payload, shared: Any) -> bytes:
    """Pickle the payload once; on failure, say which part of it cannot be pickled."""
    try:
        blob: bytes = shared.dumps(payload)
        return blob
    except Exception as exc:
        _name_the_culprit(payload, shared, exc)


def _name_the_culprit(payload: Payload, shared: Any, failure: Exception) -> NoReturn:
    shared.close()
    for what, obj in (("the function", payload.func), ("args", payload.args)):
        try:
            shared.dumps(obj)
        except Exception as exc:
            raise SerializationError(what, f"{type(exc).__name__}: {exc}") from exc
        finally:
            shared.close()
    for key, value in payload.kwargs.items():
        try:
            shared.dumps(value)
        except Exception as exc:
            raise SerializationError(f"keyword argument {key!r}", str(exc)) from exc
        finally:
            shared.close()
    raise SerializationError("the shared arguments", str(failure)) from failure
