"""Progress reporting: a rich progress bar, or a null reporter that draws nothing.

The Runner calls :meth:`ProgressReporter.update` with absolute counts as often as it likes; the
reporter redraws at most ``1 / min_interval`` times a second. On a terminal (or in Jupyter with
ipywidgets) it draws a live bar; elsewhere (CI logs, files, a notebook without ipywidgets) it
prints a plain line every ``plain_interval`` seconds and one when the run ends. The console and
the clock are injected, so tests are exact.

This module only draws: it never waits, never starts a thread, and never decides what runs.
Nothing the caller passes (the label) is read as rich markup or emoji codes: it is shown as
written.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from typing import Any

from .monitor import LoadSample

__all__ = ["NullReporter", "ProgressReporter", "make_reporter"]


class NullReporter:
    """Draws nothing; lets the Runner report progress without asking whether anyone listens."""

    def start(self, total: int | None) -> None:
        """Begin a run of ``total`` tasks (None: unknown, as for a stream)."""

    def update(self, done: int, failed: int, load: LoadSample | None = None) -> None:
        """Record that ``done`` tasks have finished, ``failed`` of them unsuccessfully."""

    def wake_in(self) -> float | None:
        """Seconds until the reporter wants to redraw even if nothing finished, or None."""
        return None

    def stop(self) -> None:
        """End the run and draw the final state."""


def _format_rate(rate: float) -> str:
    if rate >= 1:
        return f"{rate:,.1f} tasks/s"
    if rate > 0:
        return f"{1 / rate:,.1f} s/task"
    return "-- tasks/s"


def _format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


BAR_WIDTH = 24


class ProgressReporter(NullReporter):
    """A rich progress bar: label, done/total, failures, rate, elapsed, ETA, CPU and memory.

    Args:
        label: shown before the bar.
        console: a ``rich.console.Console``; a new one on stderr by default.
        clock: monotonic time source.
        min_interval: least seconds between two redraws on a terminal.
        plain_interval: seconds between two plain lines when not on a terminal.
    """

    def __init__(
        self,
        label: str | None = None,
        console: Any = None,
        clock: Callable[[], float] = time.monotonic,
        min_interval: float = 0.1,
        plain_interval: float = 5.0,
    ) -> None:
        from rich.console import Console

        self.label = label or "parallel_jobs"
        self.console = console if console is not None else Console(stderr=True)
        self.clock = clock
        self.min_interval = min_interval
        self.plain_interval = plain_interval
        self.live = _can_draw_live(self.console)
        self.total: int | None = 0
        self.done = 0
        self.failed = 0
        self.load: LoadSample | None = None
        self.started = 0.0
        self.last_draw = float("-inf")
        self.draws = 0
        self._drawn: tuple[int, int] | None = None
        self._progress: Any = None
        self._task: Any = None

    # -- text ----------------------------------------------------------------------------------

    def summary(self) -> str:
        """The status line: counts, rate, elapsed, ETA and load."""
        elapsed = max(self.clock() - self.started, 0.0)
        rate = self.done / elapsed if elapsed > 0 else 0.0
        parts = [
            f"{self.done}" if self.total is None else f"{self.done}/{self.total}",
            f"{self.failed} failed",
            _format_rate(rate),
            f"elapsed {_format_seconds(elapsed)}",
        ]
        if self.total is not None:  # a stream's end is not known
            remaining = self.total - self.done
            eta = remaining / rate if rate > 0 else None
            parts.append(f"eta {_format_seconds(eta if remaining else 0.0)}")
        if self.load is not None:
            parts.append(f"cpu {self.load.cpu:.0%} mem {self.load.memory:.0%}")
        return " • ".join(parts)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, total: int | None) -> None:
        self.total = total
        self.started = self.clock()
        # The first frame (or plain line) waits a redraw interval: a run shorter than that
        # draws only its final frame, as one printed line (a live display costs a 15 ms run
        # 10%, and a plain line printed at once and again at the end cost it 17%).
        self.last_draw = self.started

    def update(self, done: int, failed: int, load: LoadSample | None = None) -> None:
        self.done, self.failed = done, failed
        if load is not None:
            self.load = load
        interval = self.min_interval if self.live else self.plain_interval
        if self.clock() - self.last_draw >= interval:
            self._draw()

    def wake_in(self) -> float | None:
        interval = self.min_interval if self.live else self.plain_interval
        return max(0.0, self.last_draw + interval - self.clock())

    def _live_display(self) -> Any:
        from rich.progress import BarColumn, Progress, TextColumn

        progress = Progress(
            TextColumn("{task.description}", style="bold", markup=False),
            BarColumn(bar_width=BAR_WIDTH),
            TextColumn("{task.fields[status]}", markup=False),
            console=self.console,
            auto_refresh=False,
            transient=False,
            get_time=self.clock,
        )
        self._task = progress.add_task(self.label, total=self.total, status=self.summary())
        return progress

    def _draw(self) -> None:
        self.last_draw = self.clock()
        self.draws += 1
        self._drawn = (self.done, self.failed)
        if self.live:
            if self._progress is None:
                self._progress = self._live_display()
                self._progress.update(self._task, completed=self.done)
                self._progress.start()
            else:
                self._progress.update(self._task, completed=self.done, status=self.summary())
                self._progress.refresh()
        else:
            from rich.text import Text

            self.console.print(Text(f"{self.label}: {self.summary()}"), highlight=False,
                               soft_wrap=True)

    def final_frame(self) -> Any:
        """The last frame of a run too short for a live display: label, bar and status, drawn
        as one line of text (a fraction of the cost of rich's table-based frame)."""
        from rich.text import Text

        filled = BAR_WIDTH * self.done // self.total if self.total else BAR_WIDTH
        style = "bar.complete" if self.total and self.done < self.total else "bar.finished"
        return Text.assemble(
            (self.label, "bold"), " ",
            ("━" * filled, style), ("━" * (BAR_WIDTH - filled), "bar.back"), " ",
            self.summary(),
        )

    def stop(self) -> None:
        if self._progress is not None:
            # Stopping the live display draws its final frame: drawing one first would be a
            # second render of the same counts.
            self.draws += 1
            self._progress.update(self._task, completed=self.done, status=self.summary())
            self._progress.stop()
            self._progress = None
        elif self.live:
            self.draws += 1
            self.console.print(self.final_frame())
        elif self._drawn != (self.done, self.failed):
            # A plain line already showing the final counts is not printed twice.
            self._draw()


def _can_draw_live(console: Any) -> bool:
    if console.is_jupyter:
        # rich redraws a notebook cell through ipywidgets, and only warns when it is missing.
        return importlib.util.find_spec("ipywidgets") is not None
    return bool(console.is_terminal) and not console.is_dumb_terminal


def make_reporter(
    progress: bool,
    label: str | None,
    *,
    console: Any = None,
    clock: Callable[[], float] = time.monotonic,
) -> NullReporter:
    """A :class:`ProgressReporter` when ``progress`` is true, else a :class:`NullReporter`.

    Args:
        progress: whether to draw anything.
        label: the name shown before the bar.
        console: the ``rich.console.Console`` to draw on (stderr by default).
        clock: monotonic time source.

    Examples:
        >>> import io
        >>> from rich.console import Console
        >>> console = Console(file=io.StringIO())
        >>> reporter = make_reporter(True, "squares", console=console, clock=lambda: 2.0)
        >>> reporter.start(4); reporter.update(4, 1); reporter.stop()
        >>> console.file.getvalue()
        'squares: 4/4 • 1 failed • -- tasks/s • elapsed 00:00 • eta 00:00\\n'
        >>> make_reporter(False, "squares")  # doctest: +ELLIPSIS
        <parallel_jobs.engine.progress.NullReporter object at ...>
    """
    if not progress:
        return NullReporter()
    return ProgressReporter(label, console=console, clock=clock)
