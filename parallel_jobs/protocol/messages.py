"""The messages between the parent and a worker process, for every backend whose workers are
other processes.

The parent sends a run's payload once (packed: :func:`pack_per_task`, :func:`pack_payload`),
preceded for a worker it did not fork by the :data:`WORLD` it runs in (:func:`world`); then
chunks (:func:`encode_chunk`); then :data:`RELEASE` to end a run while keeping the worker, or
:data:`EXIT` to end the worker. The worker answers each chunk with a batch
(:func:`encode_batch`), or with the error that stands for every task of it (it could not
unpickle what it was sent, or its initializer failed); the parent reads either with
:func:`decode_batch`. When something cannot be pickled, the error names what: the function, an
argument, the arguments of task 7, the result of task 3.

Both sides import this module; it imports no part of the parent side.
"""

from __future__ import annotations

import functools
import os
import pickle
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import attrs

from ..errors import InitializerError, SerializationError
from ..records import Batch, Chunk, Payload
from .pickling import (
    Failure,
    Own,
    Unloadable,
    atomic_values,
    dumps,
    dumps_for_spawned,
    is_immutable,
    own,
)

__all__ = [
    "EXIT",
    "IDLE",
    "INDEX",
    "MEMORY",
    "RELEASE",
    "STARTED",
    "STOP",
    "WORLD",
    "chunk_pickler",
    "decode_batch",
    "encode_batch",
    "encode_chunk",
    "needs_copies",
    "pack_payload",
    "pack_per_task",
    "take_world",
    "unpickling_error",
    "world",
]

#: Where in a worker's slot (a small array shared with the parent, see ``worker.run_chunk``)
#: each value lives: the running task, when it started (``IDLE`` between tasks), whether the
#: parent asked to start no further task, and the RSS that broke ``task_memory_limit``
#: (written by the worker's watchdog, see ``worker_health``).
INDEX, STARTED, STOP, MEMORY = 0, 1, 2, 3

IDLE = 0.0
"""The value of a worker's ``slot[STARTED]`` while no task is running."""

EXIT = pickle.dumps(None)
"""Told to a worker to end: it exits once it has read this, in place of a payload or a chunk
(the pickle of None, which no payload or chunk is: the worker compares the bytes before it
unpickles anything)."""

RELEASE = b"parallel_jobs.release"
"""Told to a worker whose run has ended but which the parent keeps for its next run: drop the
payload (and with it any shared-memory mapping), then wait for the next one."""

WORLD = b"parallel_jobs.world:"
"""Prefixes the message that precedes each run's payload to a spawned or forkserver worker: the
pickled working directory, environment variables and ``sys.path`` of the parent at the start of
that run, which the worker takes on before it unpickles anything (see :func:`take_world`)."""


def world() -> bytes:
    """The :data:`WORLD` message for a run starting now in this process."""
    return WORLD + pickle.dumps((os.getcwd(), dict(os.environ), list(sys.path)))


def take_world(message: bytes) -> None:
    """Take on the working directory, environment and ``sys.path`` that ``message`` carries, so
    that a worker kept from an earlier run sees what a freshly started one would."""
    cwd, environ, path = pickle.loads(message[len(WORLD):])
    if os.getcwd() != cwd:
        os.chdir(cwd)
    if dict(os.environ) != environ:
        os.environ.clear()
        os.environ.update(environ)
    if sys.path != path:
        sys.path[:] = path


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


def encode_batch(batch: Batch) -> bytes:
    """Pickle ``batch``; a return value that cannot be pickled fails its own task only.

    Results that could be one object (anything but numbers and strings) are pickled one by
    one, so that two tasks returning the same object give the caller two objects, as with
    sciris' pickling per task, and a result the parent cannot unpickle fails only its task.
    """
    values = batch.values
    one_by_one = len(values) > 1 and not atomic_values(values)
    if not one_by_one:
        try:
            return dumps(batch)
        except Exception:
            pass
    for pos, value in enumerate(values):
        try:
            if one_by_one:
                values[pos] = own(value)
            else:
                dumps(value)  # which of them cannot be pickled?
        except Exception as error:
            index = batch.indices[pos]
            what = f"the return value of task {index} ({type(value).__qualname__})"
            failure = SerializationError(what, f"{type(error).__name__}: {error}")
            values[pos] = None
            batch.failures[pos] = Failure.capture(failure)
    return dumps(batch)


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
        return Batch.failed(chunk.indices, errors, pid)
    if isinstance(batch, InitializerError):
        raise batch  # no task can run in that worker: the run stops, once
    if isinstance(batch, SerializationError):
        # The worker could not unpickle the chunk or the payload: none of its tasks ran.
        return Batch.failed(chunk.indices, dict.fromkeys(chunk.indices, batch), pid)
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
    functions): the tasks then share the objects, which is the same. What tasks share on
    purpose (``globaldict``, see :data:`~parallel_jobs.records.SHARED_ON_PURPOSE`) stays out of
    the copies.

    Raises:
        SerializationError: naming the part that cannot be pickled.
    """
    if not needs_copies(payload):
        return payload
    func = None if is_immutable(payload.func) else payload.func
    try:
        blob = shared.dumps((func, tuple(payload.args), payload.inputs))
    except Exception as exc:
        _name_the_culprit(payload, shared, exc)
    return attrs.evolve(payload, args=(), kwargs=payload.on_purpose, blob=blob)


def needs_copies(payload: Payload) -> bool:
    """Whether a task could change what tasks share, so that each needs its own copy."""
    return not (is_immutable(payload.func) and is_immutable(tuple(payload.args))
                and is_immutable(tuple(payload.inputs.values())))


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


def unpickling_error(what: str, exc: Exception | str) -> SerializationError:
    """The error that stands for ``what``, which the worker could not unpickle."""
    if isinstance(exc, Exception):
        exc = f"{type(exc).__name__}: {exc}"
    return SerializationError(what, f"pickled, but unpickling in the worker failed: {exc}")

