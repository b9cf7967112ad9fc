"""A run on a thread of its own: what ``Parallel.run_async()`` starts and ``finalize()`` waits for.

:class:`BackgroundRun` owns the thread, the event that says the run has ended and the error
it ended with; it stops the run when the caller's thread is interrupted while it waits. It
knows nothing of results: ``Parallel`` gathers them once the run has ended.
"""

from __future__ import annotations

import threading

from .engine.progress import make_reporter
from .engine.runner import Runner
from .engine.signals import RunSignals
from .engine.store import ResultStore

__all__ = ["BackgroundRun"]


class BackgroundRun:
    """Runs ``runner`` on a daemon thread, started at once.

    Attributes:
        runner: the run.
        finished: set when the run has ended. Thread.join() cannot tell once Ctrl-C has
            interrupted it (CPython then marks a still-running thread as stopped).
        error: what the run raised, or None.
    """

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.finished = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._target, name="parallel_jobs-runner",
                                       daemon=True)
        self.thread.start()

    def _target(self) -> None:
        try:
            self.runner.run(watched=True)  # monitor() may show the store
        except BaseException as exc:
            self.error = exc
        finally:
            self.finished.set()

    def alive(self) -> bool:
        """Whether the run's thread still runs."""
        return self.thread.is_alive()

    def show(self, store: ResultStore, label: str | None, interval: float, *,
             draw: bool = True) -> None:
        """Wait for the run's end, drawing a progress bar of it unless ``draw`` is False (the
        run draws its own); on Ctrl-C, stop the run too."""
        reporter = make_reporter(draw, label)
        reporter.start(store.njobs)
        try:
            # Update once more after the run ends, so a run that ended first still shows done.
            running = True
            while running:
                self.thread.join(interval)
                running = self.thread.is_alive()
                reporter.update(store.done, store.failed, self.runner.latest_load)
        except KeyboardInterrupt:
            self.stop_now()
            raise
        finally:
            reporter.stop()

    def wait(self) -> None:
        """Wait for the run's end; on Ctrl-C, stop the run and raise. After that, ``finished``
        says whether it has ended: the thread may still be finishing its last lines when the
        run is over, and stopping may not finish in time."""
        # Handled from the first line: a second Ctrl-C right after the first must find the
        # handler that holds it back while the run stops.
        with RunSignals():
            try:
                while self.thread.is_alive():
                    self.thread.join(0.1)
            except KeyboardInterrupt:
                self.stop_now()
                self.error = None  # the caller gets this very interrupt
                raise

    def stop_now(self) -> None:
        """On Ctrl-C while waiting for the run, stop the run too: otherwise its workers would
        go on, and the interpreter's exit would wait for them. A second Ctrl-C meanwhile waits
        until the workers are stopped (see :class:`RunSignals`; :meth:`wait` holds it back
        already, :meth:`show` from here on)."""
        with RunSignals(shield=True):
            self.runner.interrupt()
            self.finished.wait(10.0)  # stopping takes milliseconds; never hang on a backend
