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
from typing import Any

from ..errors import SerializationError
from ..task import Batch, Chunk, Payload, dumps, dumps_for_spawned
from .base import chunk_failed

__all__ = ["chunk_pickler", "decode_batch", "encode_chunk", "pack_payload"]


def chunk_pickler(forked: bool) -> Callable[[Any], bytes]:
    """How to pickle the chunks of one run for workers that were forked from this process, or
    were not: those cannot look up what a notebook's ``__main__`` defines, so it is sent by
    value (pickled once per run)."""
    return dumps if forked else functools.partial(dumps_for_spawned, blobs={})


def encode_chunk(chunk: Chunk, pickler: Callable[[Any], bytes] = dumps) -> bytes:
    """Pickle ``chunk`` with ``pickler`` (see :func:`chunk_pickler`) for a worker; when it cannot
    be, name the task whose arguments fail."""
    try:
        return pickler(chunk)
    except Exception:
        pass
    for task in chunk.tasks():
        try:
            pickler(task)
        except Exception as exc:
            raise SerializationError(f"the arguments of task {task.index}", str(exc)) from exc
    raise SerializationError(f"the chunk of tasks {list(chunk.indices)}", "unknown reason")


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
    if isinstance(batch, SerializationError):
        # The worker could not unpickle the chunk or the payload: none of its tasks ran.
        return chunk_failed(chunk, dict.fromkeys(chunk.indices, batch), pid)
    assert isinstance(batch, Batch)
    return batch


def pack_payload(payload: Payload, shared: Any) -> bytes:
    """Pickle the payload once; on failure, say which part of it cannot be pickled."""
    try:
        blob: bytes = shared.dumps(payload)
        return blob
    except Exception as exc:
        failure = exc
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

