"""The 'dask' backend: chunks of tasks run as tasks of a dask.distributed cluster.

::

    parent (Runner thread)                                 dask cluster
    ----------------------                                 ------------
    start():   client.scatter(payload, broadcast=True) ──▶ one copy in every worker's memory
    submit():  client.submit(_run_on_worker, <payload future>, pickled chunk)
                                                      ──▶ scheduler ──▶ worker: run_chunk()
               client event loop: await each future, fetch its result, put both on a queue
                                                  ◀── (worker's clock offset, encode_batch(batch))
    collect(): the Runner thread blocks on that queue

The payload (function, shared arguments, large arrays) crosses the network once per worker;
each task's graph holds only a reference to it and the chunk's own values. If every worker
holding it dies (a one-worker cluster, say), it is sent again and the chunks that needed it
rerun. At most ``CHUNKS_PER_THREAD`` chunks per worker thread are in flight (one with a
``timeout``), so a run of a million inputs never floods the scheduler; the thread count is
re-read every second, so workers that join an adaptive cluster are used.

What this backend cannot do, and what it does instead:

* Stop a running task. A task that overruns ``timeout`` has its future cancelled and fails
  with ``TaskTimeoutError(stopped=False)``; its worker thread runs on until the function returns.
  With a ``timeout``, each task reports (as a dask event) when it starts and when it ends, so
  its clock starts when it starts running, and an abandoned task still counts against the
  cluster's threads until it ends: no task is handed to a thread that a hung one holds. When
  hung tasks hold every thread, the run waits for one of them to end, or for a worker to join.
* Tell which task of a chunk killed a worker. When a worker dies, dask reschedules what it ran
  and, after ``distributed.scheduler.allowed-failures`` deaths, fails it with
  ``KilledWorker``; and when every worker holding the payload has died, every chunk that
  needs it fails. Either way each task of such a chunk becomes a suspect, and suspects run
  again one at a time, with nothing else in flight: one that kills its worker while running
  alone fails with ``WorkerCrashedError``, costing that task only, and the others succeed. A
  ``LocalCluster`` that the run starts allows no rescheduling of a task that killed a worker
  (allowed-failures 0), so a crashing task costs one worker death per attempt.
* Share clocks. ``elapsed`` and ``cpu_time`` are durations the worker measured itself;
  ``started``/``finished`` are the worker's own wall clock, as close to the caller's as the
  machines' clocks are synchronised (NTP).
* Measure one task alone. ``cpu_time`` and ``peak_rss`` are those of the worker process, which
  with several threads per worker includes the other tasks running beside it.
"""

from __future__ import annotations

import pickle
import queue
import time
import uuid
from collections.abc import Iterator
from typing import Any

import attrs

from ..errors import SerializationError, WorkerCrashedError
from ..protocol.messages import decode_batch, encode_batch, encode_chunk, pack_per_task
from ..records import Batch, Chunk, Payload
from ..worker import run_chunk
from .base import Backend, BackendOptions, chunk_failed, logger, run_copied
from .deadlines import Running

__all__ = ["INSTALL_HINT", "DaskBackend", "import_distributed"]

INSTALL_HINT = 'pip install "parallel-jobs[dask]"'
#: Where the HTTP endpoints of a LocalCluster we start listen: loopback, any free port.
LOOPBACK_HTTP = "127.0.0.1:0"
#: Chunks in flight per worker thread: one running, one queued to hide the round trip between
#: a chunk's end and the next chunk's arrival, which crosses the scheduler and this process.
CHUNKS_PER_THREAD = 2
#: How often (seconds) the cluster's thread count is re-read to size the work in flight.
RECOUNT_SECONDS = 1.0


def import_distributed() -> Any:
    """Import ``distributed``, or explain how to install it.

    Raises:
        ImportError: when dask.distributed is not installed, naming the extra that provides it.

    Examples:
        >>> import_distributed().__name__
        'distributed'
    """
    try:
        import distributed
    except ImportError as exc:
        msg = f"parallelizer='dask' needs dask.distributed, which is not installed: {INSTALL_HINT}"
        raise ImportError(msg, name="distributed") from exc
    return distributed


def _wall_offset() -> float:
    """What to add to a ``perf_counter()`` reading of this process to get wall-clock time."""
    return time.time() - time.perf_counter()


def _run_on_worker(payload: Payload, blob: bytes, copy: bool,
                   topic: str | None = None) -> tuple[float, bytes]:
    """The dask task: run one chunk on a worker, return its clock offset and the pickled batch.

    ``topic``, given with a ``timeout``: the dask event topic on which to say when the chunk
    starts and ends, so the parent times it from its start and knows when an abandoned one
    frees its thread.
    """
    chunk = pickle.loads(blob)
    _tell(topic, started=True)
    try:
        batch = run_copied(payload, chunk) if copy else run_chunk(payload, chunk)
    finally:
        _tell(topic, started=False)
    return _wall_offset(), encode_batch(batch)


def _tell(topic: str | None, started: bool) -> None:
    """On a worker: say on ``topic`` (if any) that the running chunk started or ended."""
    if topic is not None:
        from distributed import get_worker

        worker = get_worker()
        message = {"key": worker.get_current_task(), "started": started,
                   "worker": worker.address}
        worker.log_event(topic, message)


@attrs.define(slots=True, eq=False)
class _Submitted:
    """A chunk in flight: its future, the payload future it depends on, whether it runs alone
    (a suspect of killing a worker, with nothing else in flight), and when it was sent."""

    future: Any
    chunk: Chunk
    payload: Any
    alone: bool
    sent_at: float = attrs.field(factory=time.perf_counter)


def _rerun(indices: list[int]) -> Batch:
    """A batch that records nothing and sends ``indices`` back to be run one by one."""
    batch = Batch.empty([], 0)
    batch.requeue = indices
    return batch


class DaskBackend(Backend):
    """Chunks submitted to a dask.distributed cluster.

    Args:
        options: the run's settings; ``ncpus`` is the number of worker processes of the
            ``LocalCluster`` started when there is no client.
        client: the ``distributed.Client`` to run on, left open afterwards. None: the current
            client if there is one (``distributed.get_client()``), else a ``LocalCluster`` on
            127.0.0.1 that lives for this run only.

    Examples:
        >>> from parallel_jobs import parallelize
        >>> from distributed import Client, LocalCluster
        >>> with LocalCluster(n_workers=2, processes=False,
        ...                   dashboard_address="127.0.0.1:0") as cluster:
        ...     with Client(cluster) as client:
        ...         parallelize(abs, [-1, -2, 3], parallelizer=client)
        [1, 2, 3]
    """

    reseeds = True
    abandons_overruns = True
    copies_per_chunk = True
    # A chunk costs a few milliseconds of scheduler and client work (dask's own advice is
    # tasks of 100 ms or more), against a tenth of a millisecond in the local pool.
    chunk_target = 0.1
    chunk_floor = 0.02

    def __init__(self, options: BackendOptions, client: Any = None) -> None:
        super().__init__(options)
        self.distributed = import_distributed()
        self.per_thread = 1 if options.timeout is not None else CHUNKS_PER_THREAD
        self.client = client
        self.owns_client = False
        self.cluster: Any = None
        self.payload_future: Any = None
        self.payload: Payload | None = None
        self.futures: dict[str, _Submitted] = {}
        self.finished: queue.SimpleQueue[tuple[Any, tuple[float, bytes] | None]] = (
            queue.SimpleQueue())
        self.prefix = "parallel_jobs"
        self.submitted = 0
        self.capacity = self.per_thread
        self.recount_at = 0.0
        self.local_offset = _wall_offset()
        # With a timeout: when each running chunk started (by key, this process's clock) and
        # on which worker, and the keys of abandoned chunks still holding a worker thread.
        self.topic: str | None = None
        self.started: dict[str, float] = {}
        self.worker_of: dict[str, str] = {}
        self.hung: set[str] = set()
        self.starved = False
        # Tasks in flight when a worker died, to be run again one at a time; those of them
        # that lost the payload while running alone.
        self.suspects: set[int] = set()
        self.payload_lost: set[int] = set()

    def start(self, payload: Payload) -> None:
        if self.client is None:
            self.client = self._current_client() or self._start_cluster()
        name = getattr(payload.func, "__name__", "task")
        # The dashboard groups tasks by the key's leading words: show the function's name.
        self.prefix = f"parallel_jobs-{name}-{uuid.uuid4().hex}"
        from ..protocol.shm import SharedArrays

        # Each task gets its own copy of what tasks share, pickled once here. Its seed is set
        # before it starts: a dask worker may run several tasks at once, in threads, which
        # the lazy seeding hooks (one set per process) cannot tell apart.
        payload = pack_per_task(payload, SharedArrays(enabled=False))
        payload = attrs.evolve(payload, eager_seeding=payload.entropy is not None)
        self.payload = payload
        self.payload_future = self._scatter(payload)
        if self.options.timeout is not None:
            self.topic = self.prefix
            self.client.subscribe_topic(self.topic, self._on_event)

    def _on_event(self, event: tuple[float, dict[str, Any]]) -> None:
        """In the client's event loop: a chunk started or ended on its worker."""
        message = event[1]
        key = message["key"]
        if message["started"]:
            self.started[key] = time.perf_counter()
            self.worker_of[key] = message["worker"]
            return
        self.started.pop(key, None)
        self.worker_of.pop(key, None)
        if key in self.hung:
            self.hung.discard(key)
            self.finished.put((None, None))  # a thread is free: wake collect()

    def _scatter(self, payload: Payload) -> Any:
        try:
            return self.client.scatter(payload, broadcast=True, hash=False)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            what = "the function and shared arguments (func, args, kwargs)"
            raise SerializationError(what, f"{type(exc).__name__}: {exc}") from exc

    def _current_client(self) -> Any:
        try:
            return self.distributed.get_client()
        except ValueError:
            return None

    def _start_cluster(self) -> Any:
        # dashboard_address=None would still serve /health and /metrics on port 8787 of every
        # interface (and warn when another cluster holds that port): keep it all on loopback.
        import dask

        # A task that killed a worker is not rescheduled but reported (KilledWorker) at once:
        # it then runs alone, and fails if it kills again (see _lost_worker).
        with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
            self.cluster = self.distributed.LocalCluster(
                n_workers=self.options.ncpus, threads_per_worker=1, processes=True,
                host="127.0.0.1", dashboard_address=LOOPBACK_HTTP,
                worker_dashboard_address=LOOPBACK_HTTP,
            )
        # Not the default client: a run must not change which cluster the caller's dask uses.
        client = self.distributed.Client(self.cluster, set_as_default=False)
        self.owns_client = True
        logger.debug("started a dask LocalCluster of %d workers", self.options.ncpus)
        return client

    def free_slots(self) -> int:
        if self.suspects:
            # A suspect runs with nothing else in flight, so a death while it runs is its own.
            return 0 if self.futures else 1
        now = time.monotonic()
        if now >= self.recount_at:
            self.recount_at = now + RECOUNT_SECONDS
            nthreads = self.client.nthreads()
            threads = sum(nthreads.values())
            # With no worker yet (a cluster still scaling up), one chunk waits in the scheduler.
            self.capacity = self.per_thread * max(1, threads)
            # A hung task whose worker has gone (it died, or was restarted) holds no thread.
            for key in list(self.hung):  # a copy: the client's event loop discards keys too
                if self.worker_of.get(key) not in nthreads:
                    self.hung.discard(key)
        free = max(0, self.capacity - len(self.futures) - len(self.hung))
        # Hung tasks hold every thread: until one ends, they count as in flight, so that the
        # Runner waits in collect() instead of asking again at once.
        self.starved = free == 0 and not self.futures
        return free

    def in_flight(self) -> int:
        return len(self.futures) + (len(self.hung) if self.starved else 0)

    def submit(self, chunk: Chunk) -> None:
        blob = encode_chunk(chunk)
        self.submitted += 1
        future = self.client.submit(
            _run_on_worker, self.payload_future, blob, self.options.copy, self.topic,
            key=f"{self.prefix}-{self.submitted}", pure=False,
        )
        alone = not self.futures and len(chunk) == 1 and chunk.indices[0] in self.suspects
        self.futures[future.key] = _Submitted(future, chunk, self.payload_future, alone)
        self.client.loop.add_callback(self._fetch, future)

    async def _fetch(self, future: Any) -> None:
        """In the client's event loop: wait for ``future`` and fetch its batch, then hand both
        to collect(). Fetches overlap, and dask merges those under way into one request, so the
        Runner thread never waits for a round trip per chunk (and, unlike distributed.wait(),
        nothing re-scans the futures in flight at each completion)."""
        output = None
        try:
            output = await self.client.gather(future, asynchronous=True)
        except Exception:
            pass  # collect() asks the future itself what went wrong
        finally:
            self.finished.put((future, output))

    def collect(self, timeout: float | None) -> list[Batch]:
        starved, self.starved = self.starved, False
        if starved:
            # Wait for a hung task to end (its event wakes us), or for a worker to join.
            timeout = RECOUNT_SECONDS if timeout is None else min(timeout, RECOUNT_SECONDS)
        elif not self.futures:
            return []
        timeout = self.deadlines.wait(timeout, self._busy())
        done = []
        try:
            done.append(self.finished.get(timeout=timeout))
            while True:
                done.append(self.finished.get_nowait())
        except queue.Empty:
            pass
        # A future cancelled on timeout still reports here; it was settled already.
        batches = [self._outcome(future, output) for future, output in done
                   if future is not None and future.key in self.futures]
        batches.extend(self._expire())
        return batches

    def _outcome(self, future: Any, output: tuple[float, bytes] | None) -> Batch:
        flight = self.futures.pop(future.key)
        chunk = flight.chunk
        try:
            offset, data = future.result() if output is None else output
        except self.distributed.KilledWorker as error:
            return self._lost_worker(flight, error)
        except Exception as error:
            if flight.payload.status != "finished":
                self._send_payload_again(flight)
                return self._lost_worker(flight, None)
            # Not the function's exception (run_chunk records those): the cluster failed.
            return chunk_failed(chunk, dict.fromkeys(chunk.indices, error), 0)
        finally:
            future.release()
        self.suspects.difference_update(chunk.indices)
        batch = decode_batch(data, chunk, 0)
        shift = offset - self.local_offset
        started = batch.started
        for pos in range(len(started)):
            started[pos] += shift
        return batch

    def _send_payload_again(self, flight: _Submitted) -> None:
        """Every worker holding the payload died (a one-worker cluster, say), which cancels every
        chunk that needs it: send it again, once."""
        assert self.payload is not None
        if flight.payload is self.payload_future:
            logger.warning("the dask workers holding the shared arguments died; sending them again")
            self.payload_future.release()
            self.payload_future = self._scatter(self.payload)

    def _lost_worker(self, flight: _Submitted, error: Any) -> Batch:
        """A worker died running ``flight`` (dask's ``KilledWorker``, ``error``) or a chunk it
        needed (the payload, ``error`` None). Only a chunk that ran alone can be to blame: any
        other runs again, task by task, each alone (see free_slots). A lone task that lost the
        payload is blamed the second time only: the payload may have been lost before it ran."""
        chunk = flight.chunk
        index = chunk.indices[0]
        if not flight.alone or (error is None and index not in self.payload_lost):
            if flight.alone:
                self.payload_lost.add(index)
            logger.warning("dask workers died while tasks %s ran; running each alone",
                           list(chunk.indices))
            self.suspects.update(chunk.indices)
            return _rerun(list(chunk.indices))
        self.suspects.discard(index)
        if error is None:
            how = ("Twice, the last dask worker holding the shared arguments died while it "
                   "ran alone")
            worker = None
        else:
            worker = error.last_worker
            how = (f"Dask gave up on it (KilledWorker) after {error.allowed_failures + 1} "
                   f"worker(s) died running it alone, the last at "
                   f"{getattr(worker, 'address', '?')}")
        detail = f"{how}; the worker's nanny log has its exit code."
        logger.warning("task %d killed its dask worker", index)
        return Batch.lost(
            index, WorkerCrashedError(index, None, detail), pid=getattr(worker, "pid", 0) or 0,
            started=flight.sent_at, elapsed=time.perf_counter() - flight.sent_at,
        )

    def _busy(self) -> Iterator[tuple[str, Running | None]]:
        """Each chunk in flight (by key) and its task, running since its worker's event said
        (see ``Deadlines.wait``; with a timeout, every chunk holds one task)."""
        for key, flight in self.futures.items():
            started = self.started.get(key)
            yield key, (None if started is None else (flight.chunk.indices[0], started))

    def _expire(self) -> list[Batch]:
        batches = []
        for overrun in self.deadlines.overdue(self._busy()):
            key = overrun.holder
            flight = self.futures[key]
            if flight.future.done():
                continue  # finished, and on its way to collect()
            del self.futures[key]
            # Until it ends (its event says so), it holds a worker thread.
            self.hung.add(key)
            flight.future.cancel(reason="parallel_jobs: the task overran its timeout")
            flight.future.release()
            self.suspects.discard(overrun.index)
            batches.append(self.deadlines.timed_out(overrun, flight.chunk, pid=0, stopped=False,
                                                    action="cancelled its dask future"))
        return batches

    def shutdown(self, abort: bool = False) -> None:
        futures = [flight.future for flight in self.futures.values()]
        self.futures.clear()
        client, self.client = self.client, None
        cluster, self.cluster = self.cluster, None
        payload, self.payload_future = self.payload_future, None
        topic, self.topic = self.topic, None
        try:
            if topic is not None:
                client.unsubscribe_topic(topic)
            # Ours are the only references to these keys: releasing them (now, not whenever the
            # futures are garbage-collected) makes the scheduler drop every chunk not yet
            # started and, once no task needs it, the payload.
            for future in futures:
                future.release()
            if payload is not None:
                payload.release()
        finally:
            try:
                if self.owns_client and client is not None:
                    client.close()
            finally:
                if cluster is not None:
                    cluster.close()
