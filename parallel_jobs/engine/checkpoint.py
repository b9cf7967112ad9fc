"""Checkpoints: each finished task of a run in a SQLite file, so that a rerun skips it.

::

    Runner._dispatch ──chunk──▶ Checkpoint.split ──restored batches──▶ store
                                     │ (the key of each task sent, until it is written)
    Runner._absorb ──batch──▶ Checkpoint.write ──bundles──▶ writer thread ──▶ batches table
                                                  (a transaction each)
    Runner, before it reports ──▶ Checkpoint.flush: hands over, waits for the writer's commit

The parent writes, whatever the backend, on a thread of its own: pickling the results, packing
the timings and committing cost a run of tiny tasks as much as dispatching them, and the Runner
goes on dispatching meanwhile (SQLite lets go of the GIL while it writes). Before the progress
bar, a callback, ``imap`` or a returning ``run()`` reports a task done, the Runner flushes, so
that what was reported done is in the file even when the parent is killed the next instant;
until then, batches gather for up to ``GATHER_SECONDS`` and go over in one bundle, one commit.
SQLite in WAL mode makes each commit atomic; ``synchronous=NORMAL`` keeps a commit that a killed
process made (only a power loss may take back the last ones).

A batch is one row, its per-task columns packed (JSON indices, one pickle of the results, arrays
of timings): a row per task would cost a run of tiny tasks more than the tasks themselves. The
``tasks`` view unpacks what SQL can read (index, status, process, error) one row per task.

While a run lives it holds an exclusive ``flock`` on the file, which the kernel releases when the
process dies however it dies: a second run on the same file fails at its start, and a run killed
with SIGKILL leaves no stale lock. Any check that fails leaves the file as it was.

The layout is documented in ``docs/long-runs.md``. This module owns the file; it reads the run's
chunks and batches and never touches a backend.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import itertools
import json
import os
import pickle
import queue
import sqlite3
import threading
import time
import urllib.parse
from array import array
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from ..errors import CheckpointError
from ..protocol.pickling import dumps, dumps_exception, rebuild_failure
from ..records import Batch, Chunk, Payload, TaskResult

__all__ = ["GATHER_SECONDS", "Checkpoint", "function_name", "read_checkpoint"]

GATHER_SECONDS = 0.1
"""How long the batches of a run that nobody watches gather before the writer gets them."""

FORMAT = "1"
"""The version of the file's layout, kept in its ``meta`` table."""

WINDOW = 4096
"""Task indices looked up in the file at once when looking for tasks already done."""

_SCHEMA = (
    """CREATE TABLE meta (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    """CREATE TABLE batches (
        id INTEGER PRIMARY KEY,
        lo INTEGER NOT NULL,
        hi INTEGER NOT NULL,
        indices TEXT,
        pid INTEGER NOT NULL,
        written REAL NOT NULL,
        shared BLOB NOT NULL,
        keys BLOB NOT NULL,
        results BLOB NOT NULL,
        started BLOB NOT NULL,
        elapsed BLOB NOT NULL,
        cpu_time BLOB NOT NULL,
        peak_rss BLOB NOT NULL,
        attempts BLOB,
        output TEXT
    )""",
    "CREATE INDEX batches_lo ON batches (lo)",
    """CREATE TABLE failures (
        idx INTEGER NOT NULL,
        batch INTEGER NOT NULL REFERENCES batches (id),
        status TEXT NOT NULL,
        error_type TEXT,
        error_message TEXT,
        traceback TEXT,
        exception BLOB,
        PRIMARY KEY (idx, batch)
    )""",
    # One row per task, from its latest batch: a batch lists its tasks in ``indices`` (JSON),
    # or holds tasks lo to hi - 1 when that is NULL (SQLite takes the other columns from the
    # row that max() picks).
    """CREATE VIEW tasks AS
    WITH RECURSIVE consecutive(batch, idx, hi) AS (
        SELECT id, lo, hi FROM batches WHERE indices IS NULL
        UNION ALL
        SELECT batch, idx + 1, hi FROM consecutive WHERE idx + 1 < hi
    ), every(batch, idx) AS (
        SELECT batch, idx FROM consecutive
        UNION ALL
        SELECT b.id, CAST(j.value AS INTEGER) FROM batches AS b, json_each(b.indices) AS j
        WHERE b.indices IS NOT NULL
    )
    SELECT e.idx AS idx, max(e.batch) AS batch, coalesce(f.status, 'succeeded') AS status,
           b.pid AS pid, f.error_type AS error_type, f.error_message AS error_message
    FROM every AS e JOIN batches AS b ON b.id = e.batch
    LEFT JOIN failures AS f ON f.batch = e.batch AND f.idx = e.idx
    GROUP BY e.idx""",
)
_CREATE = "\n".join((
    # SQLite's usual pages: a batch's row spans several, but bigger ones cost more than they
    # save, as each one the empty file's six tables and indices need is written in full.
    "PRAGMA page_size=4096;",
    # Made without fsync (three of them, the cost of a short run): a file that a power loss
    # damages now holds no result yet. Its first checkpoint (at close) syncs it.
    "PRAGMA synchronous=OFF;",
    "PRAGMA journal_mode=WAL;",
    "BEGIN;",
    *(f"{statement};" for statement in _SCHEMA),
))
"""What makes an empty file a checkpoint, but for its ``meta`` rows, in a transaction left
open for them."""
_BATCH_COLUMNS = (
    "id, lo, hi, indices, pid, shared, keys, results, started, elapsed, cpu_time, peak_rss, "
    "attempts, output"
)
_INSERT_BATCH = (
    "INSERT INTO batches (lo, hi, indices, pid, written, shared, keys, results, started, "
    "elapsed, cpu_time, peak_rss, attempts, output) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
    "?, ?)"
)
_INSERT_FAILURE = (
    "INSERT INTO failures (idx, batch, status, error_type, error_message, traceback, "
    "exception) VALUES (?, ?, ?, ?, ?, ?, ?)"
)

FAILED, UNSAVED = "failed", "unsaved"
_NUMBERS = frozenset({int, float, complex, bool, type(None)})
"""Per-task values that are their own key (compared by type and value): no hashing."""


def function_name(func: Callable[..., Any]) -> str:
    """The name a checkpoint knows a function by: its module and qualified name.

    Examples:
        >>> function_name(len)
        'builtins.len'
    """
    target = getattr(func, "func", func)  # a functools.partial is known by what it calls
    module = getattr(target, "__module__", None) or "?"
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{module}.{name}"


def _shared_digest(payload: Payload) -> bytes:
    """What every task of a run shares, digested: the function's name and the shared arguments
    (``globaldict``, shared on purpose and changed by tasks, is no input)."""
    kwargs = sorted(payload.inputs.items())
    blob = dumps((function_name(payload.func), tuple(payload.args), kwargs))
    return hashlib.blake2b(blob, digest_size=16).digest()


def _key(value: Any) -> Any:
    """A task's key: its value when it is a number or None, else a digest of its pickle
    (``b'#'`` and 16 bytes); a value that cannot be pickled gets a key that matches nothing."""
    if type(value) in _NUMBERS:
        return value
    try:
        blob = dumps(value)
    except Exception:
        return os.urandom(17)
    return b"#" + hashlib.blake2b(blob, digest_size=16).digest()


def _same(old: Any, new: Any) -> bool:
    return type(old) is type(new) and old == new


@attrs.define(slots=True)
class _Stored:
    """One batch read back from the file, unpacked as far as matching keys needs."""

    id: int
    indices: list[int]
    pid: int
    matches: bool  # its shared digest is this run's
    keys: list[Any]
    results: bytes
    columns: tuple[bytes, bytes, bytes, bytes, bytes | None, str | None]
    _values: list[Any] | None = None

    def values(self) -> list[Any]:
        if self._values is None:
            self._values = pickle.loads(self.results)
        return self._values


@attrs.frozen(slots=True)
class _Job:
    """A batch queued for the writer thread, with what the Runner's thread decided about it."""

    batch: Batch
    keep: list[int] | None  # the positions to write; None: all of them
    chosen: Sequence[int]  # the indices of those tasks
    keys: list[Any]
    attempts: bytes | None  # each task's attempt count (packed), or None: 1 for all
    failed: list[tuple[Any, ...]]  # the failures' rows, but for the batch's id


def _join(thread: threading.Thread) -> None:
    """Wait for ``thread`` to end, Ctrl-C or not: no thread may outlive the run."""
    interrupted: KeyboardInterrupt | None = None
    while True:
        try:
            thread.join()
        except KeyboardInterrupt as exc:
            interrupted = exc
            continue
        break
    if interrupted is not None:
        raise interrupted


class Checkpoint:
    """One run's hold on its checkpoint file; use :meth:`open`.

    Args:
        path: the file.
        lock: the descriptor that holds the file's ``flock``.
        payload: what the run's tasks share.
        rerun_failed: run again the tasks that failed in an earlier run.
        reader: a connection to the file for looking up tasks done, or None for a file that
            is empty (nothing to look up; the writer makes it a checkpoint).
    """

    def __init__(self, path: str, lock: int, payload: Payload, rerun_failed: bool,
                 reader: sqlite3.Connection | None) -> None:
        self.path = path
        self.lock = lock
        self.reader = reader
        self.rerun_failed = rerun_failed
        self.function = function_name(payload.func)
        try:
            self.shared = _shared_digest(payload)
        except Exception as exc:  # open() lets go of the file
            msg = f"the shared arguments cannot be pickled to key the tasks: {exc}"
            raise CheckpointError(path, msg) from exc
        end, span = 0, 0
        if reader is not None:
            end, span = reader.execute("SELECT max(hi), max(hi - lo) FROM batches").fetchone()
        #: No task at or beyond this index is in the file: no need to look for it there.
        self.end = end or 0
        self.span = span or 0
        self.pending: dict[int, Any] = {}  # the keys of tasks sent and not yet written
        # The same for chunks of consecutive tasks, by their first index: a dict entry per
        # task would cost a run of tiny tasks more than its checkpoint's writing.
        self.pending_runs: dict[int, list[Any]] = {}
        self._window = (-1, -1)
        self._found: dict[int, tuple[_Stored, int]] = {}
        self._failures: dict[tuple[int, int], tuple[Any, ...]] = {}
        self.wall_offset = time.time() - time.perf_counter()
        # What the writer thread is to do: batches to write in one transaction (none: make
        # the file ready), an Event to set once what came before is committed, or None: stop.
        self._jobs: queue.SimpleQueue[list[_Job] | threading.Event | None] = queue.SimpleQueue()
        self._held: list[_Job] = []  # batches not handed to the writer yet
        self._handed = time.monotonic()  # when batches were last handed to it
        self._prepared = False  # the writer was given something to do
        self._unflushed = False  # batches were handed over since the last flush
        self._error: CheckpointError | None = None  # what stopped the writer
        self._raised = False  # the caller was given that error
        self._finishing = False  # the writer was told that nothing more comes
        self._conn: sqlite3.Connection | None = None  # the writer's, once it needs one
        self._thread: threading.Thread | None = threading.Thread(
            target=self._serve, name="parallel_jobs-checkpoint", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, path: str | os.PathLike[str], payload: Payload, *,
             rerun_failed: bool = True) -> Checkpoint:
        """Take the file at ``path`` for a run of ``payload``'s function, creating it if need be.

        Raises:
            CheckpointError: another run holds the file, it cannot be opened or read, it is no
                checkpoint, or it was made for another function; the file is left as it was.
        """
        name = os.fspath(path)
        try:
            lock = os.open(name, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise CheckpointError(name, f"cannot be opened: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(lock)
            msg = "another run is using it (a process holds its lock); wait for it to end"
            raise CheckpointError(name, msg) from exc
        reader: sqlite3.Connection | None = None
        try:
            # An empty file with no write-ahead log (a first run's) holds nothing to check or
            # look up: the writer thread makes it a checkpoint while the run starts.
            if os.fstat(lock).st_size or os.path.exists(name + "-wal"):
                reader = sqlite3.connect(name, isolation_level=None, check_same_thread=False)
                _check_or_create(reader, name, function_name(payload.func))
            return cls(name, lock, payload, rerun_failed, reader)
        except BaseException:
            if reader is not None:
                reader.close()
            os.close(lock)  # after the connection: closing it drops SQLite's own locks too
            raise

    def finish(self) -> None:
        """Tell the writer that nothing more comes: it commits and folds the write-ahead log
        into the file while the caller does something else (:meth:`close` waits for it)."""
        if self._finishing:
            return
        self._finishing = True
        try:
            if self.reader is not None:
                self.reader.close()  # before the writer's: the last one closed folds in the log
            self._hand_over()
        finally:
            self._jobs.put(None)

    def close(self) -> None:
        """Wait until the writer has committed everything and stopped, and let go of the file
        (safe to repeat).

        Raises:
            CheckpointError: the writer failed, and no call told the caller yet.
        """
        if self.lock < 0:
            return
        try:
            self.finish()
            if self._thread is not None:
                _join(self._thread)
                self._thread = None
        finally:
            os.close(self.lock)
            self.lock = -1
        self._check()

    def flush(self) -> None:
        """Wait until everything written so far is committed: call it before reporting a
        written task done.

        Raises:
            CheckpointError: the writer failed.
        """
        self._hand_over()
        if self._unflushed:
            committed = threading.Event()
            self._jobs.put(committed)
            committed.wait()
            self._unflushed = False
        self._check()

    def _check(self) -> None:
        """Raise the writer's error, once."""
        if self._error is not None and not self._raised:
            self._raised = True
            raise self._error

    # -- keys --------------------------------------------------------------------------------------

    @staticmethod
    def keys(chunk: Chunk) -> list[Any]:
        """The key of each task of ``chunk`` (see :func:`_key`)."""
        if chunk.iterkwargs is None:
            if chunk.itervals is None:
                return [None] * len(chunk)
            if _NUMBERS.issuperset(map(type, chunk.itervals)):
                return list(chunk.itervals)  # the common case, at C speed
            return [_key(value) for value in chunk.itervals]
        if chunk.itervals is None:
            return [_key(values) for values in chunk.iterkwargs]
        return [_key(item) for item in zip(chunk.itervals, chunk.iterkwargs, strict=True)]

    # -- reading -----------------------------------------------------------------------------------

    def split(self, chunk: Chunk) -> tuple[list[Batch], Chunk]:
        """Separate the tasks of ``chunk`` that the file holds as done, with the same inputs,
        from those to run: the first as batches to store, the second as a chunk to send."""
        keys = self.keys(chunk)
        indices = chunk.indices
        done: list[tuple[int, _Stored, int]] = []
        if self.end and indices and min(indices) < self.end:
            for pos, index in enumerate(indices):
                found = self._lookup(index)
                if found is not None:
                    stored, at = found
                    if stored.matches and _same(stored.keys[at], keys[pos]) and self._keeps(
                            stored, index):
                        done.append((pos, stored, at))
        pending = self.pending
        if not done:
            if type(indices) is range and indices.step == 1:
                self.pending_runs[indices.start] = keys
            else:
                pending.update(zip(indices, keys, strict=True))
            return [], chunk
        skip = {pos for pos, _, _ in done}
        rest = [pos for pos in range(len(indices)) if pos not in skip]
        for pos in rest:
            pending[indices[pos]] = keys[pos]
        left = Chunk(
            [indices[pos] for pos in rest],
            None if chunk.itervals is None else [chunk.itervals[pos] for pos in rest],
            None if chunk.iterkwargs is None else [chunk.iterkwargs[pos] for pos in rest],
        )
        return self._batches([(stored, at) for _, stored, at in done]), left

    def _keeps(self, stored: _Stored, index: int) -> bool:
        failure = self._failures.get((index, stored.id))
        if failure is None:
            return True
        return failure[0] == FAILED and not self.rerun_failed

    def _lookup(self, index: int) -> tuple[_Stored, int] | None:
        start, stop = self._window
        if not start <= index < stop:
            self._read_window(index, index + WINDOW)
        return self._found.get(index)

    def _read_window(self, start: int, stop: int) -> None:
        """Read the batches that may hold tasks ``start`` to ``stop``; later batches win."""
        assert self.reader is not None, "an empty file has nothing to read"
        try:
            rows = self.reader.execute(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE lo >= ? AND lo < ? ORDER BY id",
                (start - self.span, stop)).fetchall()
            failures = self.reader.execute(
                "SELECT idx, batch, status, error_type, error_message, traceback, exception "
                "FROM failures WHERE idx >= ? AND idx < ?", (start, stop)).fetchall()
            found: dict[int, tuple[_Stored, int]] = {}
            for row in rows:
                stored = _Stored(row[0], _indices(row), row[4], row[5] == self.shared,
                                 pickle.loads(row[6]), row[7], row[8:14])
                for at, index in enumerate(stored.indices):
                    if start <= index < stop:
                        found[index] = (stored, at)
        except (sqlite3.Error, ValueError, pickle.UnpicklingError) as exc:
            raise CheckpointError(self.path, f"cannot be read: {exc}") from exc
        self._window = (start, stop)
        self._found = found
        self._failures = {(row[0], row[1]): row[2:] for row in failures}

    def _batches(self, found: Iterable[tuple[_Stored, int]]) -> list[Batch]:
        """Batches of the restored tasks, one per run of tasks from the same stored batch."""
        batches: list[Batch] = []
        group: list[int] = []
        current: _Stored | None = None
        for stored, at in found:
            if current is not None and stored is not current:
                batches.append(self._batch(current, group))
                group = []
            current = stored
            group.append(at)
        if current is not None:
            batches.append(self._batch(current, group))
        return batches

    def _batch(self, stored: _Stored, positions: list[int]) -> Batch:
        started, elapsed, cpu_time, peak_rss, _, output = _columns(stored.columns)
        values = stored.values()
        batch = Batch.empty([stored.indices[at] for at in positions], stored.pid)
        offset = self.wall_offset
        outputs = json.loads(output) if output else None
        batch.stdout = [outputs[at][0] if outputs else "" for at in positions]
        batch.stderr = [outputs[at][1] if outputs else "" for at in positions]
        for pos, at in enumerate(positions):
            batch.started[pos] = started[at] - offset if started[at] else 0.0
            batch.elapsed[pos] = elapsed[at]
            batch.cpu_time[pos] = cpu_time[at]
            batch.peak_rss[pos] = peak_rss[at]
            failure = self._failures.get((stored.indices[at], stored.id))
            if failure is None:
                batch.values[pos] = values[at]
            else:
                batch.failures[pos] = rebuild_failure(*_failure_parts(failure))
        return batch

    # -- writing -----------------------------------------------------------------------------------

    def write(self, batch: Batch, final: set[int], attempts_of: Callable[[int], int]) -> None:
        """Queue the outcomes of ``batch`` for the writer thread, which commits them as one row
        (see :meth:`flush`); a failure that is not in ``final`` will be retried, and is not
        written. ``batch`` must not change afterwards.

        Raises:
            CheckpointError: the writer failed.
        """
        self._check()
        indices, failures = batch.indices, batch.failures
        keep: list[int] | None = None  # positions to write; None: all of them
        if failures and any(indices[pos] not in final for pos in failures):
            keep = [pos for pos in range(len(indices))
                    if pos not in failures or indices[pos] in final]
        keys = self._sent_keys(indices, cut=bool(batch.requeue))
        chosen = indices if keep is None else [indices[pos] for pos in keep]
        if not chosen:
            return  # a chunk stopped before any of its tasks ran
        keys = _picker(keep)(keys)
        # Pickled now: the Runner adds notes and the remote traceback to what was raised next.
        failed = [(indices[pos], FAILED, failure.type_name, failure.message, failure.traceback,
                   dumps_exception(failure.exception)) for pos, failure in failures.items()
                  if keep is None or pos in keep]
        # A range is a first attempt: every count is 1. Counted now: a retry changes them.
        attempts = None if type(indices) is range else array(
            "I", map(attempts_of, chosen)).tobytes()
        self._held.append(_Job(batch, keep, chosen, keys, attempts, failed))
        # A run of tiny tasks hands its batches over in bundles, each one transaction (a
        # commit costs more than a batch), and the writer wakes once a bundle; a slower
        # run hands each batch over as it comes.
        now = time.monotonic()
        if now - self._handed >= GATHER_SECONDS:
            self._hand_over()
            self._handed = now
        elif not self._prepared:
            self._jobs.put([])  # the writer makes a new file ready while batches gather
        self._prepared = True

    def _hand_over(self) -> None:
        """Give the held batches to the writer."""
        if self._held:
            self._jobs.put(self._held)
            self._held = []
            self._unflushed = True

    def _sent_keys(self, indices: Sequence[int], cut: bool) -> list[Any]:
        """The keys of the tasks ``indices`` as they were sent, forgotten here (a task run
        again is sent again, with its key). ``cut``: the rest of their chunk did not run, and
        will be sent again."""
        if type(indices) is range and indices.step == 1:
            keys = self.pending_runs.pop(indices.start, None)
            if keys is not None:
                count = len(indices)
                if len(keys) > count:
                    if not cut:  # the rest of the chunk comes back in a later batch
                        self.pending_runs[indices.start + count] = keys[count:]
                    del keys[count:]
                return keys
        return list(map(self.pending.pop, indices, itertools.repeat(None)))

    def _serve(self) -> None:
        """The writer thread: write each bundle of batches it is handed in one transaction,
        until told to stop."""
        job: list[_Job] | threading.Event | None = None
        try:
            while True:
                job = self._jobs.get()
                if isinstance(job, list):
                    self._commit(job)
                elif job is None:
                    self._connect()  # a file that no batch reached is made a checkpoint too
                    break
                else:
                    job.set()
            self._let_go()
        except BaseException as exc:
            self._fail(exc)
            if job is not None:
                self._drain()
            self._let_go()

    def _fail(self, exc: BaseException) -> None:
        """Keep the first error of the writer for the caller, as a CheckpointError."""
        if self._error is not None:
            return
        detail = str(exc) if isinstance(exc, sqlite3.Error) else f"{type(exc).__name__}: {exc}"
        self._error = CheckpointError(self.path, f"cannot be written: {detail}")
        self._error.__cause__ = exc

    def _let_go(self) -> None:
        """Close the writer's connection, which folds the write-ahead log into the file.

        Without fsync: what was committed is in the operating system's hands either way,
        which is what a killed process needs; the three syncs (3-15 ms each on a virtual disk)
        would double the cost of a short run, for a power cut's sake only.
        """
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute("PRAGMA synchronous=OFF")
            conn.close()
        except sqlite3.Error as exc:
            conn.close()
            self._fail(exc)

    def _connect(self) -> sqlite3.Connection:
        """The writer's connection, opened (and the file made a checkpoint) at first use."""
        if self._conn is None:
            self._conn = sqlite3.connect(self.path, isolation_level=None,
                                         check_same_thread=False)
            if self.reader is None:
                _create(self._conn, self.function)
            self._conn.execute("PRAGMA synchronous=NORMAL")  # WAL: commits need no fsync
        return self._conn

    def _commit(self, bundle: list[_Job]) -> None:
        """Write the batches of ``bundle`` in one transaction."""
        conn = self._connect()
        if not bundle:
            return
        conn.execute("BEGIN")
        try:
            for job in bundle:
                self._insert(conn, job)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # the first error says what failed
                    conn.execute("ROLLBACK")
            raise

    def _drain(self) -> None:
        """After a failure: take the jobs without writing them, waking who waits for a flush,
        until told to stop."""
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if isinstance(job, threading.Event):
                job.set()

    def _insert(self, conn: sqlite3.Connection, job: _Job) -> None:
        """Write one queued batch as one row (and a row per failure)."""
        batch, keep, chosen = job.batch, job.keep, job.chosen
        indices = batch.indices
        pick = _picker(keep)
        values = pick(batch.values)
        problems = list(job.failed)
        try:
            results = pickle.dumps(values, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            results = self._dump_each(values, chosen, problems)
        output = None
        if batch.stdout is not None:
            output = json.dumps(list(zip(pick(batch.stdout), pick(batch.stderr or (
                [""] * len(indices))), strict=True)))
        # Consecutive tasks (the common case) need no list: lo and hi say which they are.
        if type(chosen) is range and chosen.step == 1:
            lo, hi, listed = chosen.start, chosen.stop, None
        else:
            lo, hi = min(chosen), max(chosen) + 1
            listed = None if hi - lo == len(chosen) and list(chosen) == list(range(lo, hi)) else (
                json.dumps(list(chosen)))
        row = (
            lo, hi, listed, batch.pid, time.time(),
            self.shared, pickle.dumps(job.keys, protocol=pickle.HIGHEST_PROTOCOL), results,
            _wall_clock(_packed(batch.started, "d", keep), self.wall_offset),
            _packed(batch.elapsed, "d", keep).tobytes(),
            _packed(batch.cpu_time, "d", keep).tobytes(),
            _packed(batch.peak_rss, "q", keep).tobytes(), job.attempts, output,
        )
        number = conn.execute(_INSERT_BATCH, row).lastrowid
        if problems:
            conn.executemany(_INSERT_FAILURE, [(p[0], number, *p[1:]) for p in problems])

    @staticmethod
    def _dump_each(values: list[Any], indices: Sequence[int],
                   problems: list[tuple[Any, ...]]) -> bytes:
        """Pickle ``values`` with dill's help where pickle cannot; a value neither can pickle
        is written as None and noted in ``problems``, so that a resumed run runs it again."""
        try:
            return dumps(values)
        except Exception:
            pass
        kept = []
        for index, value in zip(indices, values, strict=True):
            try:
                dumps(value)
                kept.append(value)
            except Exception as exc:
                kept.append(None)
                message = f"the result cannot be pickled: {type(exc).__name__}: {exc}"
                problems.append((index, UNSAVED, None, message, None, None))
        return dumps(kept)


def _indices(row: Sequence[Any]) -> list[int]:
    """The task indices of a ``batches`` row that starts with ``id, lo, hi, indices``."""
    return list(range(row[1], row[2])) if row[3] is None else json.loads(row[3])


def _picker(keep: list[int] | None) -> Callable[[Sequence[Any]], list[Any]]:
    if keep is None:
        return list
    return lambda column: [column[pos] for pos in keep]


def _packed(column: Sequence[Any], typecode: str, keep: list[int] | None) -> array[Any]:
    """The positions ``keep`` (None: all) of ``column``, as an array of ``typecode``."""
    if keep is None and isinstance(column, array) and column.typecode == typecode:
        return column
    return array(typecode, _picker(keep)(column))


def _wall_clock(started: array[float], offset: float) -> bytes:
    """Packed ``started`` times, moved from ``perf_counter`` to ``time.time`` by ``offset``;
    0 (a task that never started) stays 0."""
    return array("d", [s + offset if s else 0.0 for s in started]).tobytes()


def _columns(columns: tuple[bytes, bytes, bytes, bytes, bytes | None, str | None]) -> tuple[
        array[float], array[float], array[float], array[int], array[int] | None, str | None]:
    started, elapsed, cpu_time, peak_rss, attempts, output = columns
    return (_array("d", started), _array("d", elapsed), _array("d", cpu_time),
            _array("q", peak_rss), None if attempts is None else _array("I", attempts), output)


def _array(typecode: str, blob: bytes) -> array[Any]:
    column = array(typecode)
    column.frombytes(blob)
    return column


def _failure_parts(failure: Sequence[Any]) -> tuple[bytes | None, str, str, str]:
    _status, type_name, message, traceback, blob = failure
    return blob, type_name or "RuntimeError", message or "", traceback or ""


def _check_or_create(conn: sqlite3.Connection, path: str, function: str) -> None:
    """Make an empty file a checkpoint for ``function``, or check that it is one.

    Raises:
        CheckpointError: the file is no SQLite database, or no checkpoint, or another
            function's; nothing was written to it.
    """
    tables = _tables(conn, path, "; it was left as it was")
    if not tables:
        _create(conn, function)
        return
    meta = _read_meta(conn, path, tables)
    if meta.get("function") != function:
        msg = (
            f"was written by a run of {meta.get('function')}, not of {function}; pass another "
            "path, or delete the file to start afresh"
        )
        raise CheckpointError(path, msg)


def _create(conn: sqlite3.Connection, function: str) -> None:
    """Make the empty file of ``conn`` a checkpoint for ``function``."""
    from .. import __version__

    # One script, one transaction: each statement run on its own would wait for the GIL
    # again, and the Runner's thread holds it while it dispatches.
    conn.executescript(_CREATE)
    meta = {"format": FORMAT, "function": function, "library": __version__,
            "created": datetime.datetime.now().isoformat(timespec="seconds")}
    conn.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
    conn.execute("COMMIT")


def _read_meta(conn: sqlite3.Connection, path: str, tables: set[str]) -> dict[str, str]:
    if not {"meta", "batches", "failures"} <= tables:
        msg = (
            f"is a SQLite database but not a parallel_jobs checkpoint (its tables: "
            f"{', '.join(sorted(tables))}); it was left as it was"
        )
        raise CheckpointError(path, msg)
    try:
        meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
    except sqlite3.Error as exc:
        raise CheckpointError(path, f"cannot be read: {exc}") from exc
    if meta.get("format") != FORMAT:
        msg = f"has layout version {meta.get('format')!r}; this version reads {FORMAT!r}"
        raise CheckpointError(path, msg)
    return meta


def _tables(conn: sqlite3.Connection, path: str, note: str = "") -> set[str]:
    """The names of the tables in the file at ``path``, or a CheckpointError if it is none."""
    try:
        return {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as exc:
        msg = f"is not a SQLite database, or is damaged ({exc}){note}"
        raise CheckpointError(path, msg) from exc


def read_checkpoint(path: str | os.PathLike[str]) -> list[TaskResult]:
    """:func:`parallel_jobs.load_checkpoint`, which imports this module only when called."""
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise CheckpointError(name, "no such file")
    uri = "file:" + urllib.parse.quote(os.path.abspath(name)) + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise CheckpointError(name, f"cannot be opened: {exc}") from exc
    try:
        tables = _tables(conn, name)
        _read_meta(conn, name, tables)
        try:
            rows = conn.execute(f"SELECT {_BATCH_COLUMNS} FROM batches ORDER BY id").fetchall()
            failures = {(row[0], row[1]): row[2:] for row in conn.execute(
                "SELECT idx, batch, status, error_type, error_message, traceback, exception "
                "FROM failures")}
        except sqlite3.Error as exc:
            raise CheckpointError(name, f"cannot be read: {exc}") from exc
    finally:
        conn.close()
    latest: dict[int, TaskResult] = {}
    for row in rows:
        stored = _Stored(row[0], _indices(row), row[4], True, [], row[7], row[8:14])
        latest.update(_task_results(stored, failures))
    return [latest[index] for index in sorted(latest)]


def _task_results(stored: _Stored, failures: dict[tuple[int, int], tuple[Any, ...]]
                  ) -> Iterable[tuple[int, TaskResult]]:
    started, elapsed, cpu_time, peak_rss, attempts, output = _columns(stored.columns)
    values = stored.values()
    outputs = json.loads(output) if output else None
    for at, index in enumerate(stored.indices):
        failure = failures.get((index, stored.id))
        error: BaseException | None = None
        traceback = ""
        if failure is not None:
            if failure[0] == FAILED:
                rebuilt = rebuild_failure(*_failure_parts(failure))
                error, traceback = rebuilt.exception, rebuilt.traceback
            else:
                error = RuntimeError(failure[2])
        yield index, TaskResult(
            index=index, value=values[at], success=failure is None or failure[0] != FAILED,
            exception=error, traceback=traceback, started=started[at],
            finished=started[at] + elapsed[at] if started[at] else 0.0, elapsed=elapsed[at],
            cpu_time=cpu_time[at], peak_rss=peak_rss[at], pid=stored.pid,
            attempts=1 if attempts is None else attempts[at],
            stdout=outputs[at][0] if outputs else "", stderr=outputs[at][1] if outputs else "",
        )
