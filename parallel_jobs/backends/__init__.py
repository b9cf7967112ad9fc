"""Backends: where tasks run. :func:`resolve` turns a ``parallelizer`` argument into one.

| name(s)                                       | backend                                   |
|-----------------------------------------------|-------------------------------------------|
| None, 'default', 'robust', 'multiprocess'     | own worker processes, ``multiprocess``    |
| 'multiprocessing'                             | own worker processes, stdlib context      |
| 'fast', 'concurrent', 'concurrent.futures'    | ``ProcessPoolExecutor``                   |
| 'thread', 'threadpool'                        | threads                                   |
| 'serial'                                      | the caller's own loop                     |
| 'dask', or a ``distributed.Client``           | a dask.distributed cluster                |
| any other callable                            | a user's map, ``mapfunc(func, items)``    |

'-copy' (deep-copy the arguments of each task for serial and thread) and '-async' (run in the
background with ``run_async()``) may be appended to a name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from ..errors import UnknownParallelizerError
from .base import Backend, BackendOptions

__all__ = ["PARALLELIZERS", "Backend", "BackendOptions", "Choice", "resolve"]

#: Every name the ``parallelizer`` argument accepts (suffixes aside), and the method it selects.
PARALLELIZERS: dict[str, str] = {
    "default": "multiprocess",
    "robust": "multiprocess",
    "multiprocess": "multiprocess",
    "multiprocessing": "multiprocessing",
    "fast": "concurrent.futures",
    "concurrent": "concurrent.futures",
    "concurrent.futures": "concurrent.futures",
    "futures": "concurrent.futures",
    "serial": "serial",
    "thread": "thread",
    "threadpool": "thread",
    "dask": "dask",
}
SUFFIXES = ("-copy", "-async")
ASYNC_METHODS = ("multiprocess", "multiprocessing", "concurrent.futures", "thread", "dask")


@attrs.frozen(slots=True)
class Choice:
    """A resolved ``parallelizer``: the method, its flags, and the user's object if any."""

    method: str
    copy: bool = False
    is_async: bool = False
    target: Any = None

    def build(self, options: BackendOptions) -> Backend:
        """Create the backend for one run."""
        if self.method in ("multiprocess", "multiprocessing", "concurrent.futures"):
            from .pool import daemonic

            if daemonic(self.method):
                import warnings

                from .serial import SerialBackend

                msg = (
                    "this process is daemonic (a worker of a Pool, say) and may not start "
                    f"processes: this nested run of {self.method!r} runs serially instead"
                )
                warnings.warn(msg, RuntimeWarning, stacklevel=2)
                return SerialBackend(options)
        if self.method in ("multiprocess", "multiprocessing"):
            from .pool import ProcessPoolBackend

            return ProcessPoolBackend(options, library=self.method)
        if self.method == "concurrent.futures":
            from .futures import FuturesBackend

            return FuturesBackend(options)
        if self.method == "thread":
            from .threads import ThreadBackend

            return ThreadBackend(options)
        if self.method == "serial":
            from .serial import SerialBackend

            return SerialBackend(options)
        if self.method == "dask":
            from .dask import DaskBackend

            return DaskBackend(options, client=self.target)
        from .mapper import MapBackend

        assert callable(self.target)
        return MapBackend(options, self.target)


def _is_dask_client(obj: Any) -> bool:
    return any(
        cls.__name__ == "Client" and cls.__module__.startswith("distributed")
        for cls in type(obj).__mro__
    )


def resolve(parallelizer: str | Callable[..., Any] | None, serial: bool = False) -> Choice:
    """Turn the ``parallelizer`` and ``serial`` arguments into a :class:`Choice`.

    Raises:
        UnknownParallelizerError: for a name that is not in :data:`PARALLELIZERS`.
        TypeError: for something that is neither a name nor callable.
        ValueError: for '-async' with a method that cannot run in the background.

    Examples:
        >>> resolve("thread-copy")
        Choice(method='thread', copy=True, is_async=False, target=None)
    """
    if serial:
        return Choice("serial", copy=isinstance(parallelizer, str) and "-copy" in parallelizer)
    if parallelizer is None:
        return Choice("multiprocess")
    if not isinstance(parallelizer, str):
        if _is_dask_client(parallelizer):
            return Choice("dask", target=parallelizer)
        if callable(parallelizer):
            return Choice("custom", target=parallelizer)
        msg = (
            "parallelizer must be a name or a map-like callable, not "
            f"{type(parallelizer).__name__}"
        )
        raise TypeError(msg)
    name = parallelizer.strip().lower()
    flags = set()
    for suffix in SUFFIXES:
        if name.endswith(suffix) or f"{suffix}-" in name:
            flags.add(suffix)
            name = name.replace(suffix, "")
    if name == "async":  # sciris: 'async' alone means the default, in the background
        name, flags = "default", flags | {"-async"}
    if name not in PARALLELIZERS:
        valid = [*PARALLELIZERS, "<name>-copy", "<name>-async"]
        raise UnknownParallelizerError(parallelizer, valid)
    method = PARALLELIZERS[name]
    is_async = "-async" in flags
    if is_async and method not in ASYNC_METHODS:
        msg = (
            f"parallelizer {parallelizer!r}: '-async' needs a method that runs in the "
            f"background ({', '.join(ASYNC_METHODS)}), not {method!r}"
        )
        raise ValueError(msg)
    return Choice(method, copy="-copy" in flags, is_async=is_async)
