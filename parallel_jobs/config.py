"""The configuration of a run: every option checked, with the message that names it.

:class:`RunConfig` holds the validated options of a run (how many CPUs, which backend, ``die``,
timeouts, load limits, health options, ...); :func:`count_tasks` and :func:`make_payload`
check what the tasks are built from. Everything here only checks and normalises values: it
starts nothing and imports nothing of the engine, which builds its parts from a RunConfig.
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from numbers import Integral, Real
from typing import Any

import attrs

from ._cpus import cpu_count
from .backends import Choice, resolve
from .engine.health import worker_options
from .records import Payload, WorkerOptions

__all__ = [
    "IGNORED_LBKWARGS", "LONGEST_TIMEOUT", "OPTION_NAMES", "AttrDict", "RunConfig",
    "check_option_typos", "count_tasks", "flag", "make_payload",
]

#: The longest timeout kept, in seconds: epoll waits at most 2**31 - 1 ms (24.8 days), and a
#: task deadline is waited for in one call.
LONGEST_TIMEOUT = (2**31 - 1) / 1000

#: sciris' load-balancer options that are accepted and ignored (see docs/arguments.md): the
#: gate here samples the load in one monitor thread, and a task waits for it without a limit.
IGNORED_LBKWARGS = frozenset({"cpu_interval", "maxtime", "label", "verbose"})
LOAD_OPTIONS = ("maxcpu", "maxmem", "interval")

#: The options of ``Parallel`` and ``parallelize``, in ``Parallel``'s order, for "did you
#: mean" hints (tests/test_public_api.py pins it to ``Parallel``'s signature).
OPTION_NAMES = (
    "iterarg", "iterkwargs", "args", "kwargs", "ncpus", "maxcpu", "maxmem", "interval",
    "parallelizer", "serial", "progress", "callback", "globaldict", "label", "capture", "die",
    "lbkwargs", "start_method", "timeout", "retries", "chunksize", "keep_records", "checkpoint",
    "rerun_failed", "initializer", "initargs", "max_tasks_per_worker", "max_worker_memory",
    "task_memory_limit", "threads_per_worker",
)


def indexable(values: Any, name: str) -> Sequence[Any]:
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


def number(value: Any, name: str, *, integer: bool = False) -> Any:
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


def fraction(value: Any, name: str) -> float | None:
    """A load limit as a fraction: 0.8 and 80 both mean 80%."""
    if value is None:
        return None
    share = float(number(value, name))
    share = share / 100 if share > 1 else share
    if not 0 < share <= 1:
        msg = f"{name} must be a fraction in (0, 1] or a percentage in (1, 100], not {value!r}"
        raise ValueError(msg)
    return share


def positive(value: Any, name: str, *, integer: bool = False) -> Any:
    """``value`` if it is a number above zero."""
    if not number(value, name, integer=integer) > 0:
        msg = f"{name} must be positive, not {value!r}"
        raise ValueError(msg)
    return value


def finite(value: Any, name: str) -> float:
    """A positive number of seconds that a wait can be given."""
    seconds = float(positive(value, name))
    if math.isinf(seconds):
        msg = f"{name} must be a finite number of seconds, not {value!r}"
        raise ValueError(msg)
    return seconds


def timeout_seconds(value: Any) -> float | None:
    """``timeout`` in seconds; None when there is none, also for 24.8 days or more and ``inf``."""
    if value is None:
        return None
    seconds = float(positive(value, "timeout"))
    return None if seconds >= LONGEST_TIMEOUT else seconds


def flag(value: Any, name: str) -> bool:
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


class AttrDict(dict[str, Any]):
    """A dict whose keys read as attributes too (``P.lbkwargs.maxcpu``), as sciris' objdict.

    Examples:
        >>> AttrDict(maxcpu=0.7).maxcpu
        0.7
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def merge_lbkwargs(explicit: dict[str, Any], lbkwargs: Any) -> AttrDict:
    """sciris' merge: a key of ``lbkwargs`` wins over an explicit argument that is None."""
    if lbkwargs is None:
        lbkwargs = {}
    if not isinstance(lbkwargs, Mapping):
        msg = f"lbkwargs must be a dict, not {type(lbkwargs).__name__}"
        raise TypeError(msg)
    known = (*LOAD_OPTIONS, *sorted(IGNORED_LBKWARGS))
    for key in lbkwargs:
        if key not in known:
            # sciris renamed maxload to maxcpu in 2.0 and still takes the old name.
            close = ["maxcpu"] if key == "maxload" else difflib.get_close_matches(
                str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(known)})"
            msg = f"lbkwargs has no option {key!r}{hint}"
            raise TypeError(msg)
    given = {key: value for key, value in explicit.items() if value is not None}
    return AttrDict({**explicit, **lbkwargs, **given})


def check_option_typos(func: Callable[..., Any], func_kwargs: Mapping[str, Any]) -> None:
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


def checkpoint_path(path: Any) -> str | None:
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


def _iterkwargs_columns(iterkwargs: Mapping[Any, Any]) -> tuple[dict[str, Sequence[Any]], int]:
    """A dict of per-task values, checked: str keys, equal-length iterables."""
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
        columns[key] = indexable(values, f"iterkwargs[{key!r}]")
        lengths.add(len(columns[key]))
    if len(lengths) > 1:
        sizes = {key: len(values) for key, values in columns.items()}
        msg = f"every iterkwargs entry must have the same length, not {sizes}"
        raise ValueError(msg)
    return columns, lengths.pop() if lengths else 0


def check_iterkwargs(iterkwargs: Any) -> tuple[Any, int]:
    """Validate ``iterkwargs``; return it in indexable form and the number of tasks."""
    if isinstance(iterkwargs, Mapping):
        return _iterkwargs_columns(iterkwargs)
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


def is_count(iterarg: Any) -> bool:
    """Whether ``iterarg`` is a number of calls rather than the per-task values."""
    return isinstance(iterarg, Integral) and not isinstance(iterarg, bool)


def count_tasks(iterarg: Any, iterkwargs: Any) -> tuple[int, Sequence[Any] | None, Any]:
    """Check the per-task inputs of a run whose inputs are listed up front.

    Returns:
        The number of tasks, ``iterarg`` in indexable form (None for a count of calls or no
        iterarg) and ``iterkwargs`` in indexable form (or None).
    """
    njobs: int | None = None
    values: Sequence[Any] | None = None
    if iterarg is not None:
        if is_count(iterarg):
            njobs = int(iterarg)  # run the function that many times, with no iterated value
        else:
            values = indexable(iterarg, "iterarg")
            njobs = len(values)
    per_task: Any = None
    if iterkwargs is not None:
        per_task, count = check_iterkwargs(iterkwargs)
        if njobs is not None and count != njobs:
            msg = f"iterarg and iterkwargs must have the same length, not {njobs} and {count}"
            raise ValueError(msg)
        njobs = count
    if not njobs or njobs < 0:
        msg = (
            "nothing to run: give iterarg (an iterable or a positive integer) and/or "
            f"iterkwargs with at least one entry (got iterarg={iterarg!r}, "
            f"iterkwargs={iterkwargs!r})"
        )
        raise ValueError(msg)
    return njobs, values, per_task


def make_payload(
    func: Callable[..., Any],
    args: Any,
    kwargs: Mapping[str, Any] | None,
    globaldict: Mapping[str, Any] | None,
    func_kwargs: Mapping[str, Any],
) -> Payload:
    """What every task shares: the function, ``args`` as a tuple, and ``kwargs`` merged with
    ``**func_kwargs``."""
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
    return Payload(func, shared_args, {**(kwargs or {}), **func_kwargs})


def resolve_ncpus(ncpus: Any, njobs: int | None) -> int:
    """How many tasks run at once: every usable CPU, a count, or a fraction of the CPUs;
    never more than ``njobs`` (None for a stream, whose length is unknown)."""
    available = cpu_count()
    if ncpus is None:
        count = available
    else:
        share = float(number(ncpus, "ncpus"))
        if not 0 < share < math.inf:
            msg = (
                f"ncpus must be positive and finite (a count, or a fraction below 1), "
                f"not {ncpus!r}"
            )
            raise ValueError(msg)
        count = math.ceil(available * share) if share < 1 else int(share)
    return max(1, count if njobs is None else min(count, njobs))


def check_start_method(start_method: str | None) -> str | None:
    """``start_method`` if this platform has it."""
    if start_method is None:
        return None
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    if start_method not in methods:
        msg = f"start_method must be one of {methods}, not {start_method!r}"
        raise ValueError(msg)
    return start_method


def check_retries(retries: Any) -> int:
    """``retries`` as a whole number >= 0."""
    if isinstance(retries, bool) or not isinstance(retries, Integral) or retries < 0:
        msg = f"retries must be a whole number >= 0, not {retries!r}"
        raise ValueError(msg)
    return int(retries)


def check_callback(callback: Any) -> Any:
    """``callback`` if it is None or callable."""
    if callback is not None and not callable(callback):
        msg = f"callback must be callable, not {type(callback).__name__}"
        raise TypeError(msg)
    return callback


def check_method(choice: Choice, capture: bool, shares_dict: bool) -> None:
    """Refuse the options that the chosen backend cannot honour."""
    if capture and choice.method == "thread":
        msg = (
            "capture=True cannot be used with the 'thread' parallelizer: threads share one "
            "stdout, so a task's output cannot be told from another's; use a process or the "
            "serial parallelizer"
        )
        raise ValueError(msg)
    if shares_dict and choice.method == "dask":
        msg = (
            "globaldict cannot be shared across a dask cluster: its workers may be on other "
            "machines; pass the data in kwargs, or use a local parallelizer"
        )
        raise ValueError(msg)


#: Each option of a run and its default in ``Parallel``: what :meth:`RunConfig.create` takes.
DEFAULTS: dict[str, Any] = {
    "ncpus": None, "maxcpu": None, "maxmem": None, "interval": None, "parallelizer": None,
    "serial": False, "progress": False, "callback": None, "label": None, "capture": False,
    "die": True, "lbkwargs": None, "start_method": None, "timeout": None, "retries": 0,
    "chunksize": None, "keep_records": True, "checkpoint": None, "rerun_failed": True,
    "initializer": None, "initargs": (), "max_tasks_per_worker": None,
    "max_worker_memory": None, "task_memory_limit": None, "threads_per_worker": "auto",
}


@attrs.frozen(slots=True, kw_only=True)
class RunConfig:
    """Every option of a run, validated and normalised (build one with :meth:`create`).

    The options the user gave keep their names; ``maxcpu``, ``maxmem`` and ``interval`` are
    the merged load-balancer values (fractions and seconds), ``choice`` the resolved
    ``parallelizer``, ``worker`` the health options as the workers take them (None when none is
    on), and ``njobs`` the number of tasks (None for a lazily read input).
    """

    njobs: int | None
    ncpus: int
    choice: Choice
    parallelizer: Any
    serial: bool
    progress: bool
    capture: bool
    die: bool
    callback: Callable[[dict[str, Any]], Any] | None
    label: str | None
    lbkwargs: AttrDict
    maxcpu: float | None
    maxmem: float | None
    interval: float | None
    timeout: float | None
    retries: int
    chunksize: int | None
    start_method: str | None
    keep_records: bool
    checkpoint: str | None
    rerun_failed: bool
    initializer: Callable[..., Any] | None
    initargs: Sequence[Any]
    max_tasks_per_worker: int | None
    max_worker_memory: int | str | None
    task_memory_limit: int | str | None
    threads_per_worker: int | str | None
    worker: WorkerOptions | None

    @property
    def method(self) -> str:
        """The backend's name ('multiprocess', 'thread', ...)."""
        return self.choice.method

    @property
    def is_async(self) -> bool:
        """Whether ``parallelizer`` asked for a background run ('-async')."""
        return self.choice.is_async

    @property
    def limited(self) -> bool:
        """Whether a load limit holds tasks back (``maxcpu`` or ``maxmem``)."""
        return self.maxcpu is not None or self.maxmem is not None

    @classmethod
    def create(cls, njobs: int | None, shares_dict: bool = False, **options: Any) -> RunConfig:
        """Check ``options`` (those of :data:`DEFAULTS`; missing ones take their default).

        Args:
            njobs: the number of tasks, or None when the input is read lazily.
            shares_dict: whether the run shares a ``globaldict``.
            **options: the options as the user gave them.

        Raises:
            TypeError, ValueError: naming the option that is wrong.
        """
        given = {**DEFAULTS, **options}
        serial, capture = flag(given["serial"], "serial"), flag(given["capture"], "capture")
        progress, die = flag(given["progress"], "progress"), flag(given["die"], "die")
        choice = resolve(given["parallelizer"], serial)
        check_method(choice, capture, shares_dict)
        ncpus = resolve_ncpus(given["ncpus"], njobs)
        lbkwargs = merge_lbkwargs({name: given[name] for name in LOAD_OPTIONS}, given["lbkwargs"])
        interval = lbkwargs["interval"]
        chunksize = given["chunksize"]
        health = {name: given[name] for name in (
            "initializer", "initargs", "max_tasks_per_worker", "max_worker_memory",
            "task_memory_limit", "threads_per_worker")}
        return cls(
            njobs=njobs, ncpus=ncpus, choice=choice, parallelizer=given["parallelizer"],
            serial=serial, progress=progress, capture=capture, die=die,
            lbkwargs=lbkwargs, maxcpu=fraction(lbkwargs["maxcpu"], "maxcpu"),
            maxmem=fraction(lbkwargs["maxmem"], "maxmem"),
            interval=None if interval is None else finite(interval, "interval"),
            callback=check_callback(given["callback"]), label=given["label"],
            timeout=timeout_seconds(given["timeout"]), retries=check_retries(given["retries"]),
            chunksize=None if chunksize is None else int(
                positive(chunksize, "chunksize", integer=True)),
            start_method=check_start_method(given["start_method"]),
            keep_records=flag(given["keep_records"], "keep_records"),
            checkpoint=checkpoint_path(given["checkpoint"]),
            rerun_failed=flag(given["rerun_failed"], "rerun_failed"), **health,
            worker=worker_options(choice.method, ncpus, cpu_count(), **health),
        )
