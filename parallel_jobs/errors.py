"""The exception hierarchy of parallel_jobs.

Every error the library raises derives from :class:`ParallelJobsError` and also from the builtin
that best describes it, so callers may catch either. Every class here pickles and unpickles
unchanged, because errors cross process boundaries.

This module owns the classes only; deciding *when* a task has failed is the Runner's job.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable
from typing import Any, ClassVar

__all__ = [
    "CallerInterrupt",
    "CheckpointError",
    "ExceptionCollector",
    "InitializerError",
    "MemoryLimitError",
    "ParallelJobsError",
    "RemoteTaskError",
    "RemoteTraceback",
    "SerializationError",
    "TaskTimeoutError",
    "UnknownParallelizerError",
    "WorkerCrashedError",
    "annotate",
    "attach_remote_traceback",
    "exception_text",
]


class ParallelJobsError(Exception):
    """Base class of every error raised by parallel_jobs itself."""

    #: The attributes that a subclass's constructor takes, in its order. Pickling hands them
    #: back to the constructor, which builds the message from them: ``args`` alone would not
    #: rebuild a subclass whose constructor takes other arguments than it passes on.
    fields: ClassVar[tuple[str, ...]] = ()

    def __reduce__(self) -> str | tuple[Any, ...]:
        if not self.fields:
            return super().__reduce__()
        return (type(self), tuple(getattr(self, name) for name in self.fields))


class UnknownParallelizerError(ParallelJobsError, KeyError):
    """The ``parallelizer`` argument names no known backend."""

    fields = ("name", "valid")

    def __init__(self, name: object, valid: Iterable[str]) -> None:
        self.name = name
        self.valid = tuple(valid)
        super().__init__(name, self.valid)

    def __str__(self) -> str:
        # KeyError.__str__ would repr() a lone argument; say something readable instead.
        names = ", ".join(repr(v) for v in self.valid)
        return f"unknown parallelizer {self.name!r}: must be a map-like callable or one of {names}"



_LIKELY_CAUSE = {
    "SIGSEGV": "a segmentation fault, usually a bug in a C extension or a stack overflow",
    "SIGBUS": "a bus error, usually a bad memory access in a C extension",
    "SIGABRT": "an abort, usually a failed assertion in a C library",
    "SIGFPE": "a floating-point exception in native code",
    "SIGILL": "an illegal instruction in native code",
    "SIGKILL": "SIGKILL, most often the out-of-memory killer (check `dmesg`) or a user",
    "SIGTERM": "SIGTERM, sent by a user, a job scheduler or the OS",
}


def signal_name(number: int) -> str:
    """Return ``'SIGSEGV'`` for 11, or ``'signal N'`` for a number this platform does not name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class WorkerCrashedError(ParallelJobsError, RuntimeError):
    """The worker process running a task died before the task finished.

    Attributes:
        index: the index of the task that was running, or None when no task was.
        exitcode: the worker's exit status as ``multiprocessing`` reports it (minus the signal
            number when a signal killed it), or None when the backend cannot tell.
        signal: the name of the signal that killed the worker (``'SIGKILL'``), or None.
        detail: what the backend adds about the crash, or ``""``.
        task: the task's own values, shortened (``"(5, 'a')"``), or ``""`` when not known.
    """

    fields: ClassVar[tuple[str, ...]] = ("index", "exitcode", "detail", "task")

    def __init__(self, index: int | None, exitcode: int | None, detail: str = "",
                 task: str = "") -> None:
        self.index = index
        self.exitcode = exitcode
        self.signal = signal_name(-exitcode) if exitcode is not None and exitcode < 0 else None
        self.detail = detail
        self.task = task
        super().__init__(index, exitcode, detail, task)

    def __str__(self) -> str:
        where = _task_words(self.index, self.task)
        if self.signal is not None:
            cause = _LIKELY_CAUSE.get(self.signal, f"signal {self.signal}")
            how = f"was killed by {self.signal} (exit code {self.exitcode}): likely {cause}"
        elif self.exitcode is None:
            how = "vanished without an exit code"
        else:
            how = (
                f"exited with code {self.exitcode}: the task, or code it called, "
                "ended the process (os._exit, sys.exit in a C extension, or a fatal error)"
            )
        hint = (
            " To see where it died, run with serial=True, or enable faulthandler in the task "
            "(`import faulthandler; faulthandler.enable()`)."
        )
        extra = f" {self.detail}" if self.detail else ""
        return f"the worker process running {where} {how}.{extra}{hint}"



class MemoryLimitError(WorkerCrashedError):
    """A task took its worker's memory past ``task_memory_limit`` and was killed at once.

    Attributes:
        peak: the worker's resident memory, in bytes, when the limit was seen broken.
        limit: the ``task_memory_limit`` in bytes.
    """

    fields = ("index", "exitcode", "peak", "limit", "task")

    def __init__(self, index: int | None, exitcode: int | None, peak: int, limit: int,
                 task: str = "") -> None:
        self.peak = peak
        self.limit = limit
        super().__init__(index, exitcode, "", task)
        self.args = (index, exitcode, peak, limit, task)

    def __str__(self) -> str:
        where = _task_words(self.index, self.task)
        return (
            f"{where} took its worker's memory to {_megabytes(self.peak)}, past "
            f"task_memory_limit={_megabytes(self.limit)}: the worker was killed and replaced"
        )



class InitializerError(ParallelJobsError, RuntimeError):
    """The ``initializer`` failed in a worker: no task can run there, so the run stops.

    Attributes:
        pid: the process id of the worker (0 for a thread or the caller's own process).
        error: the initializer's exception, as ``'Type: message'``.
        traceback: the initializer's traceback, formatted where it failed.
    """

    fields = ("pid", "error", "traceback")

    def __init__(self, pid: int, error: str, traceback: str = "") -> None:
        self.pid = pid
        self.error = error
        self.traceback = traceback
        super().__init__(pid, error, traceback)

    def __str__(self) -> str:
        where = f"worker process {self.pid}" if self.pid else "the worker"
        detail = f"\n{self.traceback.rstrip()}" if self.traceback else ""
        return f"the initializer failed in {where}, so no task could run: {self.error}{detail}"



def _megabytes(count: int) -> str:
    return f"{count / 1e6:.0f} MB"


def _task_words(index: int | None, task: str) -> str:
    """``'task 3 (5, 'a')'``: the task's index and, when known, its values."""
    if index is None:
        return "a task"
    return f"task {index} {task}" if task else f"task {index}"


class TaskTimeoutError(ParallelJobsError, TimeoutError):
    """A task ran for longer than the ``timeout`` it was given.

    Attributes:
        index: the index of the task.
        timeout: the limit in seconds that it overran.
        stopped: whether its worker could be stopped (threads cannot be).
        task: the task's own values, shortened (``"(5, 'a')"``), or ``""`` when not known.
    """

    fields = ("index", "timeout", "stopped", "task")

    def __init__(self, index: int, timeout: float, stopped: bool = True, task: str = "") -> None:
        self.index = index
        self.timeout = timeout
        self.stopped = stopped
        self.task = task
        super().__init__(index, timeout, stopped, task)

    def __str__(self) -> str:
        where = _task_words(self.index, self.task)
        msg = f"{where} ran for longer than its timeout of {self.timeout:g} s"
        if self.stopped:
            # Not "and replaced": when this error ends the run, nothing replaces the worker.
            return f"{msg}; its worker was stopped"
        return (
            f"{msg}; this backend cannot stop a running task, so it was abandoned and may still "
            "be running in the background (use the default process backend to have it stopped)"
        )



class SerializationError(ParallelJobsError, TypeError):
    """Something could not be pickled to cross a process boundary, or deep-copied for a
    '-copy' parallelizer (copying uses the same protocol as pickling).

    Attributes:
        what: which object failed ("the function", "the return value of task 3", ...).
        reason: the error that pickling or copying it raised.
        action: what could not be done with it.
    """

    fields = ("what", "reason", "action")

    def __init__(self, what: str, reason: str,
                 action: str = "pickled to send between processes") -> None:
        self.what = what
        self.reason = reason
        self.action = action
        super().__init__(what, reason, action)

    def __str__(self) -> str:
        return f"{self.what} cannot be {self.action}: {self.reason}"



class RemoteTaskError(ParallelJobsError):
    """A task raised an exception that could not be sent back as itself.

    The original class could not be pickled or re-created in the parent, so this error stands in
    for it and keeps what can be kept.

    Attributes:
        type_name: the qualified name of the original exception's class.
        message: ``str()`` of the original exception.
        traceback: the worker's formatted traceback.
    """

    fields = ("type_name", "message", "traceback")

    def __init__(self, type_name: str, message: str, traceback: str) -> None:
        self.type_name = type_name
        self.message = message
        self.traceback = traceback
        super().__init__(type_name, message, traceback)

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}"



class RemoteTraceback(Exception):
    """Carries a worker's traceback text; set as the ``__cause__`` of a task's exception that
    crossed back from another process."""

    def __init__(self, text: str) -> None:
        self.text = text
        super().__init__(text)

    def __str__(self) -> str:
        return self.text


class CallerInterrupt(KeyboardInterrupt):
    """The caller's own Ctrl-C (or SIGTERM), raised inside a task that runs in the caller's
    thread ('serial'). It stops the run; a KeyboardInterrupt the task raises itself does not,
    and fails that task only."""


def exception_text(exception: BaseException) -> str:
    """``str(exception)``, or a stand-in when its ``__str__`` raises: a broken ``__str__`` in a
    task's exception class must not break the run that records it."""
    try:
        return str(exception)
    except Exception as error:
        return f"<str() of {type(exception).__qualname__} failed: {type(error).__name__}>"


def attach_remote_traceback(exception: BaseException, index: int, traceback: str) -> None:
    """Set the worker's ``traceback`` as the cause of ``exception``, task ``index``'s failure,
    when it crossed back from another process (it then has no traceback of its own)."""
    if exception.__cause__ is None and exception.__traceback__ is None and traceback:
        exception.__cause__ = RemoteTraceback(
            f"\n\nTask {index} raised this in its worker:\n\n{traceback}"
        )
class CheckpointError(ParallelJobsError, OSError):
    """A checkpoint file cannot be used: another run holds it, it is not a checkpoint, it was
    made for another function, or it cannot be read. The file is left as it was.

    Attributes:
        path: the checkpoint file.
        reason: what is wrong with it.
    """

    fields = ("path", "reason")

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        # One argument: OSError reads two as (errno, strerror).
        super().__init__(f"checkpoint {path!r}: {reason}")

    def __str__(self) -> str:
        return f"checkpoint {self.path!r}: {self.reason}"



class ExceptionCollector:
    """Decides what a task's final failure means for the run.

    With ``die=True`` the first failure ends the run: :meth:`add` raises it, as the task's own
    exception type, with a note naming the task and its values. With ``die=False`` failures
    are only counted.
    """

    def __init__(self, die: bool) -> None:
        self.die = die
        self.count = 0

    def add(self, index: int, exception: BaseException, task: str) -> None:
        """Record the final failure of task ``index``, whose values read ``task``; raise it if
        the run must stop."""
        self.count += 1
        if self.die:
            raise annotate(exception, index, task)


def annotate(exception: BaseException, index: int, task: str = "") -> BaseException:
    """Add a note naming task ``index`` (and its values, ``task``) to ``exception``; return it."""
    where = f"task {index} {task}" if task else f"task {index}"
    note = f"parallel_jobs: raised by {where}; pass die=False to run every task regardless"
    notes = getattr(exception, "__notes__", None)
    if notes is not None and note in notes:
        return exception
    if hasattr(exception, "add_note"):
        exception.add_note(note)
    else:
        # Python 3.10 has no add_note; the attribute is what 3.11 and the exceptiongroup
        # backport read (and print), and what a caller can inspect either way.
        try:
            exception.__notes__ = [*(notes or ()), note]  # type: ignore[attr-defined]
        except (AttributeError, TypeError):
            pass
    return exception
