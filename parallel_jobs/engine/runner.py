"""The Runner: drives one run from the first dispatch to the last result.

::

    TaskSource ──chunks──▶ Backend ──batches──▶ Runner._absorb ──▶ ResultStore
        ▲  (lazy; retries first)   (processes, threads, ...)   │
        │                                                      ├──▶ ExceptionCollector (die)
        └──────── requeue (crashed chunks, retries) ◀──────────┤
                                                               ├──▶ callback, progress reporter
    LoadMonitor (thread) ──samples──▶ LoadGate ──admits?──▶ dispatch

The Runner owns everything that lives only while the run lives (the backend's workers, the
monitor thread, the progress bar, the checkpoint file): :meth:`Runner.from_config` builds them
from a :class:`~parallel_jobs.config.RunConfig`, and the Runner releases all of them in one
place, after success, ``die``, Ctrl-C and SIGTERM alike, and hands back a :class:`RunOutcome`.
It decides what runs when: how big each chunk is (from the measured task durations), whether
the machine has room for another task, which failures are retried. It never looks at which
backend it drives.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any

import attrs

from ..backends.base import Backend, BackendOptions, chunk_failed
from ..config import RunConfig
from ..errors import (
    ExceptionCollector,
    SerializationError,
    TaskTimeoutError,
    WorkerCrashedError,
    attach_remote_traceback,
)
from ..protocol.pickling import Failure
from ..records import Batch, Chunk, Task, WorkerOptions, shorten, task_call
from ..seeding import binds_random_early, draw_entropy, prepare_seeding
from .monitor import LoadGate, LoadMonitor, LoadSample, NullMonitor
from .plan import MOST_PER_CHUNK, TaskPlan, TaskSource
from .progress import NullReporter, make_reporter
from .store import SUCCEEDED, OutcomeStore

if TYPE_CHECKING:
    from .checkpoint import Checkpoint

__all__ = ["Chunker", "RunOutcome", "Runner", "describe"]

logger = logging.getLogger("parallel_jobs")

MONITOR_DELAY = 0.05
"""Seconds a run lasts before its LoadMonitor starts sampling on a thread."""
#: The most characters of a task's values that an error message shows.
MOST_SHOWN = 60


def describe(task: Task) -> str:
    """The task's own values as an error message shows them: shortened, reprlib-style.

    Examples:
        >>> describe(Task(3, args=(5, "a")))
        "(5, 'a')"
        >>> describe(Task(0, args=("x" * 100,), kwargs={"n": 2}))
        "('xxxxxxxxx...xxxxxxxxxx', n=2)"
        >>> describe(Task(1))
        ''
    """
    text = shorten(task, 24, 4, MOST_SHOWN)
    return f"({text})" if text else ""


@attrs.define(slots=True)
class Chunker:
    """Sizes chunks from measured task durations.

    Until a task has been timed, chunks hold one task. Then each chunk aims at ``target``
    seconds of work, but never more than a quarter of a fair share of what remains, so the last
    chunks shrink and every worker finishes at about the same time. Chunks never shrink below
    ``floor`` seconds of work, though: a message round trip costs about a tenth of a
    millisecond, so a tail of ever smaller chunks of tiny tasks would cost more in messages than
    the imbalance (at most ``floor`` seconds) it saves.

    Nor does an automatic chunk grow beyond ``most`` tasks: past a few thousand tasks a message's
    cost is already amortised, while each chunk's arguments, and the batch that answers it,
    are held in the parent at once. Capping them keeps a run's peak memory flat in its task count.

    The mean duration weighs each observation by its number of tasks, halving the weight of
    older ones at each new chunk: the first one-task chunks, slowed by a cold worker, must not
    shrink the chunks that follow, yet the sizing follows tasks whose durations drift.

    Examples:
        >>> chunker = Chunker(ncpus=2)
        >>> chunker.size(remaining=200_000)
        1
        >>> chunker.observe(count=1, seconds=1e-5)
        >>> chunker.size(remaining=200_000)  # 20 ms of 10 us tasks (in float arithmetic)
        1999
        >>> chunker.size(remaining=5_000)  # a quarter of a fair share
        625
        >>> chunker.observe(count=1, seconds=1e-7)
        >>> chunker.size(remaining=200_000)
        4096
    """

    ncpus: int
    fixed: int | None = None
    limit: int | None = None
    target: float = 0.02
    floor: float = 0.002
    most: int = MOST_PER_CHUNK
    mean: float | None = attrs.field(default=None, init=False)
    _seconds: float = attrs.field(default=0.0, init=False)
    _count: float = attrs.field(default=0.0, init=False)

    def observe(self, count: int, seconds: float) -> None:
        """Learn from ``count`` tasks that took ``seconds`` in all."""
        if count <= 0:
            return
        self._seconds = 0.5 * self._seconds + seconds
        self._count = 0.5 * self._count + count
        self.mean = max(self._seconds / self._count, 1e-9)

    def size(self, remaining: int) -> int:
        """How many tasks the next chunk should hold."""
        if self.fixed is not None:
            size = self.fixed
        elif self.mean is None:
            size = 1
        else:
            fair = remaining // (4 * self.ncpus)
            size = max(min(int(self.target / self.mean), fair), int(self.floor / self.mean))
            size = max(1, min(size, self.most))
        if self.limit is not None:
            size = min(size, self.limit)
        return size


Callback = Callable[[dict[str, Any]], Any]


@attrs.frozen(slots=True)
class RunOutcome:
    """What a finished run leaves besides its tasks' outcomes (those are in its store).

    Attributes:
        globaldict: a plain-dict copy of the shared ``globaldict`` as the run left it, or None.
        load_samples: the machine's load sampled during the run.
        workers_replaced: (pid, reason) of each worker replaced by a health option.
        memory_limits_hit: how many tasks were killed for breaking ``task_memory_limit``.
    """

    globaldict: dict[str, Any] | None
    load_samples: list[LoadSample]
    workers_replaced: list[tuple[int, str]]
    memory_limits_hit: int


def _echo(batch: Batch) -> None:
    """Show what the tasks of ``batch`` printed, each line after ``[task N]``, on the stream
    each printed to (a live progress bar shows them above itself)."""
    import sys

    for stream, column in ((sys.stdout, batch.stdout), (sys.stderr, batch.stderr)):
        for index, text in zip(batch.indices, column or (), strict=False):
            if text:
                stream.write("".join(f"[task {index}] {line}\n" for line in text.splitlines()))
        stream.flush()


class Runner:
    """Runs the tasks of a :class:`RunPlan` on a backend and fills a :class:`ResultStore`.

    Args:
        plan: the tasks.
        backend: where they run.
        store: where their outcomes go.
        monitor: the load monitor (started and stopped by the Runner).
        gate: admission control for ``maxcpu``/``maxmem``, or None.
        reporter: the progress reporter.
        die: stop at the first final failure.
        retries: how many more times a failed task is run.
        chunksize: a fixed chunk size, or None to size chunks automatically.
        callback: called in this process after each task with a dict describing it.
        worker: what worker processes do to stay healthy (see ``worker_health``), or None.
        checkpoint: the file that finished tasks are written to and restored from, or None.
        source: where tasks come from (a lazy input's source for ``imap``); by default every
            task of ``plan``.
    """

    def __init__(
        self,
        plan: TaskPlan,
        backend: Backend,
        store: OutcomeStore,
        *,
        monitor: LoadMonitor,
        gate: LoadGate | None = None,
        reporter: NullReporter | None = None,
        die: bool = True,
        retries: int = 0,
        chunksize: int | None = None,
        callback: Callback | None = None,
        ncpus: int = 1,
        capture: bool = False,
        worker: WorkerOptions | None = None,
        checkpoint: Checkpoint | None = None,
        source: TaskSource | None = None,
    ) -> None:
        self.plan = plan
        self.backend = backend
        self.store = store
        self.monitor = monitor
        self.gate = gate
        self.reporter = reporter or NullReporter()
        self.collector = ExceptionCollector(die)
        self.retries = retries
        self.callback = callback
        limit = backend.max_chunk
        if gate is not None or (callback is not None and not backend.stops_mid_chunk):
            # One task at a time: the gate admits tasks one by one, and a callback that stops
            # the run must find no task of the same chunk starting after it.
            limit = 1
        self.chunker = Chunker(ncpus, fixed=chunksize, limit=limit,
                               target=backend.chunk_target, floor=backend.chunk_floor)
        if source is None:
            assert plan.njobs is not None, "a stream's plan comes with its own source"
            source = TaskSource(plan.njobs)
        self.source = source
        self.checkpoint = checkpoint
        self._watched = True  # see run()
        self.stopped = False
        self._monitor_due = 0.0
        self.interrupted = False
        # With a progress bar, what tasks in other processes print comes back with their
        # batch and is shown here, each line prefixed with its task: printed by the workers
        # themselves, it would tear the bar.
        echo = not capture and backend.reseeds and type(self.reporter) is not NullReporter
        self.payload = attrs.evolve(plan.payload, capture=capture, worker=worker, echo=echo)
        self.globaldict: dict[str, Any] | None = None
        self._outcome: RunOutcome | None = None

    @classmethod
    def from_config(
        cls,
        config: RunConfig,
        plan: TaskPlan,
        store: OutcomeStore,
        source: TaskSource | None = None,
    ) -> Runner:
        """A Runner with the parts that ``config`` asks for: its backend, a load monitor (a
        NullMonitor when nobody would see the load), a LoadGate for ``maxcpu``/``maxmem``, a
        progress reporter, and the checkpoint, opened last so that nothing after it can fail
        and leave the file locked."""
        options = BackendOptions(
            ncpus=config.ncpus, timeout=config.timeout, start_method=config.start_method,
            copy=config.choice.copy, njobs=config.njobs or 0,  # a stream's size is unknown: 0
        )
        backend = config.choice.build(options)
        interval = config.interval or 1.0
        if config.keep_records or config.limited:
            monitor: LoadMonitor = LoadMonitor(interval)
        elif config.progress:
            # The bar alone shows the load once the run has lasted MONITOR_DELAY.
            monitor = LoadMonitor(interval, eager=False)
        else:
            monitor = NullMonitor()  # nobody would see the load: no psutil, no samples
        gate = None
        if config.limited:
            gate = LoadGate(monitor, config.maxcpu, config.maxmem, config.interval or 0.5)
        checkpoint = None
        if config.checkpoint is not None:
            # Imported for its cost only (SQLite and hashlib): most runs keep no checkpoint.
            from .checkpoint import Checkpoint

            checkpoint = Checkpoint.open(config.checkpoint, plan.payload,
                                         rerun_failed=config.rerun_failed)
        return cls(
            plan, backend, store, monitor=monitor, gate=gate,
            reporter=make_reporter(config.progress, config.label), die=config.die,
            retries=config.retries, chunksize=config.chunksize, callback=config.callback,
            ncpus=config.ncpus, capture=config.capture, worker=config.worker,
            checkpoint=checkpoint, source=source,
        )

    @property
    def latest_load(self) -> LoadSample | None:
        """The machine's load as last sampled, or None."""
        return self.monitor.latest

    @property
    def outcome(self) -> RunOutcome | None:
        """What the run left besides its tasks' outcomes, once it has ended (else None)."""
        return self._outcome

    def run(self, *, watched: bool = False) -> None:
        """Run every task (or until ``die`` or a callback stops the run); always clean up.

        Args:
            watched: someone may read the store while the run goes on (a background run's
                :meth:`~parallel_jobs.Parallel.monitor`), so what it shows as done must be
                in the checkpoint already.
        """
        # Nobody sees a task finish before run() returns unless a callback or a progress bar
        # shows it: a checkpoint then need not be flushed before then.
        self._watched = (watched or self.callback is not None
                         or type(self.reporter) is not NullReporter)
        for _ in self.iterate():
            pass

    def iterate(self) -> Generator[None, None, None]:
        """Run as :meth:`run` does, pausing after each round of outcomes stored (``imap``
        takes them from the store then); closing the generator stops the run and cleans up."""
        abort = True
        try:
            if self.plan.globaldict is not None:
                shared = self.backend.share_dict(self.plan.globaldict)
                self.payload = self.payload.sharing(shared)
            if self.backend.reseeds:
                # As sciris does for process parallelizers: one draw from the caller's NumPy
                # RNG, from which each task's seed derives (seeded caller, same numbers).
                entropy = draw_entropy()
                if entropy is not None:
                    prepare_seeding()
                    eager = binds_random_early(self.payload.func)
                    self.payload = attrs.evolve(
                        self.payload, entropy=entropy, eager_seeding=eager)
            self.backend.start(self.payload)
            self.reporter.start(self.plan.njobs)
            if self.gate is None:
                # No chunk waits for a load sample, so the first ones go out before the monitor
                # reads /proc for its first sample: that millisecond overlaps the first tasks.
                self._dispatch()
            # A run over within MONITOR_DELAY never starts the sampling thread: its first and
            # final samples say all there is, and a thread start costs a short run 10%.
            self.monitor.start(background=self.gate is not None)
            self._monitor_due = time.monotonic() + MONITOR_DELAY
            yield from self._loop()
            abort = False
        finally:
            self._finish(abort)

    def stop(self) -> None:
        """Start no further task (a callback's ``data['stop']``, or ``Parallel.stop()``); tasks
        already running finish, and those never started are marked skipped."""
        self.stopped = True
        self.source.cancel()
        self.backend.stop_tasks()

    def interrupt(self) -> None:
        """Stop a run that another thread is running (on Ctrl-C in the caller's thread): that
        thread raises KeyboardInterrupt and cleans up as usual, stopping the running tasks."""
        self.interrupted = True
        self.backend.wake()

    def _finish(self, abort: bool) -> None:
        """Release what the run holds, in this order, each step even when one before it
        raised: tell the checkpoint's writer that nothing more comes (its last commit overlaps
        the steps that follow), copy the shared globaldict out, take the monitor's final sample
        (while retired workers exit, see Backend.retire_idle), shut the backend down, close the
        checkpoint, mark the tasks never run, draw the bar a last time, and record the outcome."""
        with contextlib.ExitStack() as release:
            # An ExitStack calls back last in, first out: the steps go on in reverse order.
            release.callback(self._conclude)
            if self.checkpoint is not None:
                release.callback(self.checkpoint.close)
            release.callback(self.backend.shutdown, abort=abort)
            release.callback(self.monitor.stop)
            release.callback(self._copy_globaldict)
            if self.checkpoint is not None:
                release.callback(self.checkpoint.finish)

    def _copy_globaldict(self) -> None:
        shared = self.payload.globaldict
        if shared is not None:
            try:
                self.globaldict = dict(shared)
            except Exception:
                self.globaldict = None  # a shared dict that can no longer be read leaves none

    def _conclude(self) -> None:
        self.store.cancel_pending()
        self.reporter.update(self.store.done, self.store.failed, self.monitor.latest)
        self.reporter.stop()
        self._outcome = RunOutcome(self.globaldict, list(self.monitor.samples),
                                   list(self.backend.replaced), self.backend.memory_limits_hit)

    def _loop(self) -> Iterator[None]:
        backend, source = self.backend, self.source
        while True:
            wake = self._dispatch()
            if backend.in_flight() == 0:
                if not source.has_more() or self.stopped:
                    return
                if wake is None:
                    # Nothing runs, yet tasks remain: those restored from a checkpoint, or an
                    # imap's held results, must be taken before more tasks fit.
                    yield
                    continue
            waits = [wake, self.reporter.wake_in(), self._monitor_wake()]
            timeout = min((w for w in waits if w is not None), default=None)
            batches = backend.collect(timeout)
            if self.interrupted:
                msg = "the run was interrupted while it ran in the background"
                raise KeyboardInterrupt(msg)
            for batch in batches:
                self._absorb(batch)
            if self.checkpoint is not None and self._watched:
                self.checkpoint.flush()  # the file must hold what is reported next
            if batches and not source.has_more():
                backend.retire_idle()
            self.reporter.update(self.store.done, self.store.failed, self.monitor.latest)
            yield

    def _monitor_wake(self) -> float | None:
        """Start the monitor's thread once the run has lasted MONITOR_DELAY; until then, the
        seconds left, so that a long first task does not keep it from starting."""
        if self.monitor.following:
            return None
        remaining = self._monitor_due - time.monotonic()
        if remaining > 0:
            return remaining
        self.monitor.follow()
        return None

    def _dispatch(self) -> float | None:
        """Submit chunks while the backend has room; return seconds until the gate reopens."""
        backend, source, gate = self.backend, self.source, self.gate
        while not self.stopped and source.has_more() and backend.free_slots() > 0:
            if gate is not None and not gate.admits(running=backend.in_flight()):
                return max(0.0, gate.next_check - time.monotonic())
            indices = source.take(self.chunker.size(source.remaining()))
            if not indices:
                break  # an imap's consumer has not taken enough results yet
            chunk = self.plan.chunk(indices)
            if self.checkpoint is not None:
                chunk = self._restore(chunk)
                if not chunk.indices:
                    continue
            try:
                backend.submit(chunk)
            except SerializationError as error:
                if len(chunk) > 1:
                    # Send its tasks one by one, so that only the one that cannot be pickled fails.
                    source.retry.extend(chunk.indices)
                else:
                    self._absorb(chunk_failed(chunk, dict.fromkeys(chunk.indices, error), 0))
        return None

    def _restore(self, chunk: Chunk) -> Chunk:
        """Store the tasks of ``chunk`` that the checkpoint holds as done; return the others."""
        assert self.checkpoint is not None
        restored, chunk = self.checkpoint.split(chunk)
        for batch in restored:
            failed = {batch.indices[pos] for pos in batch.failures}
            self.store.record(batch, failed)
            # Their recorded durations size the chunks, as if this run had timed them.
            self.chunker.observe(len(batch.indices), sum(batch.elapsed))
            for pos, failure in batch.failures.items():
                index = batch.indices[pos]
                self.collector.add(index, *self._explain(index, failure))
        return chunk

    def _absorb(self, batch: Batch) -> None:
        """Store a batch, decide retries, apply ``die`` and run the callback."""
        store = self.store
        final: set[int] = set()
        for pos in batch.failures:
            index = batch.indices[pos]
            if not self.stopped and store.attempts_of(index) < self.retries:
                self.source.retry.append(index)
                logger.info("task %d failed (attempt %d); retrying", index,
                            store.attempts_of(index) + 1)
            else:
                final.add(index)
        store.record(batch, final)
        if self.payload.echo and batch.stdout is not None:
            _echo(batch)
        if self.checkpoint is not None:
            self.checkpoint.write(batch, final, store.attempts_of)
            if self.callback is not None:
                self.checkpoint.flush()  # the file must hold what the callback is told
        if not self.stopped:
            self.source.retry.extend(batch.requeue)
        if batch.started and batch.started[0]:
            # The worker's span over the chunk, so per-task overhead counts as work too; a
            # chunk that never ran (it could not be sent) teaches nothing.
            span = batch.started[-1] + batch.elapsed[-1] - batch.started[0]
            self.chunker.observe(len(batch.indices), span)
        for pos, failure in batch.failures.items():
            index = batch.indices[pos]
            if index in final:
                self.collector.add(index, *self._explain(index, failure))
        if self.callback is not None:
            for pos, index in enumerate(batch.indices):
                if pos in batch.failures and index not in final:
                    continue
                self._call_back(index, batch.elapsed[pos])

    def _explain(self, index: int, failure: Failure) -> tuple[BaseException, str]:
        """Give the final failure of task ``index`` what the user reads: the worker's
        traceback as its cause, and the task's values in the errors the parent made. Once per
        failure, whatever ``die`` and ``keep_records`` say, so ``exceptions[i]`` has them too.
        Returns the exception and the task's values, shortened."""
        exception = failure.exception
        attach_remote_traceback(exception, index, failure.traceback)
        task = describe(self.plan.task(index))
        if isinstance(exception, (WorkerCrashedError, TaskTimeoutError)) and (
                exception.index == index and not exception.task):
            exception.task = task  # read by __str__ and pickled by __reduce__
        return exception, task

    def _call_back(self, index: int, elapsed: float) -> None:
        assert self.callback is not None
        args, kwargs = task_call(self.payload, self.plan.task(index))
        store = self.store
        data: dict[str, Any] = {
            "index": index,
            "njobs": self.plan.njobs,
            "args": args,
            "kwargs": kwargs,
            "globaldict": self.payload.globaldict,
            "outdict": {  # the keys of sciris' outdict
                "result": store.values[index],
                "success": store.state[index] == SUCCEEDED,
                "skipped": False,
                "exception": store.exception(index),
                "stdout": "" if store.stdout is None else store.stdout[index],
                "elapsed": elapsed,
            },
            "stop": False,
        }
        self.callback(data)
        if data["stop"] and not self.stopped:
            logger.info("the callback stopped the run after task %d", index)
            self.stop()
