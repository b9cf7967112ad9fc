"""Large NumPy arrays that all tasks share travel through shared memory, once.

When the payload (function and common arguments) must be pickled for workers that do not
inherit it (spawn, forkserver, ``concurrent.futures``), every NumPy array of at least
``MIN_SHARED_BYTES`` inside it is copied once into a file in ``/dev/shm``; the pickle carries
only its name, shape and dtype, and each worker maps the file read-only, so an array of 200 MB
costs one copy, not one per worker or per task.

The parent owns every segment: :class:`SharedArrays` creates them and ``close()`` unlinks them,
which the Runner calls after success, failure and Ctrl-C alike; an ``atexit`` hook catches the
rest. Where ``/dev/shm`` does not exist, arrays are pickled like any other object.
"""

from __future__ import annotations

import atexit
import io
import mmap
import os
import pickle
import secrets
import sys
from typing import Any

import dill

__all__ = ["MIN_SHARED_BYTES", "SHM_DIR", "SHM_PREFIX", "SharedArrays", "loads_payload"]

MIN_SHARED_BYTES = 1 << 20
SHM_DIR = "/dev/shm"
SHM_PREFIX = "parallel_jobs_"
_LIVE: set[str] = set()


def _cleanup_at_exit() -> None:
    for path in list(_LIVE):
        try:
            os.unlink(path)
        except OSError:
            pass
        _LIVE.discard(path)


atexit.register(_cleanup_at_exit)


def shm_available() -> bool:
    """Whether arrays can be shared through ``/dev/shm`` on this platform."""
    return sys.platform.startswith("linux") and os.path.isdir(SHM_DIR)


class _SharingPickler(dill.Pickler):
    def __init__(self, file: io.BytesIO, owner: SharedArrays) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
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
    """Owns the shared-memory segments of one run.

    Examples:
        >>> owner = SharedArrays()
        >>> blob = owner.dumps({"x": 1})
        >>> loads_payload(blob)
        {'x': 1}
        >>> owner.close()
    """

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.enabled = shm_available()

    def put(self, array: Any) -> tuple[str, str, tuple[int, ...], Any] | None:
        """Copy ``array`` into a new segment and return its persistent id (None to pickle it)."""
        if not self.enabled:
            return None
        import numpy as np

        path = os.path.join(SHM_DIR, f"{SHM_PREFIX}{os.getpid()}_{secrets.token_hex(6)}")
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        _LIVE.add(path)
        self.paths.append(path)
        try:
            if array.flags.c_contiguous:
                # write() fills tmpfs pages in bulk: twice as fast as faulting in a mapping.
                _write_all(fd, memoryview(array.reshape(-1).view(np.uint8)))
            elif array.nbytes:
                os.ftruncate(fd, array.nbytes)
                with mmap.mmap(fd, array.nbytes) as mm:
                    target = np.frombuffer(mm, dtype=array.dtype).reshape(array.shape)
                    target[...] = array
                    del target
        finally:
            os.close(fd)
        # The dtype itself, not its string: a structured dtype's string drops its fields.
        return ("parallel_jobs.shm", path, tuple(array.shape), array.dtype)

    def dumps(self, obj: Any) -> bytes:
        """Pickle ``obj`` with dill, moving large arrays into shared memory."""
        buffer = io.BytesIO()
        _SharingPickler(buffer, self).dump(obj)
        return buffer.getvalue()

    def close(self) -> None:
        """Unlink every segment this owner created. Safe to call more than once."""
        for path in self.paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            _LIVE.discard(path)
        self.paths.clear()


def loads_payload(blob: bytes) -> Any:
    """Unpickle what :meth:`SharedArrays.dumps` made; shared arrays arrive as read-only views."""
    return _SharingUnpickler(io.BytesIO(blob)).load()
