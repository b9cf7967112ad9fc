"""Checkpoints: each finished task of a run in a SQLite file, so that a rerun skips it.

::

    Runner._dispatch ──chunk──▶ Checkpoint.split ──restored batches──▶ ResultStore
                                     │ (the key of each task sent, until it is written)
    Runner._absorb ──batch──▶ Checkpoint.write ──one transaction per batch──▶ tasks table

The parent writes, whatever the backend: a batch is committed as it arrives, before the
progress bar, a callback or ``imap`` can report its tasks done, so that what was reported done is
in the file even when the parent is killed the next instant. SQLite in WAL mode makes each
commit atomic; ``synchronous=NORMAL`` keeps a commit that a killed process made (only a power
loss may take back the last ones).

While a run lives it holds an exclusive ``flock`` on the file, which the kernel releases when the
process dies however it dies: a second run on the same file fails at its start, and a run killed
with SIGKILL leaves no stale lock. Any check that fails leaves the file as it was.

The file's layout is documented in ``docs/long-runs.md`` and read with nothing but ``sqlite3``.
This module owns the file; it reads the run's tasks and batches and never touches a backend.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import os
import pickle
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .errors import CheckpointError
from .task import (
    Batch,
    Chunk,
    Payload,
    TaskResult,
    _dumps_exception,
    _rebuild_failure,
    dumps,
)

__all__ = ["Checkpoint", "function_name", "load_checkpoint"]

FORMAT = "1"
"""The version of the file's layout, kept in its ``meta`` table."""

WINDOW = 1024
"""Rows read from the file at once when looking for tasks already done."""

_SCHEMA = """
CREATE TABLE meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE tasks (
    idx INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    status TEXT NOT NULL,
    result BLOB,
    started REAL,
    finished REAL,
    elapsed REAL,
    cpu_time REAL,
    peak_rss INTEGER,
    pid INTEGER,
    attempts INTEGER,
    error_type TEXT,
    error_message TEXT,
    traceback TEXT,
    exception BLOB,
    stdout TEXT,
    stderr TEXT
);
"""
_COLUMNS = (
    "idx, key, status, result, started, finished, elapsed, cpu_time, peak_rss, pid, attempts, "
    "error_type, error_message, traceback, exception, stdout, stderr"
)
_INSERT = f"INSERT OR REPLACE INTO tasks ({_COLUMNS}) VALUES ({', '.join('?' * 17)})"

SUCCEEDED, FAILED, UNSAVED = "succeeded", "failed", "unsaved"


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
    """What every task's key starts from: the function's name and the shared arguments
    (``globaldict``, shared on purpose and changed by tasks, is no input)."""
    kwargs = sorted((k, v) for k, v in payload.kwargs.items() if k != "globaldict")
    blob = dumps((function_name(payload.func), tuple(payload.args), kwargs))
    return hashlib.blake2b(blob, digest_size=16).digest()


class Checkpoint:
    """One run's hold on its checkpoint file; use :meth:`open`.

    Args:
        path: the file.
        conn: the open connection.
        lock: the descriptor that holds the file's ``flock``.
        payload: what the run's tasks share, from which their keys start.
        rerun_failed: run again the tasks that failed in an earlier run.
    """

    def __init__(self, path: str, conn: sqlite3.Connection, lock: int, payload: Payload,
                 rerun_failed: bool) -> None:
        self.path = path
        self.conn = conn
        self.lock = lock
        self.rerun_failed = rerun_failed
        try:
            self.prefix = _shared_digest(payload)
        except Exception as exc:
            self.close()
            msg = f"the shared arguments cannot be pickled to key the tasks: {exc}"
            raise CheckpointError(path, msg) from exc
        highest = conn.execute("SELECT max(idx) FROM tasks").fetchone()[0]
        #: No task at or beyond this index is in the file: no need to look for it there.
        self.end = -1 if highest is None else highest
        self.pending: dict[int, str] = {}  # the keys of tasks sent and not yet written
        self._window: tuple[int, dict[int, tuple[Any, ...]]] = (-WINDOW, {})  # none read yet
        self.wall_offset = time.time() - time.perf_counter()

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
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(name, isolation_level=None, check_same_thread=False)
            _check_or_create(conn, name, function_name(payload.func))
            conn.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            if conn is not None:
                conn.close()
            os.close(lock)  # after the connection: closing it drops SQLite's own locks too
            raise
        return cls(name, conn, lock, payload, rerun_failed)

    def close(self) -> None:
        """Let go of the file (safe to repeat)."""
        if self.lock < 0:
            return
        try:
            self.conn.close()
        finally:
            os.close(self.lock)
            self.lock = -1

    # -- keys --------------------------------------------------------------------------------------

    def keys(self, chunk: Chunk) -> list[str]:
        """The key of each task of ``chunk``: a digest of the shared part and its own values."""
        prefix, blake = self.prefix, hashlib.blake2b
        if chunk.iterkwargs is None:
            values: Iterable[Any] = chunk.itervals if chunk.itervals is not None else [
                None] * len(chunk)
        elif chunk.itervals is None:
            values = chunk.iterkwargs
        else:
            values = zip(chunk.itervals, chunk.iterkwargs, strict=True)
        try:
            return [blake(prefix + dumps(value), digest_size=16).hexdigest() for value in values]
        except Exception as exc:
            msg = f"the values of a task among {list(chunk.indices)} cannot be pickled: {exc}"
            raise CheckpointError(self.path, msg) from exc

    # -- reading -----------------------------------------------------------------------------------

    def split(self, chunk: Chunk) -> tuple[list[Batch], Chunk]:
        """Separate the tasks of ``chunk`` that the file holds as done, with the same inputs,
        from those to run: the first as batches to store, the second as a chunk to send."""
        keys = self.keys(chunk)
        indices = chunk.indices
        done: list[tuple[int, tuple[Any, ...]]] = []
        if indices and min(indices) <= self.end:
            for pos, index in enumerate(indices):
                row = self._row(index)
                if row is not None and row[1] == keys[pos] and self._keeps(row):
                    done.append((pos, row))
        pending = self.pending
        if not done:
            pending.update(zip(indices, keys, strict=True))
            return [], chunk
        skip = {pos for pos, _ in done}
        rest = [pos for pos in range(len(indices)) if pos not in skip]
        for pos in rest:
            pending[indices[pos]] = keys[pos]
        left = Chunk(
            [indices[pos] for pos in rest],
            None if chunk.itervals is None else [chunk.itervals[pos] for pos in rest],
            None if chunk.iterkwargs is None else [chunk.iterkwargs[pos] for pos in rest],
        )
        return self._batches(row for _, row in done), left

    def _keeps(self, row: tuple[Any, ...]) -> bool:
        status = row[2]
        return status == SUCCEEDED or (status == FAILED and not self.rerun_failed)

    def _row(self, index: int) -> tuple[Any, ...] | None:
        start, rows = self._window
        if not start <= index < start + WINDOW:
            start = index
            try:
                found = self.conn.execute(
                    f"SELECT {_COLUMNS} FROM tasks WHERE idx >= ? AND idx < ?",
                    (start, start + WINDOW)).fetchall()
            except sqlite3.Error as exc:
                raise CheckpointError(self.path, f"cannot be read: {exc}") from exc
            rows = {row[0]: row for row in found}
            self._window = (start, rows)
        return rows.get(index)

    def _batches(self, rows: Iterable[tuple[Any, ...]]) -> list[Batch]:
        """Batches of the tasks of ``rows``, one per run of rows from the same process."""
        batches: list[Batch] = []
        group: list[tuple[Any, ...]] = []
        for row in rows:
            if group and row[9] != group[-1][9]:
                batches.append(self._batch(group))
                group = []
            group.append(row)
        if group:
            batches.append(self._batch(group))
        return batches

    def _batch(self, rows: list[tuple[Any, ...]]) -> Batch:
        batch = Batch.empty([row[0] for row in rows], rows[0][9] or 0)
        batch.stdout = [row[15] or "" for row in rows]
        batch.stderr = [row[16] or "" for row in rows]
        offset = self.wall_offset
        for pos, row in enumerate(rows):
            batch.started[pos] = row[4] - offset if row[4] else 0.0
            batch.elapsed[pos] = row[6] or 0.0
            batch.cpu_time[pos] = row[7] or 0.0
            batch.peak_rss[pos] = row[8] or 0
            if row[2] == SUCCEEDED:
                batch.values[pos] = pickle.loads(row[3])
            else:
                batch.failures[pos] = _rebuild_failure(row[14], row[11], row[12], row[13])
        return batch

    # -- writing -----------------------------------------------------------------------------------

    def write(self, batch: Batch, final: set[int], attempts_of: Callable[[int], int]) -> None:
        """Commit the outcomes of ``batch`` in one transaction; a failure that is not in
        ``final`` will be retried, and is not written."""
        pending, offset, pid = self.pending, self.wall_offset, batch.pid
        nothing: list[str | None] = [None] * len(batch.indices)
        stdout: Sequence[str | None] = batch.stdout or nothing
        stderr: Sequence[str | None] = batch.stderr or nothing
        rows = []
        for pos, index in enumerate(batch.indices):
            failure = batch.failures.get(pos)
            if failure is not None and index not in final:
                continue
            key = pending.pop(index, None)
            if key is None:
                continue  # restored from this very file
            started, elapsed = batch.started[pos], batch.elapsed[pos]
            wall = started + offset if started else None
            times = (wall, wall + elapsed if wall else None, elapsed, batch.cpu_time[pos],
                     batch.peak_rss[pos], pid, attempts_of(index))
            if failure is None:
                try:
                    outcome: tuple[Any, ...] = (SUCCEEDED, dumps(batch.values[pos]), *times,
                                                None, None, None, None)
                except Exception as exc:
                    # Kept as done for those who read the file, but run again on resume.
                    outcome = (UNSAVED, None, *times, type(exc).__name__,
                               f"the result cannot be pickled: {exc}", None, None)
            else:
                outcome = (FAILED, None, *times, failure.type_name, failure.message,
                           failure.traceback, _dumps_exception(failure.exception))
            rows.append((index, key, *outcome, stdout[pos], stderr[pos]))
        if not rows:
            return
        conn = self.conn
        try:
            conn.execute("BEGIN")
            conn.executemany(_INSERT, rows)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise CheckpointError(self.path, f"cannot be written: {exc}") from exc


def _check_or_create(conn: sqlite3.Connection, path: str, function: str) -> None:
    """Make an empty file a checkpoint for ``function``, or check that it is one.

    Raises:
        CheckpointError: the file is no SQLite database, or no checkpoint, or another
            function's; nothing was written to it.
    """
    try:
        tables = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as exc:
        msg = f"is not a SQLite database, or is damaged ({exc}); it was left as it was"
        raise CheckpointError(path, msg) from exc
    if not tables:
        from . import __version__

        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("BEGIN")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        meta = {"format": FORMAT, "function": function, "library": __version__,
                "created": datetime.datetime.now().isoformat(timespec="seconds")}
        conn.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        conn.execute("COMMIT")
        return
    meta = _read_meta(conn, path, tables)
    if meta.get("function") != function:
        msg = (
            f"was written by a run of {meta.get('function')}, not of {function}; pass another "
            "path, or delete the file to start afresh"
        )
        raise CheckpointError(path, msg)


def _read_meta(conn: sqlite3.Connection, path: str, tables: set[str]) -> dict[str, str]:
    if not {"meta", "tasks"} <= tables:
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


def load_checkpoint(path: str | os.PathLike[str]) -> list[TaskResult]:
    """What a checkpoint file holds: one :class:`~parallel_jobs.TaskResult` per task written,
    in input order.

    The file is only read, without taking its lock, so a sweep may be inspected while it runs
    (it then shows what was committed so far). A task whose result could not be pickled has
    ``success=True`` and ``value=None``, and its ``exception`` says why; a failed task has its
    exception (rebuilt as its own type where it can be) and its traceback text.

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
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise CheckpointError(name, "no such file")
    uri = "file:" + urllib.parse.quote(os.path.abspath(name)) + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise CheckpointError(name, f"cannot be opened: {exc}") from exc
    try:
        try:
            tables = {row[0] for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.Error as exc:
            raise CheckpointError(name, f"is not a SQLite database, or is damaged ({exc})") from exc
        _read_meta(conn, name, tables)
        try:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM tasks ORDER BY idx").fetchall()
        except sqlite3.Error as exc:
            raise CheckpointError(name, f"cannot be read: {exc}") from exc
    finally:
        conn.close()
    return [_task_result(row) for row in rows]


def _task_result(row: Sequence[Any]) -> TaskResult:
    (index, _key, status, result, started, finished, elapsed, cpu_time, peak_rss, pid, attempts,
     error_type, error_message, traceback, exception, stdout, stderr) = row
    value: Any = None
    error: BaseException | None = None
    if status == SUCCEEDED:
        value = pickle.loads(result)
    elif status == FAILED:
        error = _rebuild_failure(exception, error_type, error_message, traceback).exception
    else:
        error = RuntimeError(error_message)
    return TaskResult(
        index=index, value=value, success=status != FAILED, exception=error,
        traceback=traceback or "", started=started or 0.0, finished=finished or 0.0,
        elapsed=elapsed or 0.0, cpu_time=cpu_time or 0.0, peak_rss=peak_rss or 0,
        pid=pid or 0, attempts=attempts or 0, stdout=stdout or "", stderr=stderr or "",
    )

