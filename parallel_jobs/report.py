"""Where did the time go? Summaries, tables, records and a timeline of a finished run.

Everything here reads a :class:`RunRecord` of a finished run (its task results, load samples
and times, which ``Parallel`` hands over) and changes nothing: :func:`summarize` condenses it
into a plain dict, :func:`print_report` prints that dict as rich tables, :func:`to_records`
gives one dict per task for ``pandas.DataFrame``, and :func:`plot_timeline` draws each
worker's tasks over time with the machine's load underneath. matplotlib is imported only by
:func:`plot_timeline`.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from .engine.monitor import LoadSample
from .errors import TaskTimeoutError, WorkerCrashedError, exception_text
from .records import Task, TaskResult, shorten

__all__ = [
    "RunRecord", "plot_timeline", "print_report", "require_matplotlib", "summarize",
    "to_records",
]

PLOT_INSTALL_HINT = (
    "plot_timeline needs matplotlib: pip install matplotlib "
    '(or, in a checkout of parallel_jobs, pip install ".[plot]")'
)

ADVICE_MIN_ELAPSED = 1.0
"""Seconds a run must last before the report advises on task size: a shorter run is mostly
starting its workers, which larger tasks do not shorten, and is not worth tuning."""
ADVICE_MIN_WAITING = 0.25
"""Share of the workers' capacity (elapsed x workers) that they must have spent waiting between
their own tasks before the report advises on task size. Idle time before a worker's first task
(start-up) or after its last (the run's tail, a run of few or uneven tasks) does not count:
fewer, larger tasks would not remove it, and would lengthen the tail."""


@attrs.frozen(slots=True, kw_only=True)
class RunRecord:
    """What the report reads of a finished run.

    Attributes:
        label: the run's name, or None.
        method: the backend ('multiprocess', 'thread', ...).
        njobs: the number of tasks.
        ncpus: how many tasks ran at once.
        started: when the run started.
        elapsed: the run's seconds.
        task_results: one TaskResult per task, in input order.
        load_samples: the machine's load sampled during the run.
        workers_replaced: (pid, reason) of each worker replaced by a health option.
        memory_limits_hit: how many tasks were killed for breaking ``task_memory_limit``.
        task: the Task record of a task index (its own values, for the tables).
    """

    label: str | None
    method: str
    njobs: int
    ncpus: int
    started: datetime.datetime
    elapsed: float
    task_results: list[TaskResult]
    load_samples: Sequence[LoadSample]
    workers_replaced: Sequence[tuple[int, str]]
    memory_limits_hit: int
    task: Callable[[int], Task]


_MOST_ARGUMENT_CHARS = 80


def _arguments(run: RunRecord, index: int) -> str:
    """The task's own arguments, shortened for a table: ``x=3, y=4`` or ``5``; each value to
    about 60 characters, and all of them to 80."""
    return shorten(run.task(index), 60, 6, _MOST_ARGUMENT_CHARS)


def _worker_lanes(results: Sequence[TaskResult]) -> dict[int, list[TaskResult]]:
    """The tasks each process ran, keyed by pid, in the order the processes first started one."""
    lanes: dict[int, list[TaskResult]] = {}
    for result in sorted((r for r in results if r.attempts), key=lambda r: r.started):
        lanes.setdefault(result.pid, []).append(result)
    return lanes


def _waiting(lane: Sequence[TaskResult]) -> float:
    """Seconds the process of ``lane`` spent between its tasks: neither before its first one
    (start-up) nor after its last (the run's tail). Tasks that overlap (threads share a pid)
    count as one span."""
    waited, reach = 0.0, lane[0].started + lane[0].elapsed
    for result in lane[1:]:
        waited += max(0.0, result.started - reach)
        reach = max(reach, result.started + result.elapsed)
    return waited


def _end_of(lane: Sequence[TaskResult]) -> str:
    """What ended the process of ``lane``, when its last task says so, else ``""``."""
    last = lane[-1]
    if isinstance(last.exception, WorkerCrashedError):
        return f"crashed in task {last.index}"
    if isinstance(last.exception, TaskTimeoutError) and last.exception.stopped:
        return f"stopped: task {last.index} overran its timeout"
    return ""


def _worker_notes(lanes: dict[int, list[TaskResult]], ncpus: int,
                  retired: dict[int, str] | None = None) -> dict[int, str]:
    """Which worker process ended how, and which one took its place, as far as the records tell.

    A process ended if its last task failed with WorkerCrashedError, or with a TaskTimeoutError
    that stopped its worker. A process whose first task started after ``ncpus`` others had
    started one took the place of one that ended, since a pool never holds more than ``ncpus``
    workers; it is paired with the earliest-ended unpaired process that ended before it
    started. A crash whose task was retried leaves no record of its own (the retry's replaces
    it), so a process with no such partner is said to have replaced "an earlier worker". The
    parent's own pid (serial and thread backends) and pid 0 (unknown) are never said to end.
    A process in ``retired`` (pid: reason) ended because a health option replaced it.
    """
    retired = retired or {}
    parent = os.getpid()
    ended: list[tuple[float, int]] = []  # (when, pid), in the order the processes ended
    notes: dict[int, list[str]] = {}
    for number, (pid, lane) in enumerate(lanes.items()):
        if pid in (0, parent):
            continue
        own = notes.setdefault(pid, [])
        first = lane[0].started
        if number >= ncpus:
            earlier = [item for item in ended if item[0] <= first]
            if earlier:
                ended.remove(earlier[0])
                own.append(f"replaced pid {earlier[0][1]}")
            else:
                own.append("replaced an earlier worker")
        end = _end_of(lane)
        if pid in retired:
            # A crash under task_memory_limit says so already: add why, not a second end.
            end = f"{end}: {retired[pid]}" if end else f"retired: {retired[pid]}"
        if end:
            own.append(end)
            ended.append((lane[-1].started + lane[-1].elapsed, pid))
            ended.sort()
    return {pid: "; ".join(parts) for pid, parts in notes.items() if parts}


def summarize(run: RunRecord, slowest: int = 5) -> dict[str, Any]:
    """Condense a finished run into a plain dict.

    Efficiency compares what the workers did with what they could have done in the run's
    elapsed time: ``busy_efficiency`` counts the seconds they spent inside tasks, and
    ``cpu_efficiency`` the CPU seconds those tasks used (low when tasks wait on I/O or sleep).

    Args:
        run: the record of a finished run.
        slowest: how many of the slowest tasks to list.

    Returns:
        A dict with ``label``, ``method``, ``njobs``, ``ncpus``, ``succeeded``, ``failed``,
        ``not_run``, ``elapsed``, ``busy_time``, ``cpu_time``, ``busy_efficiency``,
        ``cpu_efficiency``, ``waiting_time`` (seconds the workers spent between their own tasks,
        summed: the per-task cost of messages, the parent's bookkeeping and the callback),
        ``peak_rss`` (bytes, the largest of any task), ``peak_cpu`` and ``peak_memory`` (the
        machine's highest sampled load, 0 to 1), ``slowest`` (index, elapsed, cpu_time,
        peak_rss, arguments), ``failures`` (index, type, message, attempts, arguments) and
        ``workers`` (pid, tasks, busy, cpu_time, peak_rss, busy_fraction, and a ``note`` saying
        whether the process crashed or was stopped, which one it replaced, and why a health
        option retired it, or ``""``), ``workers_replaced`` ((pid, reason) of each worker a
        health option replaced) and ``memory_limits_hit`` (tasks killed by
        ``task_memory_limit``).
        ``arguments`` are the task's own values, shortened to about 60 characters each.

    Examples:
        >>> from parallel_jobs import Parallel
        >>> P = Parallel(abs, [-1, 2, -3], parallelizer="serial").run()
        >>> info = P.summary()  # summarize(the record of P's run)
        >>> info["njobs"], info["succeeded"], info["failed"], len(info["workers"])
        (3, 3, 0, 1)
    """
    results = run.task_results
    ran = [r for r in results if r.attempts]
    elapsed = run.elapsed
    busy = sum(r.elapsed for r in ran)
    cpu = sum(r.cpu_time for r in ran)
    capacity = elapsed * run.ncpus
    samples = run.load_samples
    failed = [r for r in results if r.exception is not None]
    lanes = _worker_lanes(results)
    return {
        "label": run.label,
        "method": run.method,
        "njobs": run.njobs,
        "ncpus": run.ncpus,
        "succeeded": sum(r.success for r in results),
        "failed": len(failed),
        "not_run": len(results) - len(ran),
        "elapsed": elapsed,
        "busy_time": busy,
        "cpu_time": cpu,
        "busy_efficiency": busy / capacity if capacity > 0 else 0.0,
        "cpu_efficiency": cpu / capacity if capacity > 0 else 0.0,
        "waiting_time": sum(_waiting(lane) for lane in lanes.values()),
        "peak_rss": max((r.peak_rss for r in ran), default=0),
        "peak_cpu": max((s.cpu for s in samples), default=None),
        "peak_memory": max((s.memory for s in samples), default=None),
        "slowest": [
            {"index": r.index, "elapsed": r.elapsed, "cpu_time": r.cpu_time,
             "peak_rss": r.peak_rss, "arguments": _arguments(run, r.index)}
            for r in sorted(ran, key=lambda r: r.elapsed, reverse=True)[:slowest]
        ],
        "failures": [
            {"index": r.index, "type": type(r.exception).__name__,
             "message": "" if r.exception is None else exception_text(r.exception),
             "attempts": r.attempts, "arguments": _arguments(run, r.index)}
            for r in failed
        ],
        "workers": _workers(lanes, run),
        "workers_replaced": list(run.workers_replaced),
        "memory_limits_hit": run.memory_limits_hit,
    }


def _workers(lanes: dict[int, list[TaskResult]], run: RunRecord) -> list[dict[str, Any]]:
    """The ``workers`` rows of :func:`summarize`: what each process did, and how it ended."""
    notes = _worker_notes(lanes, run.ncpus, dict(run.workers_replaced))
    workers = []
    for pid, lane in lanes.items():
        lane_busy = sum(r.elapsed for r in lane)
        workers.append({
            "pid": pid,
            "tasks": len(lane),
            "busy": lane_busy,
            "cpu_time": sum(r.cpu_time for r in lane),
            "peak_rss": max(r.peak_rss for r in lane),
            "busy_fraction": lane_busy / run.elapsed if run.elapsed > 0 else 0.0,
            "note": notes.get(pid, ""),
        })
    return workers




def _seconds(seconds: float) -> str:
    if seconds >= 1 or seconds == 0:
        return f"{seconds:,.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} µs"


def _mib(nbytes: int) -> str:
    # 0 means not measured: a task its worker's crash cut short, or a platform without it.
    return f"{nbytes / 2**20:,.1f} MiB" if nbytes else "--"


def _percent(fraction: float | None) -> str:
    return "--" if fraction is None else f"{fraction:.0%}"


def print_report(run: RunRecord, console: Any = None, slowest: int = 5) -> None:
    """Print :func:`summarize` as rich tables: the run, its slowest tasks, failures, workers.

    Below them comes advice on task size when it can matter: when a run of at least
    ``ADVICE_MIN_ELAPSED`` seconds left its workers waiting between their tasks for at least
    ``ADVICE_MIN_WAITING`` of their time.

    Args:
        run: the record of a finished run.
        console: a ``rich.console.Console`` to print on; stdout by default.
        slowest: how many of the slowest tasks to list.

    Examples:
        >>> import io
        >>> from rich.console import Console
        >>> from parallel_jobs import Parallel
        >>> console = Console(file=io.StringIO(), width=100)
        >>> Parallel(abs, [-1, 2], parallelizer="serial").run().report(console)
        >>> "2 of 2" in console.file.getvalue()
        True
    """
    from rich.console import Console

    info = summarize(run, slowest)
    console = console if console is not None else Console()
    console.print(_overview_table(info))
    if info["slowest"]:
        console.print(_slowest_table(info["slowest"]))
    if info["failures"]:
        console.print(_failures_table(info["failures"]))
    console.print(_workers_table(info["workers"]))
    advice = _advice(info)
    if advice:
        console.print(advice)


def _overview_table(info: dict[str, Any]) -> Any:
    from rich.table import Table
    from rich.text import Text

    title = f"{info['label']}: " if info["label"] else ""
    # A Text, not a str: the label is the user's, never rich markup ("fit [1/3]").
    overview = Table(title=Text(f"{title}{info['njobs']} tasks on {info['ncpus']} workers"),
                     show_header=False)
    overview.add_column(style="bold")
    overview.add_column(justify="right")
    rows = [
        ("method", str(info["method"])),
        ("succeeded", f"{info['succeeded']} of {info['njobs']}"),
        ("failed", str(info["failed"])),
        ("not run", str(info["not_run"])),
        ("elapsed", _seconds(info["elapsed"])),
        ("busy time (all workers)", _seconds(info["busy_time"])),
        ("task CPU time", _seconds(info["cpu_time"])),
        ("busy efficiency", _percent(info["busy_efficiency"])),
        ("CPU efficiency", _percent(info["cpu_efficiency"])),
        ("peak task memory (RSS)", _mib(info["peak_rss"])),
        *([("workers replaced (health options)", str(len(info["workers_replaced"])))]
          if info["workers_replaced"] else []),
        *([("tasks past task_memory_limit", str(info["memory_limits_hit"]))]
          if info["memory_limits_hit"] else []),
        ("peak machine CPU / memory",
         f"{_percent(info['peak_cpu'])} / {_percent(info['peak_memory'])}"),
    ]
    for key, value in rows:
        overview.add_row(key, value)
    return overview


def _slowest_table(rows: list[dict[str, Any]]) -> Any:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="slowest tasks")
    for column in ("task", "time", "CPU time", "peak RSS"):
        table.add_column(column, justify="right")
    table.add_column("arguments")
    for row in rows:
        table.add_row(str(row["index"]), _seconds(row["elapsed"]), _seconds(row["cpu_time"]),
                      _mib(row["peak_rss"]), escape(row["arguments"]))
    return table


def _failures_table(rows: list[dict[str, Any]]) -> Any:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="failures", title_style="bold red")
    for column in ("task", "arguments", "error", "message", "attempts"):
        table.add_column(column, justify="right" if column in ("task", "attempts") else "left")
    for row in rows:
        table.add_row(str(row["index"]), escape(row["arguments"]), row["type"],
                      escape(row["message"]), str(row["attempts"]))
    return table


def _workers_table(rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    noted = any(row["note"] for row in rows)
    table = Table(title="workers")
    for column in ("pid", "tasks", "busy time", "busy", "CPU time", "peak RSS"):
        table.add_column(column, justify="right")
    if noted:
        table.add_column("note")
    for row in rows:
        cells = [str(row["pid"]), str(row["tasks"]), _seconds(row["busy"]),
                 _percent(row["busy_fraction"]), _seconds(row["cpu_time"]),
                 _mib(row["peak_rss"])]
        table.add_row(*cells, *([row["note"]] if noted else []))
    return table


def _advice(info: dict[str, Any]) -> str:
    """A line of advice when per-task costs took a real share of a run worth tuning, else ``""``."""
    capacity = info["elapsed"] * info["ncpus"]
    if info["elapsed"] < ADVICE_MIN_ELAPSED or capacity <= 0:
        return ""
    share = info["waiting_time"] / capacity
    if share < ADVICE_MIN_WAITING:
        return ""
    return (
        f"[yellow]workers waited between their tasks for {share:.0%} of the run:[/] what each "
        "task costs outside the function (sending it and its result, the callback, waiting for "
        "maxcpu/maxmem) outweighs the work; fewer, larger tasks (or a larger chunksize) would "
        "help."
    )


def _moment(seconds: float) -> datetime.datetime | None:
    return datetime.datetime.fromtimestamp(seconds) if seconds else None


def to_records(run: RunRecord) -> list[dict[str, Any]]:
    """One dict per task, in input order, ready for ``pandas.DataFrame``.

    Keys: ``index``, ``status`` ('succeeded', 'failed' or 'not run'), ``value``, ``error``
    (exception type name or None), ``message``, ``started`` and ``finished`` (datetimes, None if
    never run), ``elapsed``, ``cpu_time``, ``peak_rss``, ``pid`` and ``attempts``.

    Examples:
        >>> from parallel_jobs import Parallel
        >>> P = Parallel(abs, [-1, 2], parallelizer="serial").run()
        >>> [(r["index"], r["status"], r["value"]) for r in P.to_records()]
        [(0, 'succeeded', 1), (1, 'succeeded', 2)]
    """
    records = []
    for r in run.task_results:
        if r.success:
            status = "succeeded"
        elif r.exception is not None:
            status = "failed"
        else:
            status = "not run"
        records.append({
            "index": r.index,
            "status": status,
            "value": r.value,
            "error": None if r.exception is None else type(r.exception).__name__,
            "message": None if r.exception is None else exception_text(r.exception),
            "started": _moment(r.started),
            "finished": _moment(r.finished),
            "elapsed": r.elapsed,
            "cpu_time": r.cpu_time,
            "peak_rss": r.peak_rss,
            "pid": r.pid,
            "attempts": r.attempts,
        })
    return records


def require_matplotlib() -> None:
    """Import what :func:`plot_timeline` draws with, so that a caller can check before a run.

    Raises:
        ImportError: without matplotlib, saying how to install it.
    """
    try:
        import matplotlib.backends.backend_agg
        import matplotlib.figure
        import matplotlib.patches  # noqa: F401
    except ImportError as exc:
        raise ImportError(PLOT_INSTALL_HINT) from exc


def plot_timeline(run: RunRecord, path: Any = None) -> Any:
    """Draw each worker's tasks over time, failed ones marked, with the machine's load below.

    Args:
        run: the record of a finished run.
        path: where to save a PNG of the figure, or None.

    Returns:
        The ``matplotlib.figure.Figure``; it shows itself in Jupyter.

    Raises:
        ImportError: without matplotlib (the ``plot`` extra).

    Examples:
        >>> from parallel_jobs import Parallel
        >>> figure = Parallel(abs, [-1, 2], parallelizer="serial").run().plot_timeline()
        >>> [axes.get_ylabel() for axes in figure.axes]
        ['worker', 'machine load %']
    """
    results = run.task_results
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    origin = run.started.timestamp()
    lanes = _worker_lanes(results)
    # A Figure with its own Agg canvas touches no global pyplot state and needs no display.
    figure = Figure(figsize=(10, 1.6 + 0.45 * max(len(lanes), 1) + 1.8), layout="constrained")
    FigureCanvasAgg(figure)
    tasks_ax, load_ax = figure.subplots(
        2, 1, sharex=True, gridspec_kw={"height_ratios": [max(len(lanes), 1) + 1, 2]}
    )
    ok_colour, failed_colour = "#4c72b0", "#c44e52"
    elapsed = run.elapsed
    for lane_number, lane in enumerate(lanes.values()):
        for colour, wanted in ((ok_colour, True), (failed_colour, False)):
            spans = _merge([(r.started - origin, r.elapsed) for r in lane if r.success is wanted],
                           resolution=elapsed / 2000)
            if spans:
                tasks_ax.broken_barh(spans, (lane_number - 0.4, 0.8), facecolors=colour,
                                     edgecolors="white", linewidth=0.5,
                                     hatch=None if wanted else "xx")
        for r in lane:
            # Only bars wide enough to hold their number get one; thousands would be a smear.
            if r.elapsed > elapsed / 30:
                tasks_ax.text(r.started - origin + r.elapsed / 2, lane_number, str(r.index),
                              ha="center", va="center", color="white", fontsize="small")
    tasks_ax.set_yticks(range(len(lanes)), [f"pid {pid}" for pid in lanes])
    tasks_ax.invert_yaxis()
    tasks_ax.set_ylabel("worker")
    tasks_ax.legend(
        handles=[Patch(facecolor=ok_colour, label="succeeded"),
                 Patch(facecolor=failed_colour, hatch="xx", label="failed")],
        loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small",
    )
    label = f"{run.label}: " if run.label else ""
    summary = summarize(run, slowest=0)
    tasks_ax.set_title(
        f"{label}{run.njobs} tasks on {run.ncpus} workers ({run.method}), "
        f"{elapsed:.2f} s, {summary['failed']} failed, "
        f"busy {summary['busy_efficiency']:.0%}"
    )
    _plot_load(load_ax, run.load_samples, origin)
    load_ax.set_xlabel("seconds since the run started")
    load_ax.set_xlim(left=0, right=max(elapsed, 1e-3))
    if path is not None:
        figure.savefig(path, dpi=100)
    return figure


def _merge(spans: list[tuple[float, float]], resolution: float) -> list[tuple[float, float]]:
    """``(start, width)`` spans with the ones that touch within ``resolution`` joined, when there
    are too many to tell apart: a lane of 100,000 tasks is then drawn as a few hundred bars."""
    if len(spans) <= 1000:
        return spans
    merged = [spans[0]]
    for start, width in spans[1:]:
        last_start, last_width = merged[-1]
        if start - (last_start + last_width) <= resolution:
            merged[-1] = (last_start, max(last_width, start + width - last_start))
        else:
            merged.append((start, width))
    return merged


def _plot_load(axes: Any, samples: Sequence[LoadSample], origin: float) -> None:
    seconds = [s.time - origin for s in samples]
    axes.plot(seconds, [100 * s.cpu for s in samples], drawstyle="steps-pre", label="CPU",
              color="#dd8452")
    axes.plot(seconds, [100 * s.memory for s in samples], label="memory", color="#55a868")
    axes.set_ylim(0, 105)
    axes.set_ylabel("machine load %")
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    axes.grid(alpha=0.3)
