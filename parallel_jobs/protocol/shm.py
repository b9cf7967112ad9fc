"""Large NumPy arrays that all tasks share travel through shared memory, once.

When a process backend packs what its tasks share (:func:`.messages.pack_per_task`), every
NumPy array of at least ``MIN_SHARED_BYTES`` inside it is copied once into an anonymous
shared-memory file (``memfd_create``); the pickle carries only the way to open it
(``/proc/<parent>/fd/<n>``), its shape and its dtype. Each task that unpickles it gets a
private copy-on-write mapping of that file (``MAP_PRIVATE``): the array is writable, a task's
writes are its own and cost only the pages it writes, and the next task sees the pristine data,
as it would with sciris' pickled copies, without copying 200 MB per task or per worker.

The file has no name anywhere: the kernel frees its memory once the parent has closed it
(:meth:`SharedArrays.close`, which the backends call however the run ends) and the workers have
closed and unmapped it, and when the parent dies it closes by itself, so not even a parent
killed with SIGKILL leaves memory behind. Where memfd or ``/proc`` does not exist, arrays are
pickled like any other object (and each task unpickles its own copy).
"""

from __future__ import annotations

import ctypes
import io
import mmap
import os
import pickle
import sys
from typing import Any

import dill

from .dilled import MainPickler

__all__ = [
    "MIN_SHARED_BYTES",
    "SEGMENT_NAME",
    "SharedArrays",
    "can_watch_writes",
    "forget_segments",
    "inherited_written",
    "keep_segments_open",
    "loads_payload",
]

MIN_SHARED_BYTES = 1 << 20
SEGMENT_NAME = "parallel_jobs"
"""The name a segment shows in ``/proc/<pid>/fd`` (as ``/memfd:parallel_jobs (deleted)``)."""


def shm_available() -> bool:
    """Whether arrays can be shared through anonymous shared memory here: Linux, with memfd and
    ``/proc``, in a process whose descriptors its workers may open (a process that made itself
    non-dumpable forbids that, and then arrays are pickled instead)."""
    return (sys.platform.startswith("linux") and hasattr(os, "memfd_create")
            and os.path.isdir("/proc/self/fd") and _dumpable())


_PR_GET_DUMPABLE = 3


def _find_prctl() -> Any:
    """libc's ``prctl``, or None off Linux or where libc has none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _find_prctl()


def _dumpable() -> bool:
    return _PRCTL is None or _PRCTL(_PR_GET_DUMPABLE, 0, 0, 0, 0) == 1


class _SharingPickler(MainPickler):
    # A MainPickler: the workers that unpickle the payload may not have the caller's __main__.
    def __init__(self, file: io.BytesIO, owner: SharedArrays) -> None:
        super().__init__(file)
        self._owner = owner

    def persistent_id(self, obj: Any) -> Any:
        np = sys.modules.get("numpy")
        if np is None or type(obj) is not np.ndarray or obj.dtype.hasobject:
            return None
        if obj.nbytes < MIN_SHARED_BYTES:
            return None
        return self._owner.put(obj)


_SEGMENTS: dict[str, tuple[int, int]] | None = None
"""The segments a worker process has opened: path -> (descriptor, size), kept open for its run
so that each task maps them without opening ``/proc`` again (see :func:`keep_segments_open`).
None elsewhere: a process that unpickles a payload now and then opens and closes each time."""


def keep_segments_open() -> None:
    """Keep the segments this process opens until :func:`forget_segments` (worker processes,
    which unpickle the shared arguments once per task)."""
    global _SEGMENTS
    if _SEGMENTS is None:
        _SEGMENTS = {}


def forget_segments() -> None:
    """Close the segments this process kept open (a kept worker, once its run has ended: the
    parent may reuse the same descriptor numbers for the next run's segments)."""
    for fd, _ in (_SEGMENTS or {}).values():
        try:
            os.close(fd)
        except OSError:
            pass
    if _SEGMENTS is not None:
        _SEGMENTS.clear()


def _map_private(path: str) -> Any:
    """A private, writable, copy-on-write mapping of the segment at ``path``."""
    opened = None if _SEGMENTS is None else _SEGMENTS.get(path)
    if opened is None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        opened = (fd, os.fstat(fd).st_size)
        if _SEGMENTS is not None:
            _SEGMENTS[path] = opened
    fd, size = opened
    try:
        return mmap.mmap(fd, size, access=mmap.ACCESS_COPY) if size else bytearray()
    finally:
        if _SEGMENTS is None:
            os.close(fd)


class _SharingUnpickler(dill.Unpickler):
    def persistent_load(self, pid: Any) -> Any:
        if pid[0] == _INHERITED_TAG:
            return _inherited_view(pid[1])
        tag, path, shape, dtype = pid
        if tag != "parallel_jobs.shm":
            raise pickle.UnpicklingError(f"unknown persistent id {tag!r}")
        import numpy as np

        # Private copy-on-write: the task may write to its array, and only it sees the writes.
        return np.frombuffer(_map_private(path), dtype=np.dtype(dtype)).reshape(shape)


# -- arrays a forked worker inherits ---------------------------------------------------------------
#
# A forked worker already holds a copy-on-write image of the parent's arrays: copying them into
# a segment would cost the parent a pass over every byte (a 200 MB array: 60 ms) for nothing.
# But an inherited array is one object for all the tasks a worker runs, so a task's writes
# would reach the next one. Each task gets its own view of it instead, and after each task the
# worker asks the kernel (/proc/self/pagemap) whether any of the array's pages is now its own,
# which is what a write to a copy-on-write page makes it. A worker whose task wrote retires,
# and the next task goes to a fresh fork, which sees the pristine pages again.

_INHERITED_TAG = "parallel_jobs.inherited"
_INHERITED: list[Any] = []
"""The arrays of the current run that forked workers inherit, by index (None once released)."""
_WATCHED: dict[int, tuple[int, int]] = {}
"""Inherited arrays handed to a task in this process: index -> (first page, page count)."""
_PAGEMAP: list[Any] = [None, 0]  # [descriptor of this process's pagemap, the pid that opened it]
_EXCLUSIVE = 1 << 56
"""pagemap's "page exclusively mapped" bit: set once this process has its own copy of a page."""


def _inherited_view(index: int) -> Any:
    base = _INHERITED[index]
    if index not in _WATCHED:
        import numpy as np

        bounds = getattr(np.lib, "array_utils", np).byte_bounds  # NumPy 2 moved it
        low, high = bounds(base)
        page = mmap.PAGESIZE
        _WATCHED[index] = (low // page, (high + page - 1) // page - low // page)
    return base.view()


def inherited_written() -> bool:
    """Whether a task of this process wrote to an inherited array since this process was
    forked (so that the next task would see its writes)."""
    if not _WATCHED:
        return False
    import numpy as np

    if _PAGEMAP[1] != os.getpid():
        _PAGEMAP[:] = [os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC), os.getpid()]
    for first, count in _WATCHED.values():
        entries = np.frombuffer(os.pread(_PAGEMAP[0], count * 8, first * 8), dtype=np.uint64)
        if (entries & np.uint64(_EXCLUSIVE)).any():
            return True
    return False


def can_watch_writes() -> bool:
    """Whether this platform tells a forked process which pages it has written (Linux)."""
    try:
        fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def _write_all(fd: int, data: memoryview) -> None:
    written = 0
    while written < len(data):
        written += os.write(fd, data[written : written + (1 << 26)])


class SharedArrays:
    """Owns the shared-memory segments of one run: an open file descriptor each.

    Examples:
        >>> owner = SharedArrays()
        >>> blob = owner.dumps({"x": 1})
        >>> loads_payload(blob)
        {'x': 1}
        >>> owner.close()
    """

    def __init__(self, enabled: bool | None = None, inherit: bool = False) -> None:
        self.fds: list[int] = []
        # Off for workers on other machines (dask), which cannot open this process's files.
        self.enabled = shm_available() if enabled is None else enabled
        # For workers forked after the payload is packed: they inherit the arrays themselves.
        self.inherit = inherit and can_watch_writes()
        self.inherited: list[int] = []

    def put(self, array: Any) -> tuple[Any, ...] | None:
        """Copy ``array`` into a new segment (or register it for forked workers to inherit)
        and return its persistent id (None to pickle it)."""
        if self.inherit and array.flags.writeable:
            self.inherited.append(len(_INHERITED))
            _INHERITED.append(array)
            return (_INHERITED_TAG, self.inherited[-1])
        if not self.enabled:
            return None
        import numpy as np

        # Close-on-exec: a spawned worker opens the segment through /proc, as any reader does.
        fd = os.memfd_create(SEGMENT_NAME, os.MFD_CLOEXEC)
        self.fds.append(fd)
        if array.flags.c_contiguous:
            # write() fills the pages in bulk: twice as fast as faulting in a mapping.
            _write_all(fd, memoryview(array.reshape(-1).view(np.uint8)))
        elif array.nbytes:
            os.ftruncate(fd, array.nbytes)
            with mmap.mmap(fd, array.nbytes) as mm:
                target = np.frombuffer(mm, dtype=array.dtype).reshape(array.shape)
                target[...] = array
                del target
        # The dtype itself, not its string: a structured dtype's string drops its fields.
        return ("parallel_jobs.shm", f"/proc/{os.getpid()}/fd/{fd}", tuple(array.shape),
                array.dtype)

    def dumps(self, obj: Any) -> bytes:
        """Pickle ``obj`` with dill, moving large arrays into shared memory."""
        buffer = io.BytesIO()
        _SharingPickler(buffer, self).dump(obj)
        return buffer.getvalue()

    def close(self) -> None:
        """Let go of every segment (freed once no worker maps it). Safe to call twice."""
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()
        for index in self.inherited:
            _INHERITED[index] = None
        self.inherited.clear()
        while _INHERITED and _INHERITED[-1] is None:
            _INHERITED.pop()


def loads_payload(blob: bytes) -> Any:
    """Unpickle what :meth:`SharedArrays.dumps` made; shared arrays arrive as private,
    writable copy-on-write views of their segments."""
    return _SharingUnpickler(io.BytesIO(blob)).load()
