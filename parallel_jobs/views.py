"""What a finished run shows its caller: ``times`` and the per-task lists, read from its store.

A run keeps its outcomes column-wise in a :class:`~parallel_jobs.engine.store.ResultStore`;
the lists sciris users know (``results``, ``success``, ``skipped``, ``exceptions``, ``stdout``)
and each task's seconds (``times['jobs']``) are built from it only when first read: a run of
200,000 tasks whose caller reads only the results pays for no other list. This module reads
the store and changes nothing in it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

from .engine.store import CANCELLED, SUCCEEDED, ResultStore

__all__ = ["BUILDERS", "TaskLists", "Times"]


class Times(MutableMapping[str, Any]):
    """``times`` of a run: a mapping whose keys are also attributes (``P.times.elapsed``).

    ``jobs`` (each task's seconds) is built from the run's store the first time it is read: a
    run of 200,000 tasks whose caller never looks at it does not pay for 200,000 floats. It is
    a mapping, not a dict subclass, because ``dict(times)`` and ``{**times}`` copy a dict
    subclass's storage directly and would see the placeholder instead of the values.

    Examples:
        >>> times = Times(started=None, elapsed=1.5)
        >>> times.defer("jobs", lambda: [0.5, 1.0])
        >>> dict(times) == {**times} == {"started": None, "elapsed": 1.5, "jobs": [0.5, 1.0]}
        True
        >>> times.elapsed, times["jobs"]
        (1.5, [0.5, 1.0])
    """

    def __init__(self, **values: Any) -> None:
        self._values: dict[str, Any] = values
        self._pending: dict[str, Callable[[], Any]] = {}

    def defer(self, key: str, build: Callable[[], Any]) -> None:
        """Make ``build()`` the value of ``key``, computed on first read."""
        self._values[key] = None
        self._pending[key] = build

    def __getitem__(self, key: str) -> Any:
        build = self._pending.pop(key, None)
        if build is not None:
            self._values[key] = build()
        return self._values[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._pending.pop(key, None)
        self._values[key] = value

    def __delitem__(self, key: str) -> None:
        self._pending.pop(key, None)
        del self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return repr(dict(self))

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled (and deep-copied) with its values settled: a deferred builder may hold the run.
        return (type(self), (), None, None, iter(dict(self).items()))

    def copy(self) -> dict[str, Any]:
        """A plain dict of the values."""
        return dict(self)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            self[name] = value


def _stdout(store: ResultStore) -> list[str]:
    return [""] * store.njobs if store.stdout is None else list(store.stdout)


#: How each per-task list is built from a finished run's store.
BUILDERS: dict[str, Callable[[ResultStore], list[Any]]] = {
    "results": lambda store: store.values,
    "success": lambda store: [state == SUCCEEDED for state in store.state],
    "skipped": lambda store: [state == CANCELLED for state in store.state],
    "exceptions": lambda store: [store.exception(i) for i in range(store.njobs)],
    "stdout": _stdout,
}


class TaskLists:
    """The per-task lists of one finished run (or of none: every list is then None), each
    built from the store when first read; a list assigned (as sciris allows) is kept instead.

    Examples:
        >>> TaskLists(None).get("results") is None
        True
    """

    def __init__(self, store: ResultStore | None) -> None:
        self.store = store
        self.lists: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        """The list ``name`` (a key of :data:`BUILDERS`), or None when there is no run."""
        if name not in self.lists:
            if self.store is None:
                return None
            self.lists[name] = BUILDERS[name](self.store)
        return self.lists[name]

    def set(self, name: str, value: Any) -> None:
        """Keep ``value`` as the list ``name``."""
        self.lists[name] = value
