"""``Parallel`` and ``parallelize()``: the sciris-compatible front door.

``Parallel`` is a facade: :mod:`~parallel_jobs.config` validates its options at construction
(a bad argument fails there, named, before any process starts), a
:class:`~parallel_jobs.engine.runner.Runner` built from them does each run, and
:mod:`~parallel_jobs.views` turns the run's column-wise store into the lists sciris users
know: ``results``, ``success``, ``exceptions``, ``times``. ``parallelize()`` builds one
``Parallel``, runs it and returns its results; ``imap()`` yields them as they come.
"""

from __future__ import annotations

import datetime
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar, overload

from .backends import Choice
from .background import BackgroundRun
from .config import (
    DEFAULTS,
    RunConfig,
    check_option_typos,
    count_tasks,
    flag,
    is_count,
    make_payload,
)
from .engine.plan import RunPlan, TaskSource
from .engine.runner import Runner, RunOutcome
from .engine.signals import RunSignals
from .engine.store import OutcomeStore, ResultStore
from .engine.stream import Stream, StreamPlan, StreamSource, StreamStore, held_limit
from .records import TaskResult
from .report import RunRecord, plot_timeline, print_report, summarize, to_records
from .views import TaskLists, Times

__all__ = ["Parallel", "imap", "load_checkpoint", "parallelize"]

_NOT_RUN, _RUNNING, _DONE = "not run", "running", "done"

T = TypeVar("T")


class _Setting(Generic[T]):
    """A value of the run's validated configuration (``P.method``), read-only as sciris'
    derived attributes are: assigning one only hides it on the instance."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, parallel: None, owner: type | None = None) -> _Setting[T]: ...

    @overload
    def __get__(self, parallel: Parallel, owner: type | None = None) -> T: ...

    def __get__(self, parallel: Parallel | None, owner: type | None = None) -> Any:
        if parallel is None:
            return self
        return getattr(parallel._config, self.name)


class _Option(_Setting[T]):
    """An option of ``Parallel`` (``P.ncpus``): reads its validated value. Setting it
    validates it, with every other option, as the constructor does; the next run uses it."""

    def __set__(self, parallel: Parallel, value: Any) -> None:
        parallel._configure(**{self.name: value})


class _PerTask:
    """A per-task list of the last run (None before one), built from its store when first
    read; assignable, as in sciris."""

    def __init__(self, doc: str) -> None:
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, parallel: Parallel | None, owner: type | None = None) -> Any:
        if parallel is None:
            return self
        return parallel._task_lists.get(self.name)

    def __set__(self, parallel: Parallel, value: Any) -> None:
        parallel._task_lists.set(self.name, value)


def _make_plan(
    func: Callable[..., Any],
    iterarg: Any,
    iterkwargs: Any,
    args: Any,
    kwargs: Mapping[str, Any] | None,
    globaldict: Mapping[str, Any] | None,
    func_kwargs: Mapping[str, Any],
) -> RunPlan | StreamPlan:
    """The tasks of a run: listed up front, or read lazily from an input marked as a Stream."""
    if isinstance(iterarg, Stream) or isinstance(iterkwargs, Stream):
        payload = make_payload(func, args, kwargs, globaldict, func_kwargs)
        return StreamPlan(getattr(iterarg, "values", iterarg),
                          getattr(iterkwargs, "values", iterkwargs), payload, globaldict)
    njobs, values, per_task = count_tasks(iterarg, iterkwargs)
    payload = make_payload(func, args, kwargs, globaldict, func_kwargs)
    return RunPlan(njobs, values, per_task, payload, globaldict)


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
        maxcpu, maxmem, interval: the merged load limits, as fractions and seconds.
        die, timeout, retries, chunksize, progress, callback, start_method: as given,
            validated. Setting any option validates it, with every other option, as the
            constructor does; the next run uses it.
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

    # Each option reads as its validated type (P.ncpus is an int however it was given) and
    # takes any value that the constructor takes.
    ncpus: _Option[int] = _Option()
    maxcpu: _Option[float | None] = _Option()
    maxmem: _Option[float | None] = _Option()
    interval: _Option[float | None] = _Option()
    parallelizer: _Option[Any] = _Option()
    serial: _Option[bool] = _Option()
    progress: _Option[bool] = _Option()
    callback: _Option[Callable[[dict[str, Any]], Any] | None] = _Option()
    label: _Option[str | None] = _Option()
    capture: _Option[bool] = _Option()
    die: _Option[bool] = _Option()
    lbkwargs: _Option[Mapping[str, Any]] = _Option()
    start_method: _Option[str | None] = _Option()
    timeout: _Option[float | None] = _Option()
    retries: _Option[int] = _Option()
    chunksize: _Option[int | None] = _Option()
    keep_records: _Option[bool] = _Option()
    checkpoint: _Option[str | None] = _Option()
    rerun_failed: _Option[bool] = _Option()
    initializer: _Option[Callable[..., Any] | None] = _Option()
    initargs: _Option[Sequence[Any]] = _Option()
    max_tasks_per_worker: _Option[int | None] = _Option()
    max_worker_memory: _Option[int | str | None] = _Option()
    task_memory_limit: _Option[int | str | None] = _Option()
    threads_per_worker: _Option[int | str | None] = _Option()
    method: _Setting[str] = _Setting()
    is_async: _Setting[bool] = _Setting()
    choice: _Setting[Choice] = _Setting()
    results = _PerTask("Each task's return value, in input order (None for a failed or "
                       "skipped task).")
    success = _PerTask("Whether each task succeeded.")
    skipped = _PerTask("Whether each task never ran because the run stopped early (die, "
                       "Ctrl-C, callback).")
    exceptions = _PerTask("What each task raised (or what stopped it: a crash, a timeout), "
                          "else None.")
    stdout = _PerTask("What each task printed to stdout, with ``capture=True``; ``''`` for "
                      "every task without it (as in sciris); None before a run.")

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
            check_option_typos(func, func_kwargs)
        # The options as given, by name: all of them are checked again when one is set.
        given = {name: value for name, value in locals().items() if name in DEFAULTS}
        self.func, self.iterarg, self.iterkwargs, self.args = func, iterarg, iterkwargs, args
        self.inputdict = globaldict
        self.embarrassing = is_count(iterarg)
        self._plan = _make_plan(func, iterarg, iterkwargs, args, kwargs, globaldict, func_kwargs)
        self._given: dict[str, Any] = {}
        self._configure(**given)
        self.reset()

    def _configure(self, **options: Any) -> None:
        given = {**self._given, **options}
        self._config = RunConfig.create(self.njobs, self.inputdict is not None, **given)
        self._given = given

    @property
    def njobs(self) -> int | None:
        """The number of tasks (None for an input read lazily, see :func:`imap`)."""
        return self._plan.njobs

    @property
    def kwargs(self) -> Mapping[str, Any]:
        """The keyword arguments every task gets: ``kwargs`` merged with ``**func_kwargs``."""
        return self._plan.payload.kwargs

    # -- state -----------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget any previous run: back to the state right after construction."""
        if self.running:
            msg = "cannot reset a Parallel while it is running; call finalize() first"
            raise RuntimeError(msg)
        self._store: ResultStore | None = None
        self._runner: Runner | None = None
        self._background: BackgroundRun | None = None
        self._task_lists = TaskLists(None)
        self._status = _NOT_RUN
        self._take(None)
        self.times = Times(started=None, finished=None, elapsed=None, jobs=None)
        self._t0 = 0.0

    @property
    def running(self) -> bool:
        """Whether tasks are running now."""
        if getattr(self, "_status", _NOT_RUN) != _RUNNING:
            return False
        # A background run has ended when its thread has, even before finalize() gathers it.
        return self._background is None or self._background.alive()

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

    def _record(self) -> RunRecord:
        if not self.ready:
            msg = f"no finished run to report on (status {self.status!r}); call run() first"
            raise RuntimeError(msg)
        return RunRecord(
            label=self.label, method=self.method, njobs=self.njobs or 0, ncpus=self.ncpus,
            started=self.times["started"], elapsed=float(self.times["elapsed"]),
            task_results=self.task_results, load_samples=self.load_samples,
            workers_replaced=self.workers_replaced, memory_limits_hit=self.memory_limits_hit,
            task=self._plan.task,
        )

    def summary(self, slowest: int = 5) -> dict[str, Any]:
        """Where the time went, as a plain dict: counts, elapsed, CPU, efficiency, memory, the
        slowest tasks, the failures and each worker's busy time.

        Examples:
            >>> P = Parallel(abs, [-1, 2], parallelizer="serial").run()
            >>> P.summary()["succeeded"]
            2
        """
        return summarize(self._record(), slowest)

    def report(self, console: Any = None, slowest: int = 5) -> None:
        """Print :meth:`summary` as tables on ``console`` (a ``rich.console.Console``, stdout
        by default)."""
        print_report(self._record(), console, slowest)

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per task (status, value, error, times, CPU, memory, pid, attempts), ready
        for ``pandas.DataFrame(P.to_records())``.

        Examples:
            >>> P = Parallel(abs, [-1, 2], parallelizer="serial").run()
            >>> [(r["index"], r["status"]) for r in P.to_records()]
            [(0, 'succeeded'), (1, 'succeeded')]
        """
        return to_records(self._record())

    def plot_timeline(self, path: Any = None) -> Any:
        """Draw each worker's tasks over time with the machine's load underneath; return the
        matplotlib Figure and save it as a PNG at ``path`` if given. Needs the ``plot`` extra.

        Examples:
            >>> P = Parallel(abs, [-1, 2], parallelizer="serial").run()
            >>> figure = P.plot_timeline()  # or P.plot_timeline("timeline.png")
            >>> len(figure.axes)
            2
        """
        return plot_timeline(self._record(), path)

    # -- running ---------------------------------------------------------------------------------

    def _begin(self, store: OutcomeStore | None = None,
               source: TaskSource | None = None) -> Runner:
        if self.running:
            msg = "this Parallel is already running; call finalize() before running it again"
            raise RuntimeError(msg)
        self.reset()
        if store is None:
            if self.njobs is None:
                msg = "this Parallel reads its input as a stream: iterate over imap() instead"
                raise TypeError(msg)
            store = self._store = ResultStore(self.njobs, self.retries, self.keep_records,
                                              self.capture)
        self._runner = Runner.from_config(self._config, self._plan, store, source)
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
        if self.is_async:
            self.run_async()
            return self.finalize()
        runner = self._begin()
        with RunSignals():
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
        ordered = flag(ordered, "ordered")
        records = flag(records, "records")
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
            with RunSignals():
                for _ in steps:
                    yield from store.ready()
                yield from store.ready(final=True)
        finally:
            steps.close()  # stops and cleans up a run whose caller stopped iterating
            self._end(runner.outcome)

    def run_async(self) -> Parallel:
        """Start the run in the background and return at once; see :meth:`monitor` and
        :meth:`finalize`."""
        self._background = BackgroundRun(self._begin())
        return self

    def monitor(self, interval: float = 0.1) -> None:
        """Show a progress bar for a background run until it finishes (then call finalize)."""
        if self._background is None:
            return
        assert self._store is not None
        # With progress=True the run already draws this bar; a second one would garble both.
        self._background.show(self._store, self.label, interval, draw=not self.progress)

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
        background = self._background
        if background is None:
            return
        if not background.finished.is_set():
            background.stop_now()
            if isinstance(background.error, KeyboardInterrupt):
                background.error = None  # the interrupt this very call asked for
        self.finalize()

    def finalize(self) -> Parallel:
        """Wait for a background run, gather its results, and re-raise its error if any.

        Raises:
            KeyboardInterrupt: on Ctrl-C, once the background run and its workers are stopped.
            SystemExit: with status 143 on SIGTERM, likewise (see :meth:`run`).
        """
        background = self._background
        if background is None:
            return self
        try:
            background.wait()
        finally:
            if background.finished.is_set():
                self._background = None
                self._complete()
        error, background.error = background.error, None
        if error is not None:
            raise error
        return self

    def _end(self, outcome: RunOutcome | None) -> None:
        self.times["finished"] = datetime.datetime.now()
        self.times["elapsed"] = time.perf_counter() - self._t0
        self._take(outcome)
        self._status = _DONE

    def _take(self, outcome: RunOutcome | None) -> None:
        """Keep what a run left besides its tasks' outcomes (nothing: before a run)."""
        self.globaldict = None if outcome is None else outcome.globaldict
        self.load_samples = [] if outcome is None else outcome.load_samples
        self.workers_replaced = [] if outcome is None else outcome.workers_replaced
        self.memory_limits_hit = 0 if outcome is None else outcome.memory_limits_hit

    def _complete(self) -> None:
        """Turn the store into results, success, exceptions and times."""
        store, runner = self._store, self._runner
        assert store is not None
        assert runner is not None
        self._end(runner.outcome)
        if self.keep_records:
            self.times.defer("jobs", lambda: list(store.elapsed))
        self._task_lists = TaskLists(store)
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
    *,
    ordered: bool = True,
    records: bool = False,
    **options: Any,
) -> Iterator[Any]:
    """Call ``func`` once per input, in parallel, yielding each result as it may be.

    The one-line form of :meth:`Parallel.imap`, taking the options of :func:`parallelize`.
    ``iterarg`` and ``iterkwargs`` (a dict of iterables, or an iterable of dicts) are read
    lazily, only as tasks are sent: a generator that never ends is fine, and the parent holds
    a bounded number of tasks (running, or finished and not yet taken) whatever the input's
    length. Callbacks see ``njobs`` None, and a progress bar shows no total. Breaking out of
    the loop or closing the generator stops the run at once and leaves nothing behind.

    Args:
        func: the function to run.
        iterarg: the per-task values: any iterable, read lazily (or a count of calls).
        iterkwargs: per-task keyword arguments: a dict of iterables, or an iterable of dicts,
            read lazily.
        ordered: yield in input order; False yields in completion order.
        records: yield a :class:`~parallel_jobs.TaskResult` per task instead of its result.
        **options: the options of :func:`parallelize` (``ncpus``, ``die``, ``timeout``, ...),
            and ``label``, by keyword; ``keep_records`` is False unless given. Any other
            keyword goes to ``func``, as in :func:`parallelize`.

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
    options.setdefault("keep_records", False)
    parallel = Parallel(func, _streamed(iterarg), _streamed(iterkwargs), **options)
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
    if values is None or is_count(values):
        return values
    return Stream(values)
