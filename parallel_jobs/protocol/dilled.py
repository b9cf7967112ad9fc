"""Pickling what a notebook's ``__main__`` defines, for workers whose ``__main__`` is another.

A notebook, a REPL, ``python -c`` run in a ``__main__`` that has neither a file nor a module
name, so a spawned or fork-server worker cannot re-create it: the standard pickler, which sends a
function or a class as its name in ``__main__``, fails there. So such a function travels by value
together with the globals it uses (dill's ``recurse``), and such a class travels by value under
a token: each process keeps the classes it sent or received by token. The copies of one class
that reach a worker (with the function, with each chunk) are then one class there, and an
instance that a worker returns is again an instance of the caller's own class.

Under fork a worker inherits ``__main__``, and a script's ``__main__`` is imported by its spawned
workers: the standard pickler serves both, and this module only improves dill's fallback for
what it refuses. It imports dill; :mod:`.pickling` imports it only when a pickle needs it.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
import weakref
from types import FunctionType
from typing import Any

import dill

__all__ = ["Dilled", "MainPickler", "SharedMainCPickler", "SharedMainPickler", "SpawnPickler",
           "dill_dumps", "main_is_importable", "tracked_class", "undill"]


class Dilled:
    """Bytes that dill made; unpickling this unpickles them with dill (imported then)."""

    __slots__ = ("blob",)

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return undill, (self.blob,)


def undill(blob: bytes) -> Any:
    """Unpickle what dill pickled (see :class:`Dilled`)."""
    return dill.loads(blob)


def main_is_importable() -> bool:
    """Whether a spawned worker re-creates ``__main__``: it does from a file or a module name
    (a script, ``python -m``), not for a notebook, a REPL or ``python -c``."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return getattr(spec, "name", None) is not None or getattr(main, "__file__", None) is not None


def _from_lost_main(obj: Any) -> bool:
    """Whether ``obj`` (a class or a function) belongs to a ``__main__`` no worker can import."""
    return getattr(obj, "__module__", None) == "__main__" and not main_is_importable()


# Each tracked class has a token: random for a class of this process, the sender's for a
# received one (kept with the bytes it came as, to send it back as is). Weak both ways, so a kept
# worker drops the classes of a run once that run's objects are gone.
_TOKENS: weakref.WeakKeyDictionary[type, tuple[bytes, bytes | None]] = (
    weakref.WeakKeyDictionary())
_CLASSES: weakref.WeakValueDictionary[bytes, type] = weakref.WeakValueDictionary()
# Classes being pickled by value right now: a reference back to one of them (a method that
# builds its own class, two classes that use each other) is left to dill, inside the same bytes.
_IN_PROGRESS: set[int] = set()


def tracked_class(token: bytes, blob: bytes) -> type:
    """The class that ``token`` stands for here: the one sent or received under it before,
    else a new one built from ``blob``."""
    cls = _CLASSES.get(token)
    if cls is None:
        cls = dill.loads(blob)
        _CLASSES[token] = cls
        _TOKENS[cls] = (token, blob)
    return cls


def _track(cls: type, blobs: dict[Any, bytes]) -> tuple[Any, tuple[bytes, bytes]]:
    """The reduction of ``cls`` by value, under its token; ``blobs`` keeps what was pickled."""
    token, blob = _TOKENS.get(cls, (b"", None))
    if not token:
        token = os.urandom(16)
        _TOKENS[cls] = (token, None)
        _CLASSES[token] = cls
    if blob is None:
        blob = blobs.get(cls)
    if blob is None:
        _IN_PROGRESS.add(id(cls))
        try:
            blob = blobs[cls] = dill_dumps(MainPickler, cls)
        finally:
            _IN_PROGRESS.discard(id(cls))
    return tracked_class, (token, blob)


def dill_dumps(pickler_class: type[MainPickler], obj: Any) -> bytes:
    """Pickle ``obj`` with ``pickler_class``, one of this module's dill picklers."""
    buffer = io.BytesIO()
    pickler_class(buffer).dump(obj)
    return buffer.getvalue()


class MainPickler(dill.Pickler):
    """dill, for a process whose ``__main__`` is not this one's: functions of a lost
    ``__main__`` carry the globals they use, and its classes are tracked."""

    # dill's private setting, read when it saves a function: its only switch for one function
    # at a time (tests/test_notebook.py::test_notebook_cells_run_in_workers fails without it).
    _recurse: bool

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.blobs: dict[Any, bytes] = {}

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, type) and id(obj) not in _IN_PROGRESS and _from_lost_main(obj):
            return _track(obj, self.blobs)
        return NotImplemented

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        # dill's recurse=True for these functions only: their globals are the caller's
        # notebook, while a closure of an importable module keeps sharing that module's.
        if type(obj) is FunctionType and not self._recurse and _from_lost_main(obj):
            self._recurse = True
            try:
                super().save(obj, save_persistent_id)
            finally:
                self._recurse = False
        else:
            super().save(obj, save_persistent_id)


class SharedMainPickler(MainPickler):
    """dill, for a process that shares this one's ``__main__`` (a forked worker and its parent,
    or a spawned worker answering its parent): what ``__main__`` holds goes by name."""

    def reducer_override(self, obj: Any) -> Any:
        if (isinstance(obj, type) or type(obj) is FunctionType) and _found_in_main(obj):
            return obj.__qualname__
        return super().reducer_override(obj)


class SpawnPickler(pickle.Pickler):
    """The C pickler, sending the classes and functions of ``__main__`` by value: for a worker
    that cannot import ``__main__``.

    ``reducer_override`` is not called for ints, floats, strings, bytes, lists, tuples, dicts and
    sets, so a chunk of plain values costs what it costs the standard pickler.

    Args:
        file: where the pickle goes.
        blobs: what was pickled by value so far, by object; give every chunk of a run the same
            dict, so that a class travels as the same bytes all run long and dill pickles it
            once, while the next run takes the constants its methods use afresh.
    """

    def __init__(self, file: io.BytesIO, blobs: dict[Any, bytes] | None = None) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.blobs = {} if blobs is None else blobs

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, type):
            if self.by_value(obj):
                return _track(obj, self.blobs)
        elif type(obj) is FunctionType and self.by_value(obj):
            blob = self.blobs.get(obj)
            if blob is None:
                blob = self.blobs[obj] = dill_dumps(MainPickler, obj)
            return undill, (blob,)
        return NotImplemented

    @staticmethod
    def by_value(obj: type | FunctionType) -> bool:
        """Whether ``obj``, a class or a function, is sent by value."""
        return obj.__module__ == "__main__"


class SharedMainCPickler(SpawnPickler):
    """The C pickler, for a process that shares this one's ``__main__``: by value only what is
    missing from a lost ``__main__`` (in a spawned worker, the classes it received by value)."""

    @staticmethod
    def by_value(obj: type | FunctionType) -> bool:
        return _from_lost_main(obj) and not _found_in_main(obj)


def _found_in_main(obj: type | FunctionType) -> bool:
    if obj.__module__ != "__main__":
        return False
    found: Any = sys.modules["__main__"]
    for name in obj.__qualname__.split("."):  # a class nested in a class is found in it
        found = getattr(found, name, None)
    return found is obj
