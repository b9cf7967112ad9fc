"""Every contender as one call: ``run(func, items, kwargs, start_method) -> list of results``.

Each call builds its pool (or executor) afresh and tears it down, with 2 workers, so every
contender pays the same start-up costs it would in a user's script. Each returns what its
library returns when that is a list already (no copy to weigh on its memory), else a list. Libraries are imported inside
the calls, so a child process measuring one contender's memory loads only that contender.
A start method of None means the contender's own default.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

NCPUS = 2

Run = Callable[[Callable[..., Any], Sequence[Any], Mapping[str, Any], "str | None"], list[Any]]


def _parallel_jobs(func: Callable[..., Any], items: Sequence[Any], kwargs: Mapping[str, Any],
                   start_method: str | None) -> list[Any]:
    import parallel_jobs

    return parallel_jobs.parallelize(func, items, kwargs=dict(kwargs), ncpus=NCPUS,
                                     start_method=start_method)


def _serial(func: Callable[..., Any], items: Sequence[Any], kwargs: Mapping[str, Any],
            start_method: str | None) -> list[Any]:
    return [func(item, **kwargs) for item in items]


def _sciris(parallelizer: str | None) -> Run:
    def run(func: Callable[..., Any], items: Sequence[Any], kwargs: Mapping[str, Any],
            start_method: str | None) -> list[Any]:
        import sciris

        results: list[Any] = sciris.parallelize(func, items, kwargs=dict(kwargs), ncpus=NCPUS,
                                                parallelizer=parallelizer,
                                                start_method=start_method)
        return results

    return run


def _joblib(func: Callable[..., Any], items: Sequence[Any], kwargs: Mapping[str, Any],
            start_method: str | None) -> list[Any]:
    # joblib's default backend, loky, has one start method of its own and no setting for it.
    from joblib import Parallel, delayed

    results: list[Any] = Parallel(n_jobs=NCPUS)(delayed(func)(item, **kwargs) for item in items)
    return results


def _mpire(func: Callable[..., Any], items: Sequence[Any], kwargs: Mapping[str, Any],
           start_method: str | None) -> list[Any]:
    from mpire import WorkerPool

    options = {} if start_method is None else {"start_method": start_method}
    with WorkerPool(n_jobs=NCPUS, **options) as pool:
        results: list[Any] = pool.map(functools.partial(func, **kwargs), items)
        return results


def _multiprocess_pool(func: Callable[..., Any], items: Sequence[Any],
                       kwargs: Mapping[str, Any], start_method: str | None) -> list[Any]:
    import multiprocess

    with multiprocess.get_context(start_method).Pool(NCPUS) as pool:
        results: list[Any] = pool.map(functools.partial(func, **kwargs), items)
        return results


def _process_pool_executor(func: Callable[..., Any], items: Sequence[Any],
                           kwargs: Mapping[str, Any], start_method: str | None) -> list[Any]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context(start_method)
    with ProcessPoolExecutor(NCPUS, mp_context=context) as executor:
        return list(executor.map(functools.partial(func, **kwargs), items))


@attrs.frozen
class Contender:
    """A way to run a function over items.

    Attributes:
        name: the column title.
        run: the call.
        start_methods: whether ``run`` honours a start method.
        slow: skipped by ``--quick`` (and by ``--skip-slow``).
    """

    name: str
    run: Run
    start_methods: bool = True
    slow: bool = False


SUBJECT = Contender("parallel_jobs", _parallel_jobs)

CONTENDERS: dict[str, Contender] = {c.name: c for c in (
    SUBJECT,
    Contender("serial", _serial, start_methods=False),
    Contender("sciris", _sciris(None), slow=True),
    Contender("sciris-fast", _sciris("fast"), slow=True),
    Contender("joblib", _joblib, start_methods=False),
    Contender("mpire", _mpire),
    Contender("multiprocess.Pool", _multiprocess_pool),
    Contender("ProcessPoolExecutor", _process_pool_executor),
)}
