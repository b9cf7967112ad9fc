"""The parent's side of worker health: the options checked, crashes explained, logs replayed.

:func:`worker_options` validates the health options of a run (``initializer``,
``max_tasks_per_worker``, ``max_worker_memory``, ``task_memory_limit``,
``threads_per_worker``) into one :class:`~parallel_jobs.records.WorkerOptions`, which travels
with the run's payload; what a worker does with it is in :mod:`parallel_jobs.worker_health`.
:func:`crash_error` names why a worker died (its memory watchdog, or something else), and
:func:`replay_logs` hands the records that tasks logged in a worker to the caller's handlers.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from ..errors import MemoryLimitError, WorkerCrashedError
from ..protocol.messages import MEMORY
from ..records import WorkerOptions

__all__ = ["crash_error", "parse_bytes", "replay_logs", "worker_options"]


#: The methods whose workers are processes of our own pool: every option works there.
_POOLS = ("multiprocess", "multiprocessing")
#: What each other method supports, beyond ``threads_per_worker`` left to its default.
_SUPPORTED = {
    "concurrent.futures": {"initializer", "threads_per_worker"},
    "thread": {"initializer"},
    "serial": {"initializer"},
}


def worker_options(method: str, ncpus: int, cpus: int, *, initializer: Any, initargs: Any,
                   max_tasks_per_worker: Any, max_worker_memory: Any, task_memory_limit: Any,
                   threads_per_worker: Any) -> WorkerOptions | None:
    """Validate the health options of a run of ``method`` on ``ncpus`` of ``cpus`` CPUs;
    None when none is on (workers then run exactly as without this module).

    Raises:
        TypeError, ValueError: naming the option that is wrong, or that ``method`` cannot honour.
    """
    if initializer is not None and not callable(initializer):
        msg = f"initializer must be callable, not {type(initializer).__name__}"
        raise TypeError(msg)
    if initargs is None:
        initargs = ()
    elif not isinstance(initargs, (tuple, list)):
        msg = f"initargs must be a tuple or a list, not {type(initargs).__name__}"
        raise TypeError(msg)
    max_tasks = None
    if max_tasks_per_worker is not None:
        if (isinstance(max_tasks_per_worker, bool) or not isinstance(max_tasks_per_worker, int)
                or max_tasks_per_worker < 1):
            msg = f"max_tasks_per_worker must be a whole number >= 1, not {max_tasks_per_worker!r}"
            raise ValueError(msg)
        max_tasks = max_tasks_per_worker
    threads = _threads(threads_per_worker, ncpus, cpus)
    given = {
        "initializer": initializer is not None,
        "max_tasks_per_worker": max_tasks is not None,
        "max_worker_memory": max_worker_memory is not None,
        "task_memory_limit": task_memory_limit is not None,
        "threads_per_worker": threads_per_worker != "auto" and threads is not None,
    }
    if method not in _POOLS:
        supported = _SUPPORTED.get(method, set())
        for name, on in given.items():
            if on and name not in supported:
                msg = (
                    f"{name} is not supported by the {method!r} parallelizer (see "
                    "docs/arguments.md, 'Worker health'); use the default process pool"
                )
                raise ValueError(msg)
        if "threads_per_worker" not in supported:
            threads = None  # the default limit: only where workers are processes of their own
    forwards_logs = method in _POOLS
    options = WorkerOptions(
        log_level=logging.getLogger().getEffectiveLevel() if forwards_logs else None,
        initializer=initializer,
        initargs=tuple(initargs),
        max_tasks=max_tasks,
        max_memory=parse_bytes(max_worker_memory, "max_worker_memory"),
        task_memory_limit=parse_bytes(task_memory_limit, "task_memory_limit"),
        threads=threads,
    )
    return None if options == WorkerOptions() else options


def _threads(value: Any, ncpus: int, cpus: int) -> int | None:
    """The thread limit of each worker: ``cpus // ncpus`` (at least 1) for 'auto'."""
    if value is None:
        return None
    if isinstance(value, str) and value == "auto":
        return max(1, cpus // max(1, ncpus))
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        msg = f"threads_per_worker must be 'auto', None or a whole number >= 1, not {value!r}"
        raise ValueError(msg)
    return value


_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?)?b?\s*", re.IGNORECASE)


def parse_bytes(value: Any, name: str) -> int | None:
    """``value`` as a number of bytes: an integer, or a string such as ``"2 GB"`` or
    ``"512MiB"``; None stays None.

    Examples:
        >>> parse_bytes("2 GB", "x"), parse_bytes("1.5KiB", "x"), parse_bytes(7, "x")
        (2000000000, 1536, 7)
    """
    if value is None:
        return None
    if isinstance(value, str):
        match = _SIZE.fullmatch(value)
        if match is None:
            msg = f"{name} must be a number of bytes or a size such as '2 GB', not {value!r}"
            raise ValueError(msg)
        amount = float(match.group(1)) * _UNITS[(match.group(2) or "").lower()]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        amount = float(value)
    else:
        msg = f"{name} must be a number of bytes or a size such as '2 GB', not {value!r}"
        raise TypeError(msg)
    if not amount > 0 or amount == float("inf"):
        msg = f"{name} must be a positive, finite number of bytes, not {value!r}"
        raise ValueError(msg)
    return int(amount)


def crash_error(index: int, exitcode: int | None, slot: Any,
                limit: int | None) -> WorkerCrashedError:
    """The error of task ``index`` whose worker died: a MemoryLimitError when the worker's
    watchdog killed it, else a WorkerCrashedError."""
    if limit is not None and len(slot) > MEMORY and slot[MEMORY] > 0:
        return MemoryLimitError(index, exitcode, int(slot[MEMORY]), limit)
    return WorkerCrashedError(index, exitcode)


def replay_logs(records: Sequence[logging.LogRecord]) -> None:
    """In the caller: hand the records a worker kept to the caller's own loggers, as if the
    tasks had logged here (each logger's level and filters apply)."""
    for record in records:
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)
