"""``Parallel`` and ``parallelize()``: the sciris-compatible front door.

``Parallel`` validates its whole configuration at construction (a bad argument fails there,
named, before any process starts), owns the lifecycle of its runs and turns the Runner's
column-wise store into the lists sciris users know: ``results``, ``success``, ``exceptions``,
``times``. ``parallelize()`` builds one ``Parallel``, runs it and returns its results.
"""

from __future__ import annotations

import datetime
import difflib
import inspect
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from numbers import Integral, Real
from typing import Any

from ._cpus import cpu_count
from .backends import Choice, resolve
from .backends.base import BackendOptions
from .engine.monitor import LoadGate, LoadMonitor, LoadSample, NullMonitor
from .engine.progress import make_reporter
from .engine.runner import Runner, RunPlan, TaskSource
from .engine.store import CANCELLED, SUCCEEDED, OutcomeStore, ResultStore
from .engine.stream import Stream, StreamPlan, StreamSource, StreamStore, held_limit
from .health import WorkerOptions, worker_options
from .records import Payload, TaskResult

__all__ = ["Parallel", "imap", "load_checkpoint", "parallelize"]

_NOT_RUN, _RUNNING, _DONE = "not run", "running", "done"


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


def _indexable(values: Any, name: str) -> Sequence[Any]:
    """``values`` itself if ``values[i]`` is its i-th item (lists, tuples, ranges, NumPy arrays),
    else a list of what iterating over it gives (generators, sets, strings, dict keys, pandas
    Series, whose ``[i]`` looks up a label)."""
    np = sys.modules.get("numpy")
    if isinstance(values, (list, tuple, range)) or (
        np is not None and isinstance(values, np.ndarray) and values.ndim > 0
    ):
        return values
    if not isinstance(values, Iterable):
        msg = f"{name} must be iterable or an integer, not {type(values).__name__}"
        raise TypeError(msg)
    return list(values)


def _number(value: Any, name: str, *, integer: bool = False) -> Any:
    """``value`` if it is a number (an integer with ``integer``) and not NaN."""
    kind = Integral if integer else Real
    if isinstance(value, bool) or not isinstance(value, kind):
        what = "an integer" if integer else "a number"
        msg = f"{name} must be {what}, not {type(value).__name__}"
        raise TypeError(msg)
    if value != value:  # NaN compares unequal to itself, and false to every bound
        msg = f"{name} must be a number, not NaN"
        raise ValueError(msg)
    return value


def _fraction(value: Any, name: str) -> float | None:
    """A load limit as a fraction: 0.8 and 80 both mean 80%."""
    if value is None:
        return None
    number = float(_number(value, name))
    fraction = number / 100 if number > 1 else number
    if not 0 < fraction <= 1:
        msg = f"{name} must be a fraction in (0, 1] or a percentage in (1, 100], not {value!r}"
        raise ValueError(msg)
    return fraction


def _positive(value: Any, name: str, *, integer: bool = False) -> Any:
    if not _number(value, name, integer=integer) > 0:
        msg = f"{name} must be positive, not {value!r}"
        raise ValueError(msg)
    return value


def _finite(value: Any, name: str) -> float:
    """A positive number of seconds that a wait can be given."""
    seconds = float(_positive(value, name))
    if math.isinf(seconds):
        msg = f"{name} must be a finite number of seconds, not {value!r}"
        raise ValueError(msg)
    return seconds


#: The longest timeout kept, in seconds: epoll waits at most 2**31 - 1 ms (24.8 days), and a
#: task deadline is waited for in one call.
LONGEST_TIMEOUT = (2**31 - 1) / 1000


def _timeout(value: Any) -> float | None:
    """``timeout`` in seconds; None when there is none, also for 24.8 days or more and ``inf``."""
    if value is None:
        return None
    seconds = float(_positive(value, "timeout"))
    return None if seconds >= LONGEST_TIMEOUT else seconds


def _flag(value: Any, name: str) -> bool:
    """A yes/no argument: a bool, a NumPy bool, 0 or 1, or None (false, as sciris takes it).

    Anything else is refused: ``die='False'`` would otherwise be true.
    """
    if value is None:
        return False
    np = sys.modules.get("numpy")
    if isinstance(value, bool) or (np is not None and isinstance(value, np.bool_)):
        return bool(value)
    if isinstance(value, Integral) and value in (0, 1):
        return bool(value)
    msg = f"{name} must be True or False, not {value!r}"
    raise TypeError(msg)


#: sciris' load-balancer options that are accepted and ignored (see docs/arguments.md): the
#: gate here samples the load in one monitor thread, and a task waits for it without a limit.
IGNORED_LBKWARGS = frozenset({"cpu_interval", "maxtime", "label", "verbose"})
_LOAD_OPTIONS = ("maxcpu", "maxmem", "interval")


class _AttrDict(dict[str, Any]):
    """A dict whose keys read as attributes too (``P.lbkwargs.maxcpu``), as sciris' objdict.

    Examples:
        >>> _AttrDict(maxcpu=0.7).maxcpu
        0.7
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _merge_lbkwargs(explicit: dict[str, Any], lbkwargs: Any) -> _AttrDict:
    """sciris' merge: a key of ``lbkwargs`` wins over an explicit argument that is None."""
    if lbkwargs is None:
        lbkwargs = {}
    if not isinstance(lbkwargs, Mapping):
        msg = f"lbkwargs must be a dict, not {type(lbkwargs).__name__}"
        raise TypeError(msg)
    known = (*_LOAD_OPTIONS, *sorted(IGNORED_LBKWARGS))
    for key in lbkwargs:
        if key not in known:
            # sciris renamed maxload to maxcpu in 2.0 and still takes the old name.
            close = ["maxcpu"] if key == "maxload" else difflib.get_close_matches(
                str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(known)})"
            msg = f"lbkwargs has no option {key!r}{hint}"
            raise TypeError(msg)
    given = {key: value for key, value in explicit.items() if value is not None}
    return _AttrDict({**explicit, **lbkwargs, **given})


def _check_option_typos(func: Callable[..., Any], func_kwargs: Mapping[str, Any]) -> None:
    """Refuse a keyword that looks like a misspelt option (``ncpu=``) and that ``func`` could
    not take anyway: the run would only fail later, in every task, with a vaguer message."""
    suspects = {}
    for key in func_kwargs:
        close = difflib.get_close_matches(key, OPTION_NAMES, n=1)
        if close:
            suspects[key] = close[0]
    if not suspects:
        return
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return  # a builtin or extension function that says nothing: let it decide
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    accepted = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for key, option in suspects.items():
        if key not in accepted:
            name = getattr(func, "__qualname__", None) or repr(func)
            msg = (
                f"unexpected keyword argument {key!r}: it is not an option, and {name}() takes "
                f"no such argument; did you mean {option!r}?"
            )
            raise TypeError(msg)


class Parallel:
    """Run a function over many inputs in parallel, and keep everything about the run.

    Arguments are those of :func:`parallelize`, in sciris' order: here ``label`` is positional,
    after ``globaldict``, and ``keep_records`` defaults to True. Configuration is validated
    here; nothing runs until :meth:`run` or :meth:`run_async`.

    ``keep_records=True`` (the default) keeps each task's timings, CPU time, peak memory, process
    and attempts (:attr:`task_results`, :meth:`summary`, :meth:`report`, :meth:`to_records`,
    :meth:`plot_timeline`, ``times['jobs']``) and the machine's load (:attr:`load_samples`):
    19 bytes a task, 3.8 MB for 200,000 tasks. With ``keep_records=False`` a run keeps only what
    the results, success, skipped and exceptions lists need, and samples the load only for a
    progress bar or a load limit; :func:`parallelize`, which returns only the results, runs so.

    Attributes:
        njobs: number of tasks.
        ncpus: number of tasks that run at once.
        method: the backend ('multiprocess', 'thread', ...).
        label: the name given to the run, or None.
        results: each task's return value, in input order (None for a failed task).
        success: whether each task succeeded.
        skipped: whether each task never ran (a callback stopped the run, or ``die`` did).
        exceptions: what each task raised, or None.
        stdout: what each task printed, with ``capture=True`` ('' each without it).
        globaldict: a plain-dict copy of the shared ``globaldict`` as the run left it.
        inputdict: the ``globaldict`` given (sciris' name).
        iterarg, iterkwargs, args: as given.
        kwargs: the keyword arguments every task gets (``kwargs`` and ``**func_kwargs``).
        lbkwargs: the load-balancer options, merged from ``lbkwargs`` and ``maxcpu``,
            ``maxmem``, ``interval`` as sciris merges them.
        serial, capture, is_async: as given or implied by ``parallelizer``.
        embarrassing: whether ``iterarg`` was a count (the function takes no iterated value).
        times: ``started``, ``finished`` (datetimes), ``elapsed`` (seconds) and ``jobs`` (each
            task's seconds; None without records).
        task_results: one :class:`~parallel_jobs.TaskResult` per task.
        checkpoint: the checkpoint file's path, or None; ``rerun_failed`` as given.
        initializer: called once in each worker before its first task; ``initargs`` as given.
        max_tasks_per_worker: tasks a worker runs before it is replaced, or None.
        max_worker_memory: RSS past which a worker is replaced after a task, as given.
        task_memory_limit: RSS past which a running task is killed, as given.
        threads_per_worker: BLAS/OpenMP threads per worker process, as given.
        workers_replaced: (pid, reason) of each worker replaced by a health option.
        memory_limits_hit: how many tasks were killed for breaking ``task_memory_limit``.
        load_samples: the machine's load sampled during the run.
        keep_records: whether runs keep per-task records.

    Examples:
        >>> def square(x):
        ...     return x * x
        >>> P = Parallel(square, [1, 2, 3], parallelizer="serial", label="squares")
        >>> P.run().results
        [1, 4, 9]
        >>> P.status, P.success
        ('done', [True, True, True])
    """

    def __init__(
        self,
        func: Callable[..., Any],
        iterarg: Any = None,
        iterkwargs: Any = None,
        args: Any = None,
        kwargs: Mapping[str, Any] | None = None,
        ncpus: float | None = None,
        maxcpu: float | None = None,
        maxmem: float | None = None,
        interval: float | None = None,
        parallelizer: str | Callable[..., Any] | None = None,
        serial: bool = False,
        progress: bool = False,
        callback: Callable[[dict[str, Any]], Any] | None = None,
        globaldict: Mapping[str, Any] | None = None,
        label: str | None = None,
        capture: bool = False,
        die: bool = True,
        lbkwargs: Mapping[str, Any] | None = None,
        start_method: str | None = None,
        *,
        timeout: float | None = None,
        retries: int = 0,
        chunksize: int | None = None,
        keep_records: bool = True,
        checkpoint: str | os.PathLike[str] | None = None,
        rerun_failed: bool = True,
        initializer: Callable[..., Any] | None = None,
        initargs: Sequence[Any] = (),
        max_tasks_per_worker: int | None = None,
        max_worker_memory: int | str | None = None,
        task_memory_limit: int | str | None = None,
        threads_per_worker: int | str | None = "auto",
        **func_kwargs: Any,
    ) -> None:
        if not callable(func):
            msg = f"func must be callable, not {type(func).__name__}"
            raise TypeError(msg)
        if func_kwargs:
            _check_option_typos(func, func_kwargs)
        self.func = func
        self.iterarg = iterarg
        self.iterkwargs = iterkwargs
        self.args = args
        self.inputdict = globaldict
        self.label = label
        self.serial = _flag(serial, "serial")
        self.progress = _flag(progress, "progress")
        self.capture = _flag(capture, "capture")
        self.die = _flag(die, "die")
        self.choice: Choice = resolve(parallelizer, self.serial)
        self.parallelizer = parallelizer
        self.method = self.choice.method
        self.is_async = self.choice.is_async
        if self.capture and self.method == "thread":
            msg = (
                "capture=True cannot be used with the 'thread' parallelizer: threads share one "
                "stdout, so a task's output cannot be told from another's; use a process or the "
                "serial parallelizer"
            )
            raise ValueError(msg)
        self._plan = self._make_plan(iterarg, iterkwargs, args, kwargs, globaldict, func_kwargs)
        self.njobs = self._plan.njobs
        self.embarrassing = isinstance(iterarg, Integral) and not isinstance(iterarg, bool)
        self.ncpus = self._resolve_ncpus(ncpus)
        self.lbkwargs = _merge_lbkwargs(
            {"maxcpu": maxcpu, "maxmem": maxmem, "interval": interval}, lbkwargs)
        self.maxcpu = _fraction(self.lbkwargs["maxcpu"], "maxcpu")
        self.maxmem = _fraction(self.lbkwargs["maxmem"], "maxmem")
        interval = self.lbkwargs["interval"]
        self.interval = None if interval is None else _finite(interval, "interval")
        if callback is not None and not callable(callback):
            msg = f"callback must be callable, not {type(callback).__name__}"
            raise TypeError(msg)
        self.callback = callback
        if globaldict is not None and self.method == "dask":
            msg = (
                "globaldict cannot be shared across a dask cluster: its workers may be on other "
                "machines; pass the data in kwargs, or use a local parallelizer"
            )
            raise ValueError(msg)
        self.timeout = _timeout(timeout)
        if isinstance(retries, bool) or not isinstance(retries, Integral) or retries < 0:
            msg = f"retries must be a whole number >= 0, not {retries!r}"
            raise ValueError(msg)
        self.retries: int = int(retries)
        self.chunksize: int | None = None if chunksize is None else int(
            _positive(chunksize, "chunksize", integer=True))
        self.start_method: str | None = self._check_start_method(start_method)
        self.keep_records: bool = _flag(keep_records, "keep_records")
        self.checkpoint: str | None = _checkpoint_path(checkpoint)
        self.rerun_failed: bool = _flag(rerun_failed, "rerun_failed")
        self.initializer, self.initargs = initializer, initargs
        self.max_tasks_per_worker = max_tasks_per_worker
        self.max_worker_memory, self.task_memory_limit = max_worker_memory, task_memory_limit
        self.threads_per_worker = threads_per_worker
        self._worker_options: WorkerOptions | None = worker_options(
            self.method, self.ncpus, cpu_count(), initializer=initializer, initargs=initargs,
            max_tasks_per_worker=max_tasks_per_worker, max_worker_memory=max_worker_memory,
            task_memory_limit=task_memory_limit, threads_per_worker=threads_per_worker)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.reset()

    # -- configuration ---------------------------------------------------------------------------

    def _make_plan(
        self,
        iterarg: Any,
        iterkwargs: Any,
        args: Any,
        kwargs: Mapping[str, Any] | None,
        globaldict: Mapping[str, Any] | None,
        func_kwargs: Mapping[str, Any],
    ) -> RunPlan | StreamPlan:
        if isinstance(iterarg, Stream) or isinstance(iterkwargs, Stream):
            payload = self._make_payload(args, kwargs, globaldict, func_kwargs)
            return StreamPlan(getattr(iterarg, "values", iterarg),
                              getattr(iterkwargs, "values", iterkwargs), payload, globaldict)
        njobs: int | None = None
        values: Sequence[Any] | None = None
        if iterarg is not None:
            if isinstance(iterarg, Integral) and not isinstance(iterarg, bool):
                njobs = int(iterarg)  # run the function that many times, with no iterated value
            else:
                values = _indexable(iterarg, "iterarg")
                njobs = len(values)
        per_task: Any = None
        if iterkwargs is not None:
            per_task, count = _check_iterkwargs(iterkwargs)
            if njobs is not None and count != njobs:
                msg = (
                    f"iterarg and iterkwargs must have the same length, not {njobs} and {count}"
                )
                raise ValueError(msg)
            njobs = count
        if not njobs or njobs < 0:
            msg = (
                "nothing to run: give iterarg (an iterable or a positive integer) and/or "
                f"iterkwargs with at least one entry (got iterarg={iterarg!r}, "
                f"iterkwargs={iterkwargs!r})"
            )
            raise ValueError(msg)
        payload = self._make_payload(args, kwargs, globaldict, func_kwargs)
        return RunPlan(njobs, values, per_task, payload, globaldict)

    def _make_payload(
        self,
        args: Any,
        kwargs: Mapping[str, Any] | None,
        globaldict: Mapping[str, Any] | None,
        func_kwargs: Mapping[str, Any],
    ) -> Payload:
        if args is None:
            shared_args: tuple[Any, ...] = ()
        elif isinstance(args, (list, tuple)):
            shared_args = tuple(args)
        else:
            shared_args = (args,)
        if kwargs is not None and not isinstance(kwargs, Mapping):
            msg = f"kwargs must be a dict, not {type(kwargs).__name__}"
            raise TypeError(msg)
        # A manager's DictProxy is no Mapping, but is what a user's own pool shares state with.
        if globaldict is not None and not (
            isinstance(globaldict, Mapping) or hasattr(globaldict, "keys")
        ):
            msg = f"globaldict must be a dict, not {type(globaldict).__name__}"
            raise TypeError(msg)
        shared_kwargs = {**(kwargs or {}), **func_kwargs}
        return Payload(self.func, shared_args, shared_kwargs)

    def _resolve_ncpus(self, ncpus: Any) -> int:
        available = cpu_count()
        if ncpus is None:
            count = available
        else:
            share = float(_number(ncpus, "ncpus"))
            if not 0 < share < math.inf:
                msg = (
                    f"ncpus must be positive and finite (a count, or a fraction below 1), "
                    f"not {ncpus!r}"
                )
                raise ValueError(msg)
            count = math.ceil(available * share) if share < 1 else int(share)
        return max(1, count if self.njobs is None else min(count, self.njobs))

    @staticmethod
    def _check_start_method(start_method: str | None) -> str | None:
        if start_method is None:
            return None
        import multiprocessing

        methods = multiprocessing.get_all_start_methods()
        if start_method not in methods:
            msg = f"start_method must be one of {methods}, not {start_method!r}"
            raise ValueError(msg)
        return start_method

    # -- state -----------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget any previous run: back to the state right after construction."""
        if self.running:
            msg = "cannot reset a Parallel while it is running; call finalize() first"
            raise RuntimeError(msg)
        self._store: ResultStore | None = None
        self._runner: Runner | None = None
        self.workers_replaced: list[tuple[int, str]] = []
        self.memory_limits_hit = 0
        self._status = _NOT_RUN
        self._thread = None
        # Set when a background run has ended; Thread.join() cannot tell once Ctrl-C has
        # interrupted it (CPython then marks a still-running thread as stopped).
        self._finished = threading.Event()
        self._error = None
        self._lists: dict[str, Any] = {}
        self.globaldict: dict[str, Any] | None = None
        self.load_samples: list[LoadSample] = []
        self.times = Times(started=None, finished=None, elapsed=None, jobs=None)
        self._t0 = 0.0

    def _list(self, name: str, build: Callable[[ResultStore], list[Any] | None]) -> Any:
        # The per-task lists are built from the store when first read, not at the end of every
        # run: parallelize() reads only the results.
        if name not in self._lists:
            store = self._store
            if store is None or self._status != _DONE:
                return None
            self._lists[name] = build(store)
        return self._lists[name]

    @property
    def results(self) -> list[Any] | None:
        """Each task's return value, in input order (None for a failed or skipped task)."""
        return self._list("results", lambda store: store.values)

    @results.setter
    def results(self, value: list[Any] | None) -> None:
        self._lists["results"] = value

    @property
    def success(self) -> list[bool] | None:
        """Whether each task succeeded."""
        return self._list(
            "success", lambda store: [state == SUCCEEDED for state in store.state])

    @success.setter
    def success(self, value: list[bool] | None) -> None:
        self._lists["success"] = value

    @property
    def skipped(self) -> list[bool] | None:
        """Whether each task never ran because the run stopped early (die, Ctrl-C, callback)."""
        return self._list(
            "skipped", lambda store: [state == CANCELLED for state in store.state])

    @skipped.setter
    def skipped(self, value: list[bool] | None) -> None:
        self._lists["skipped"] = value

    @property
    def exceptions(self) -> list[BaseException | None] | None:
        """What each task raised (or what stopped it: a crash, a timeout), else None."""
        return self._list(
            "exceptions", lambda store: [store.exception(i) for i in range(store.njobs)])

    @exceptions.setter
    def exceptions(self, value: list[BaseException | None] | None) -> None:
        self._lists["exceptions"] = value

    @property
    def stdout(self) -> list[str] | None:
        """What each task printed to stdout, with ``capture=True``; ``''`` for every task
        without it (as in sciris); None before a run."""
        def build(store: ResultStore) -> list[str]:
            return [""] * store.njobs if store.stdout is None else list(store.stdout)

        return self._list("stdout", build)

    @stdout.setter
    def stdout(self, value: list[str] | None) -> None:
        self._lists["stdout"] = value

    @property
    def kwargs(self) -> Mapping[str, Any]:
        """The keyword arguments every task gets: ``kwargs`` merged with ``**func_kwargs``."""
        return self._plan.payload.kwargs

    @property
    def running(self) -> bool:
        """Whether tasks are running now."""
        if getattr(self, "_status", _NOT_RUN) != _RUNNING:
            return False
        # A background run has ended when its thread has, even before finalize() gathers it.
        thread = self._thread
        return thread is None or thread.is_alive()

    @property
    def ready(self) -> bool:
        """Whether a run has finished: its results are available, or (after
        :meth:`run_async`) :meth:`finalize` will return at once."""
        return self._status != _NOT_RUN and not self.running

    @property
    def status(self) -> str:
        """'not run', 'running' or 'done'."""
        return _DONE if self.ready else self._status

    @property
    def task_results(self) -> list[TaskResult]:
        """One :class:`~parallel_jobs.TaskResult` per task (empty before a run).

        Raises:
            RuntimeError: after a run that kept no records (``keep_records=False``).
        """
        if self._store is None:
            return []
        if not self.keep_records:
            msg = (
                "this run kept no per-task records: create the Parallel with keep_records=True "
                "(the default) for task_results, summary(), report(), to_records() and "
                "plot_timeline(); parallelize() keeps none, as it returns only the results"
            )
            raise RuntimeError(msg)
        return [self._store.task_result(i) for i in range(self._store.njobs)]

    def __repr__(self) -> str:
        label = f"{self.label!r}, " if self.label else ""
        return (
            f"Parallel({label}jobs={self.njobs}, cpus={self.ncpus}, method={self.method!r}, "
            f"status={self.status!r})"
        )

    def disp(self) -> None:
        """Print the configuration and, after a run, the outcome."""
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        # Text, not str: rich would read brackets in a label as markup, and :name: as emoji.
        table = Table(title=Text(repr(self)), show_header=False)
        for key in ("njobs", "ncpus", "method", "label", "die", "timeout", "retries",
                    "maxcpu", "maxmem", "interval", "status"):
            table.add_row(key, Text(repr(getattr(self, key))))
        if self.success is not None:
            table.add_row("succeeded", f"{sum(self.success)} of {self.njobs}")
            table.add_row("elapsed", f"{self.times['elapsed']:.3f} s")
        Console().print(table)

    # -- reporting (parallel_jobs.report does the work) -----------------------------------------

    def summary(self, slowest: int = 5) -> dict[str, Any]:
        """Where the time went, as a plain dict: counts, elapsed, CPU, efficiency, memory, the
        slowest tasks, the failures and each worker's busy time.

        Examples:
            >>> P = Parallel(abs, [-1, 2], parallelizer="serial").run()
            >>> P.summary()["succeeded"]
            2
        """
        from .report import summarize

        return summarize(self, slowest)

    def report(self, console: Any = None, slowest: int = 5) -> None:
        """Print :meth:`summary` as tables on ``console`` (a ``rich.console.Console``, stdout
        by default)."""
        from .report import print_report

        print_report(self, console, slowest)

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per task (status, value, error, times, CPU, memory, pid, attempts), ready
        for ``pandas.DataFrame(P.to_records())``.

        Examples:
            >>> P = Parallel(abs, [-1, 2], parallelizer="serial").run()
            >>> [(r["index"], r["status"]) for r in P.to_records()]
            [(0, 'succeeded'), (1, 'succeeded')]
        """
        from .report import to_records

        return to_records(self)

    def plot_timeline(self, path: Any = None) -> Any:
        """Draw each worker's tasks over time with the machine's load underneath; return the
        matplotlib Figure and save it as a PNG at ``path`` if given. Needs the ``plot`` extra.

        Examples:
            >>> P = Parallel(abs, [-1, 2], parallelizer="serial").run()
            >>> figure = P.plot_timeline()  # or P.plot_timeline("timeline.png")
            >>> len(figure.axes)
            2
        """
        from .report import plot_timeline

        return plot_timeline(self, path)

    # -- running ---------------------------------------------------------------------------------

    def _make_runner(self, store: OutcomeStore | None = None,
                     source: TaskSource | None = None) -> Runner:
        options = BackendOptions(
            ncpus=self.ncpus, timeout=self.timeout, start_method=self.start_method,
            copy=self.choice.copy, njobs=self.njobs or 0,  # a stream's size is unknown: 0
        )
        backend = self.choice.build(options)
        limited = self.maxcpu is not None or self.maxmem is not None
        interval = self.interval or 1.0
        if self.keep_records or limited:
            monitor: LoadMonitor = LoadMonitor(interval)
        elif self.progress:
            # The bar alone shows the load once the run has lasted MONITOR_DELAY.
            monitor = LoadMonitor(interval, eager=False)
        else:
            monitor = NullMonitor()  # nobody would see the load: no psutil, no samples
        gate = None
        if limited:
            gate = LoadGate(monitor, self.maxcpu, self.maxmem, self.interval or 0.5)
        if store is None:
            if self.njobs is None:
                msg = "this Parallel reads its input as a stream: iterate over imap() instead"
                raise TypeError(msg)
            store = self._store = ResultStore(self.njobs, self.retries, self.keep_records,
                                              self.capture)
        checkpoint = None
        if self.checkpoint is not None:
            # Last, so that nothing after it can fail and leave the file locked.
            from .engine.checkpoint import Checkpoint  # only when asked for: see load_checkpoint

            checkpoint = Checkpoint.open(self.checkpoint, self._plan.payload,
                                         rerun_failed=self.rerun_failed)
        return Runner(
            self._plan, backend, store, monitor=monitor, gate=gate,
            reporter=make_reporter(self.progress, self.label), die=self.die,
            retries=self.retries, chunksize=self.chunksize, callback=self.callback,
            ncpus=self.ncpus, capture=self.capture, worker=self._worker_options,
            checkpoint=checkpoint, source=source,
        )

    def _begin(self, store: OutcomeStore | None = None,
               source: TaskSource | None = None) -> Runner:
        if self.running:
            msg = "this Parallel is already running; call finalize() before running it again"
            raise RuntimeError(msg)
        self.reset()
        self._runner = self._make_runner(store, source)
        self._status = _RUNNING
        self.times["started"] = datetime.datetime.now()
        self._t0 = time.perf_counter()
        return self._runner

    def run(self) -> Parallel:
        """Run every task and wait for them; returns self.

        Raises:
            Exception: with ``die=True``, the first task's exception, as its own type.
            KeyboardInterrupt: on Ctrl-C; workers are stopped first, and the results finished
                so far are kept.
            SystemExit: with status 143 on SIGTERM (when the run is in the main thread and
                SIGTERM has no handler of the caller's), once the workers are stopped, as an
                unhandled SIGTERM ends a process with that status.
        """
        if self.choice.is_async:
            self.run_async()
            return self.finalize()
        runner = self._begin()
        with _RunSignals():
            try:
                runner.run()
            finally:
                self._complete()
        return self

    def imap(self, ordered: bool = True, records: bool = False) -> Iterator[Any]:
        """Run the tasks, yielding each one's result as soon as it may be: in input order
        (``ordered=True``), or as tasks finish (``ordered=False``).

        Timeouts, retries, crash isolation, ``die``, progress, the callback and the checkpoint
        work as in :meth:`run`; a failed task's result is its exception (with ``die=False``).
        Results are not kept: ``results`` and the other per-task lists stay None, and only
        what the caller has not taken yet is held. Breaking out of the loop, or closing the
        generator, stops the run at once: running tasks are stopped, and nothing (process,
        thread, shared memory, checkpoint lock) is left behind. Nothing starts until the first
        result is asked for. For an input too long to list, see :func:`~parallel_jobs.imap`.

        Args:
            ordered: yield in input order; False yields in completion order.
            records: yield a :class:`~parallel_jobs.TaskResult` per task (value, success,
                exception, timings, pid, attempts, output) instead of the bare result.

        Examples:
            >>> P = Parallel(abs, [-1, 2, -3], parallelizer="serial")
            >>> [r for r in P.imap()]
            [1, 2, 3]
            >>> [(r.index, r.value) for r in P.imap(records=True)]
            [(0, 1), (1, 2), (2, 3)]
        """
        ordered = _flag(ordered, "ordered")
        records = _flag(records, "records")
        if self.running:
            msg = "this Parallel is already running; call finalize() before running it again"
            raise RuntimeError(msg)
        return self._imap(ordered, records)

    def _imap(self, ordered: bool, records: bool) -> Iterator[Any]:
        plan = self._plan
        source = None
        forget = None
        if isinstance(plan, StreamPlan):
            source = StreamSource(plan, held_limit(self.ncpus))
            forget = plan.forget
        store = StreamStore(records, self.capture, ordered, forget)
        runner = self._begin(store, source)
        steps = runner.iterate()
        try:
            with _RunSignals():
                for _ in steps:
                    yield from store.ready()
                yield from store.ready(final=True)
        finally:
            steps.close()  # stops and cleans up a run whose caller stopped iterating
            self.times["finished"] = datetime.datetime.now()
            self.times["elapsed"] = time.perf_counter() - self._t0
            self.globaldict = runner.globaldict
            self.load_samples = list(runner.monitor.samples)
            self._status = _DONE

    def run_async(self) -> Parallel:
        """Start the run in the background and return at once; see :meth:`monitor` and
        :meth:`finalize`."""
        runner = self._begin()
        finished = self._finished = threading.Event()

        def target() -> None:
            try:
                runner.run()
            except BaseException as exc:
                self._error = exc
            finally:
                finished.set()

        self._thread = threading.Thread(target=target, name="parallel_jobs-runner", daemon=True)
        self._thread.start()
        return self

    def monitor(self, interval: float = 0.1) -> None:
        """Show a progress bar for a background run until it finishes (then call finalize)."""
        if self._thread is None:
            return
        store, runner = self._store, self._runner
        assert store is not None
        assert runner is not None
        # With progress=True the run already draws this bar; a second one would garble both.
        reporter = make_reporter(not self.progress, self.label)
        reporter.start(self.njobs)
        thread = self._thread
        try:
            # Update once more after the run ends, so a run that ended first still shows done.
            running = True
            while running:
                thread.join(interval)
                running = thread.is_alive()
                reporter.update(store.done, store.failed, runner.monitor.latest)
        except KeyboardInterrupt:
            self._stop_background()
            raise
        finally:
            reporter.stop()

    def stop(self) -> None:
        """Start no further tasks of a background run; tasks already running finish.

        The tasks that never started are marked in ``skipped``, with None results, once
        :meth:`finalize` gathers the run (as with sciris' ``Parallel.stop()``).
        """
        if self._runner is not None and self.running:
            self._runner.stop()

    def close(self) -> None:
        """Stop a background run now and gather it; nothing to do otherwise. Safe to repeat.

        sciris' ``close()`` shuts its pool down. Here every run releases its own workers as it
        ends, so only a background run (:meth:`run_async`) not yet finalized holds any: its
        running tasks are stopped, they and the tasks that never started are marked in
        ``skipped``, and what finished is gathered as :meth:`finalize` gathers it (a task's
        error with ``die=True`` is raised). Idle workers kept between spawn/forkserver runs
        serve every run, not this one: :func:`~parallel_jobs.release_workers` stops them.
        """
        if self._thread is None:
            return
        if not self._finished.is_set():
            self._stop_background()
            if isinstance(self._error, KeyboardInterrupt):
                self._error = None  # the interrupt this very call asked for
        self.finalize()

    def finalize(self) -> Parallel:
        """Wait for a background run, gather its results, and re-raise its error if any.

        Raises:
            KeyboardInterrupt: on Ctrl-C, once the background run and its workers are stopped.
            SystemExit: with status 143 on SIGTERM, likewise (see :meth:`run`).
        """
        if self._thread is not None:
            thread, self._thread = self._thread, None
            # Handled from the first line: a second Ctrl-C right after the first must find
            # the handler that holds it back while the run stops.
            with _RunSignals():
                try:
                    while thread.is_alive():
                        thread.join(0.1)
                except KeyboardInterrupt:
                    self._stop_background()
                    self._error = None  # the caller gets this very interrupt
                    raise
                finally:
                    # The run's own signal that it ended, not the thread's: after Ctrl-C, the
                    # thread may still be finishing its last lines when the run is over.
                    if self._finished.is_set():
                        self._complete()
                    else:
                        self._thread = thread
            if self._error is not None:
                error, self._error = self._error, None
                raise error
        return self

    def _stop_background(self) -> None:
        """On Ctrl-C while waiting for a background run, stop the run too: otherwise its
        workers would go on, and the interpreter's exit would wait for them. A second Ctrl-C
        meanwhile waits until the workers are stopped (see :class:`_RunSignals`; finalize()
        holds it back already, monitor() from here on)."""
        assert self._runner is not None
        with _RunSignals(shield=True):
            self._runner.interrupt()
            self._finished.wait(10.0)  # stopping takes milliseconds; never hang on a backend

    def _complete(self) -> None:
        """Turn the store into results, success, exceptions and times."""
        store, runner = self._store, self._runner
        assert store is not None
        assert runner is not None
        finished = datetime.datetime.now()
        self.times["finished"] = finished
        self.times["elapsed"] = time.perf_counter() - self._t0
        if self.keep_records:
            self.times.defer("jobs", lambda: list(store.elapsed))
        self.globaldict = runner.globaldict
        self.load_samples = list(runner.monitor.samples)
        self.workers_replaced = list(runner.backend.replaced)
        self.memory_limits_hit = runner.backend.memory_limits_hit
        self._status = _DONE
        ran = store.njobs - store.cancelled
        succeeded = store.succeeded
        if not self.die and succeeded < ran:
            msg = (
                f"only {succeeded} of {ran} tasks succeeded; see the exceptions attribute "
                "(or task_results) for what failed"
            )
            warnings.warn(msg, RuntimeWarning, stacklevel=_user_stacklevel())


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning, issued by this function's caller, point at the
    user's line: run(), finalize() and parallelize() reach the warning by different paths."""
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    return level


def _checkpoint_path(path: Any) -> str | None:
    """``checkpoint`` as a path string, or None."""
    if path is None:
        return None
    if not isinstance(path, (str, os.PathLike)):
        msg = f"checkpoint must be a file path (str or os.PathLike), not {type(path).__name__}"
        raise TypeError(msg)
    name = os.fspath(path)
    if not isinstance(name, str) or not name:
        msg = f"checkpoint must be a non-empty text path, not {path!r}"
        raise TypeError(msg)
    return name


def _check_iterkwargs(iterkwargs: Any) -> tuple[Any, int]:
    """Validate ``iterkwargs``; return it in indexable form and the number of tasks."""
    if isinstance(iterkwargs, Mapping):
        if not iterkwargs:
            return {}, 0
        columns: dict[str, Sequence[Any]] = {}
        lengths = set()
        for key, values in iterkwargs.items():
            if not isinstance(key, str):
                msg = f"iterkwargs keys must be argument names (str), not {key!r}"
                raise TypeError(msg)
            if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
                msg = (
                    f"iterkwargs[{key!r}] must be an iterable of per-task values, not "
                    f"{type(values).__name__}"
                )
                raise TypeError(msg)
            columns[key] = _indexable(values, f"iterkwargs[{key!r}]")
            lengths.add(len(columns[key]))
        if len(lengths) > 1:
            sizes = {key: len(values) for key, values in columns.items()}
            msg = f"every iterkwargs entry must have the same length, not {sizes}"
            raise ValueError(msg)
        return columns, lengths.pop()
    if isinstance(iterkwargs, (list, tuple)):
        for position, item in enumerate(iterkwargs):
            if not isinstance(item, Mapping):
                msg = (
                    f"iterkwargs[{position}] must be a dict of keyword arguments, not "
                    f"{type(item).__name__}"
                )
                raise TypeError(msg)
        return list(iterkwargs), len(iterkwargs)
    msg = (
        "iterkwargs must be a dict of equal-length iterables or a list of dicts, not "
        f"{type(iterkwargs).__name__}"
    )
    raise TypeError(msg)


class _RunSignals:
    """How Ctrl-C and SIGTERM end a run in the main thread (elsewhere, Python delivers neither).

    The first SIGINT or SIGTERM raises KeyboardInterrupt, which stops the run: the workers are
    killed and shared memory is released as the exception unwinds. Signals that follow (a
    second Ctrl-C, a wrapper such as ``uv run`` forwarding the terminal's) are only noted, so
    that they cannot cut that cleanup short and leave workers running: the run is ending
    anyway. A SIGTERM, first or later, becomes ``SystemExit(143)`` once the run is stopped: the
    shell sees the status of a process that SIGTERM ended, and the caller's ``finally`` blocks
    and exit handlers still run. A signal with a handler of the caller's is left to it.

    ``shield=True`` only holds signals back, and delivers the first again at the end (while
    :meth:`Parallel.monitor` stops a background run).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, shield: bool = False) -> None:
        self.shield = shield
        self.owner = os.getpid()
        self.previous: dict[int, Any] = {}
        self.received: list[int] = []

    def __enter__(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
        for signum in self.SIGNALS:
            handler = signal.getsignal(signum)
            if handler is defaults[signum]:
                self.previous[signum] = signal.signal(signum, self._on)

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        if self.shield:
            if self.received:
                # Delivered again now that the handlers of the run are back in place.
                signal.raise_signal(self.received[0])
            return
        if signal.SIGTERM in self.received:
            raise SystemExit(128 + signal.SIGTERM)
        if self.received and kind is None:
            raise KeyboardInterrupt(f"received signal {self.received[0]}")

    def _on(self, signum: int, frame: Any) -> None:
        if os.getpid() != self.owner:
            # A worker forked during the run inherited this handler: it must die of the signal
            # as a worker does, not raise KeyboardInterrupt inside its task.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received.append(signum)
        if len(self.received) == 1 and not self.shield:
            raise KeyboardInterrupt(f"received signal {signum}")


def parallelize(
    func: Callable[..., Any],
    iterarg: Any = None,
    iterkwargs: Any = None,
    args: Any = None,
    kwargs: Mapping[str, Any] | None = None,
    ncpus: float | None = None,
    maxcpu: float | None = None,
    maxmem: float | None = None,
    interval: float | None = None,
    parallelizer: str | Callable[..., Any] | None = None,
    serial: bool = False,
    progress: bool = False,
    callback: Callable[[dict[str, Any]], Any] | None = None,
    globaldict: Mapping[str, Any] | None = None,
    capture: bool = False,
    die: bool = True,
    lbkwargs: Mapping[str, Any] | None = None,
    start_method: str | None = None,
    *,
    timeout: float | None = None,
    retries: int = 0,
    chunksize: int | None = None,
    keep_records: bool = False,
    checkpoint: str | os.PathLike[str] | None = None,
    rerun_failed: bool = True,
    initializer: Callable[..., Any] | None = None,
    initargs: Sequence[Any] = (),
    max_tasks_per_worker: int | None = None,
    max_worker_memory: int | str | None = None,
    task_memory_limit: int | str | None = None,
    threads_per_worker: int | str | None = "auto",
    **func_kwargs: Any,
) -> list[Any]:
    """Call ``func`` once per input, in parallel, and return the results in input order.

    Args:
        func: the function to run.
        iterarg: the per-task values: any iterable (a tuple item is unpacked into positional
            arguments), or an integer N to call ``func()`` N times with no argument.
        iterkwargs: per-task keyword arguments: a dict of equal-length iterables
            (``{'x': [1, 2], 'y': [3, 4]}``) or a list of dicts.
        args: positional arguments appended for every task.
        kwargs: keyword arguments for every task (per-task values win).
        ncpus: how many tasks run at once: None for every CPU this process may use, a count,
            or a fraction below 1 of the CPUs. Never more than the number of tasks.
        maxcpu: start a new task only while CPU load is below this (0.8 or 80 for 80%).
        maxmem: start a new task only while memory use is below this.
        interval: seconds between load checks (and samples) when limits are set.
        parallelizer: where tasks run: 'multiprocess' (default), 'multiprocessing', 'fast',
            'thread', 'serial', 'dask', a ``distributed.Client``, or a map-like callable such
            as ``pool.map``; see the docs for the full table.
        serial: run in the calling process (same as ``parallelizer='serial'``).
        progress: show a progress bar.
        callback: called in this process after each task with a dict: index, njobs, args,
            kwargs, globaldict, outdict (result, success, exception, elapsed); setting
            ``data['stop'] = True`` starts no further tasks.
        globaldict: a dict shared by every task, passed as the keyword ``globaldict``.
        capture: keep what each task prints to stdout (``Parallel.stdout``) instead of
            printing it; not with the 'thread' parallelizer, whose tasks share one stdout.
        die: stop at the first failure and raise it (as its own type); with False, run every
            task, and a failed task's result is its exception (as in sciris).
        lbkwargs: sciris' load-balancer options as a dict: ``maxcpu``, ``maxmem`` and
            ``interval`` (the arguments of those names win unless None); ``cpu_interval``,
            ``maxtime``, ``label`` and ``verbose`` are accepted and ignored.
        start_method: 'fork', 'spawn' or 'forkserver' for the process backends.
        timeout: seconds each task may run; an overrunning task fails with TaskTimeoutError.
            None, ``inf`` or 24.8 days or more: no limit.
        retries: run a failed task up to this many more times.
        chunksize: tasks per message to a worker (default: sized from measured durations).
        keep_records: keep each task's timings and the machine's load, which only a
            ``Parallel`` shows; off here, where only the results are returned.
        checkpoint: a SQLite file that each finished task is written to as it finishes; a
            run that finds it there runs only the tasks it lacks, or whose inputs changed
            (see docs/long-runs.md). Another run holding it, or a file of another function,
            is a :class:`~parallel_jobs.CheckpointError` at the start.
        rerun_failed: with ``checkpoint``, run the tasks that failed before again (False:
            keep their failures).
        initializer: called once in each worker, with ``initargs``, before its first task
            (e.g. to fill :func:`~parallel_jobs.worker_state`); its failure is an
            :class:`~parallel_jobs.InitializerError` naming the worker, raised once.
        initargs: the positional arguments of ``initializer``.
        max_tasks_per_worker: replace a worker after this many tasks (between tasks).
        max_worker_memory: replace a worker, before its next task, once its RSS exceeds this
            (bytes, or a size such as ``"2 GB"``).
        task_memory_limit: kill a task whose worker's RSS goes past this (bytes or ``"2 GB"``)
            while it runs; it fails with :class:`~parallel_jobs.MemoryLimitError`.
        threads_per_worker: threads each BLAS/OpenMP library may use in a worker process:
            ``'auto'`` for ``cpus // ncpus`` (at least 1), a number, or None to leave them.
        **func_kwargs: merged into ``kwargs``. A keyword close to an option's name
            (``ncpu=``) that ``func`` cannot take is a TypeError, before anything runs.

    Returns:
        The list of return values, one per task, in input order.

    Examples:
        >>> def f(x, y):
        ...     return x * y
        >>> parallelize(f, iterarg=[(1, 2), (2, 3), (3, 4)], parallelizer="serial")
        [2, 6, 12]
        >>> parallelize(f, iterkwargs={"x": [1, 2, 3], "y": [2, 3, 4]}, parallelizer="thread")
        [2, 6, 12]
    """
    if "label" in func_kwargs and (kwargs is None or isinstance(kwargs, Mapping)):
        # Not an option of parallelize(), as in sciris: an argument of the function.
        kwargs = {**(kwargs or {}), "label": func_kwargs.pop("label")}
    parallel = Parallel(
        func, iterarg, iterkwargs, args, kwargs, ncpus, maxcpu, maxmem, interval, parallelizer,
        serial, progress, callback, globaldict, None, capture, die, lbkwargs, start_method,
        timeout=timeout, retries=retries, chunksize=chunksize, keep_records=keep_records,
        checkpoint=checkpoint, rerun_failed=rerun_failed, initializer=initializer,
        initargs=initargs, max_tasks_per_worker=max_tasks_per_worker,
        max_worker_memory=max_worker_memory, task_memory_limit=task_memory_limit,
        threads_per_worker=threads_per_worker, **func_kwargs,
    )
    parallel.run()
    assert parallel.results is not None
    return parallel.results


def imap(
    func: Callable[..., Any],
    iterarg: Any = None,
    iterkwargs: Any = None,
    args: Any = None,
    kwargs: Mapping[str, Any] | None = None,
    ncpus: float | None = None,
    maxcpu: float | None = None,
    maxmem: float | None = None,
    interval: float | None = None,
    parallelizer: str | Callable[..., Any] | None = None,
    serial: bool = False,
    progress: bool = False,
    callback: Callable[[dict[str, Any]], Any] | None = None,
    globaldict: Mapping[str, Any] | None = None,
    capture: bool = False,
    die: bool = True,
    lbkwargs: Mapping[str, Any] | None = None,
    start_method: str | None = None,
    *,
    label: str | None = None,
    timeout: float | None = None,
    retries: int = 0,
    chunksize: int | None = None,
    keep_records: bool = False,
    checkpoint: str | os.PathLike[str] | None = None,
    rerun_failed: bool = True,
    initializer: Callable[..., Any] | None = None,
    initargs: Sequence[Any] = (),
    max_tasks_per_worker: int | None = None,
    max_worker_memory: int | str | None = None,
    task_memory_limit: int | str | None = None,
    threads_per_worker: int | str | None = "auto",
    ordered: bool = True,
    records: bool = False,
    **func_kwargs: Any,
) -> Iterator[Any]:
    """Call ``func`` once per input, in parallel, yielding each result as it may be.

    The one-line form of :meth:`Parallel.imap`, taking the options of :func:`parallelize`.
    ``iterarg`` and ``iterkwargs`` (a dict of iterables, or an iterable of dicts) are read
    lazily, only as tasks are sent: a generator that never ends is fine, and the parent holds
    a bounded number of tasks (running, or finished and not yet taken) whatever the input's
    length. Callbacks see ``njobs`` None, and a progress bar shows no total. Breaking out of
    the loop or closing the generator stops the run at once and leaves nothing behind.

    Every argument but ``ordered`` and ``records`` means what it means for
    :func:`parallelize`.

    Args:
        func: the function to run.
        iterarg: the per-task values: any iterable, read lazily (or a count of calls).
        iterkwargs: per-task keyword arguments: a dict of iterables, or an iterable of dicts,
            read lazily.
        ordered: yield in input order; False yields in completion order.
        records: yield a :class:`~parallel_jobs.TaskResult` per task instead of its result.

    Returns:
        A generator of results (or TaskResults); a failed task's result is its exception
        with ``die=False``, and with ``die=True`` the generator raises it.

    Examples:
        >>> import itertools
        >>> squares = imap(abs, itertools.count(-2), parallelizer="serial")
        >>> [next(squares) for _ in range(4)]
        [2, 1, 0, 1]
        >>> squares.close()  # stops the run
    """
    parallel = Parallel(
        func, _streamed(iterarg), _streamed(iterkwargs), args, kwargs, ncpus, maxcpu, maxmem,
        interval, parallelizer, serial, progress, callback, globaldict, label, capture, die,
        lbkwargs, start_method, timeout=timeout, retries=retries, chunksize=chunksize,
        keep_records=keep_records, checkpoint=checkpoint, rerun_failed=rerun_failed,
        initializer=initializer, initargs=initargs, max_tasks_per_worker=max_tasks_per_worker,
        max_worker_memory=max_worker_memory, task_memory_limit=task_memory_limit,
        threads_per_worker=threads_per_worker, **func_kwargs,
    )
    return parallel.imap(ordered, records)


def load_checkpoint(path: str | os.PathLike[str]) -> list[TaskResult]:
    """What a checkpoint file holds: one :class:`~parallel_jobs.TaskResult` per task written
    (its latest outcome), in input order.

    The file is only read, without taking its lock, so a sweep may be inspected while it runs
    (it then shows what was committed so far). A failed task has its exception (rebuilt as its
    own type where it can be) and traceback text; a task whose result could not be pickled has
    ``success=True``, ``value=None`` and an ``exception`` saying why (a resumed run runs it
    again).

    Raises:
        CheckpointError: the file does not exist, cannot be read, or is no checkpoint.

    Examples:
        >>> import os, tempfile
        >>> import parallel_jobs as pj
        >>> path = os.path.join(tempfile.mkdtemp(), "squares.sqlite")
        >>> pj.parallelize(abs, [-1, 2], parallelizer="serial", checkpoint=path)
        [1, 2]
        >>> [(r.index, r.value, r.success) for r in pj.load_checkpoint(path)]
        [(0, 1, True), (1, 2, True)]
    """
    # Imported here: SQLite and hashlib (OpenSSL) cost every process 5 MB and 10 ms to import.
    from .engine.checkpoint import read_checkpoint

    return read_checkpoint(path)


def _streamed(values: Any) -> Any:
    """``values`` marked to be read lazily; a count of calls stays a count, and None None."""
    if values is None or (isinstance(values, Integral) and not isinstance(values, bool)):
        return values
    return Stream(values)


#: The options of :class:`Parallel` and :func:`parallelize`, for "did you mean" hints.
OPTION_NAMES = tuple(
    name for name in inspect.signature(Parallel).parameters if name not in ("func", "func_kwargs")
)
