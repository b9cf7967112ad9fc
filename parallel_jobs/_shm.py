"""Large NumPy arrays that all tasks share travel through shared memory, once.

When the payload (function and common arguments) must be pickled for workers that do not
inherit it (spawn, forkserver, ``concurrent.futures``), every NumPy array of at least
``MIN_SHARED_BYTES`` inside it is copied once into an anonymous shared-memory file
(``memfd_create``); the pickle carries only the way to open it (``/proc/<parent>/fd/<n>``),
its shape and its dtype, and each worker maps it read-only, so an array of 200 MB costs one
copy, not one per worker or per task.

The file has no name anywhere: the kernel frees its memory once the parent has closed it
(:meth:`SharedArrays.close`, which the backends call however the run ends) and the workers have
unmapped it, and when the parent dies it closes by itself, so not even a parent killed with
SIGKILL leaves memory behind. Where memfd or ``/proc`` does not exist, arrays are pickled like
any other object.
"""

from __future__ import annotations

import io
import mmap
import os
import pickle
import sys
from typing import Any

import dill

from ._main_pickling import MainPickler

__all__ = ["MIN_SHARED_BYTES", "SEGMENT_NAME", "SharedArrays", "loads_payload"]

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


def _dumpable() -> bool:
    from .worker import _prctl

    return _prctl is None or _prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0) == 1


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


class _SharingUnpickler(dill.Unpickler):
    def persistent_load(self, pid: Any) -> Any:
        tag, path, shape, dtype = pid
        if tag != "parallel_jobs.shm":
            raise pickle.UnpicklingError(f"unknown persistent id {tag!r}")
        import numpy as np

        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            buffer = mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ) if size else b""
        return np.frombuffer(buffer, dtype=np.dtype(dtype)).reshape(shape)


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

    def __init__(self) -> None:
        self.fds: list[int] = []
        self.enabled = shm_available()

    def put(self, array: Any) -> tuple[str, str, tuple[int, ...], Any] | None:
        """Copy ``array`` into a new segment and return its persistent id (None to pickle it)."""
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


def loads_payload(blob: bytes) -> Any:
    """Unpickle what :meth:`SharedArrays.dumps` made; shared arrays arrive as read-only views."""
    return _SharingUnpickler(io.BytesIO(blob)).load()
