"""Checkpoints: finished tasks in a SQLite file, skipped by the next run on the same file.

Tasks leave one file per execution (``jobs.logged_square``), so that the tests count what ran.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

import parallel_jobs as pj
from tests.conftest import ROOT
from tests.jobs import (
    executions,
    generator_of,
    logged_square,
    noisy_square,
    signal_self_on,
    square,
    square_or_wait,
    wait_for_path,
    with_any_keywords,
)

pytestmark = pytest.mark.filterwarnings("ignore:only .* tasks succeeded:RuntimeWarning")


def _runs(tmp_path: Path) -> str:
    folder = tmp_path / "runs"
    folder.mkdir(exist_ok=True)
    return str(folder)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("parallelizer", ["serial", "thread", None])
def test_a_stopped_run_resumes_with_only_the_rest(tmp_path: Path, parallelizer: Any) -> None:
    runs, db = _runs(tmp_path), str(tmp_path / "sweep.sqlite")

    def stop_at_five(data: dict[str, Any]) -> None:
        data["stop"] = data["index"] >= 4 and sum(executions(runs).values()) >= 5

    # One task per chunk: with bigger chunks of quick tasks, all 20 may be done before the
    # callback sees the fifth.
    first = pj.Parallel(logged_square, range(20), kwargs={"folder": runs}, ncpus=2,
                        parallelizer=parallelizer, callback=stop_at_five, checkpoint=db,
                        chunksize=1).run()
    done = {r.index for r in pj.load_checkpoint(db)}
    assert done == {i for i, ok in enumerate(first.success) if ok}
    assert 5 <= len(done) < 20
    before = executions(runs)
    results = pj.parallelize(logged_square, range(20), kwargs={"folder": runs}, ncpus=2,
                             parallelizer=parallelizer, checkpoint=db)
    assert results == [x * x for x in range(20)]
    after = executions(runs)
    again = {x: after[x] - before.get(x, 0) for x in range(20)}
    assert again == {x: 0 if x in done else 1 for x in range(20)}


def test_a_finished_run_reruns_nothing_and_restores_records(tmp_path: Path) -> None:
    runs, db = _runs(tmp_path), tmp_path / "sweep.sqlite"  # a Path works too
    first = pj.Parallel(logged_square, range(6), kwargs={"folder": runs}, ncpus=2,
                        checkpoint=db).run()
    second = pj.Parallel(logged_square, range(6), kwargs={"folder": runs}, ncpus=2,
                         checkpoint=db).run()
    assert executions(runs) == dict.fromkeys(range(6), 1)
    assert second.results == first.results
    for old, new in zip(first.task_results, second.task_results, strict=True):
        assert (new.pid, new.cpu_time, new.peak_rss) == (old.pid, old.cpu_time, old.peak_rss)
        assert new.elapsed == pytest.approx(old.elapsed, rel=1e-6)
        assert new.started == pytest.approx(old.started, abs=1e-3)


def test_changed_inputs_run_again(tmp_path: Path) -> None:
    runs, db = _runs(tmp_path), str(tmp_path / "sweep.sqlite")
    pj.parallelize(logged_square, [1, 2, 3, 4], kwargs={"folder": runs}, checkpoint=db,
                   parallelizer="serial")
    # One per-task value changed: that task alone runs again.
    assert pj.parallelize(logged_square, [1, 2, 30, 4], kwargs={"folder": runs},
                          checkpoint=db, parallelizer="serial") == [1, 4, 900, 16]
    assert executions(runs) == {1: 1, 2: 1, 3: 1, 30: 1, 4: 1}
    # A shared argument changed: every task runs again.
    assert pj.parallelize(logged_square, [1, 2, 30, 4], kwargs={"folder": runs, "seconds": 0.001},
                          checkpoint=db, parallelizer="serial") == [1, 4, 900, 16]
    assert executions(runs) == {1: 2, 2: 2, 3: 1, 30: 2, 4: 2}


def test_failed_tasks_run_again_unless_kept(tmp_path: Path) -> None:
    runs, db = _runs(tmp_path), str(tmp_path / "sweep.sqlite")
    options: dict[str, Any] = {"kwargs": {"folder": runs, "fail": 2}, "checkpoint": db,
                               "parallelizer": "serial", "die": False}
    first = pj.Parallel(logged_square, range(4), **options).run()
    assert first.success == [True, True, False, True]
    kept = pj.Parallel(logged_square, range(4), rerun_failed=False, **options).run()
    assert executions(runs) == dict.fromkeys(range(4), 1)
    assert kept.success == [True, True, False, True]
    error = kept.exceptions[2]
    assert isinstance(error, ValueError)
    assert str(error) == "task value 2 fails"
    assert kept.results[2] is error
    assert "logged_square" in kept.task_results[2].traceback
    with pytest.raises(ValueError, match="task value 2 fails"):  # die applies to a kept failure
        pj.parallelize(logged_square, range(4), kwargs={"folder": runs, "fail": 2},
                       checkpoint=db, parallelizer="serial", rerun_failed=False)
    pj.Parallel(logged_square, range(4), **options).run()  # rerun_failed=True by default
    assert executions(runs) == {0: 1, 1: 1, 2: 2, 3: 1}


def test_the_file_is_readable_without_parallel_jobs(tmp_path: Path) -> None:
    import json
    import pickle
    from array import array

    db = str(tmp_path / "sweep.sqlite")
    runs = _runs(tmp_path)
    pj.Parallel(logged_square, range(4), kwargs={"folder": runs, "fail": 2}, die=False,
                parallelizer="serial", checkpoint=db).run()
    with sqlite3.connect(db) as conn:
        meta = dict(conn.execute("SELECT name, value FROM meta"))
        tasks = conn.execute("SELECT idx, status, pid, error_type FROM tasks").fetchall()
        batches = conn.execute("SELECT lo, hi, indices, results, elapsed FROM batches").fetchall()
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()
    assert meta["function"] == "tests.jobs.logged_square"
    assert meta["format"] == "1"
    me = os.getpid()
    assert tasks == [(0, "succeeded", me, None), (1, "succeeded", me, None),
                     (2, "failed", me, "builtins.ValueError"), (3, "succeeded", me, None)]
    # A batch of consecutive tasks says which by lo and hi, any other lists them.
    indices = [i for lo, hi, listed, _, _ in batches
               for i in (range(lo, hi) if listed is None else json.loads(listed))]
    results = [r for row in batches for r in pickle.loads(row[3])]
    assert dict(zip(indices, results, strict=True)) == {0: 0, 1: 1, 2: None, 3: 9}
    elapsed = array("d")
    for row in batches:
        elapsed.frombytes(row[4])
    assert len(elapsed) == 4
    assert all(seconds >= 0 for seconds in elapsed)
    pandas = pytest.importorskip("pandas")
    with sqlite3.connect(db) as conn:
        frame = pandas.read_sql("SELECT idx, status FROM tasks", conn)
    conn.close()
    assert list(frame["status"]) == ["succeeded", "succeeded", "failed", "succeeded"]


def test_captured_output_is_kept(tmp_path: Path) -> None:
    db = str(tmp_path / "sweep.sqlite")
    first = pj.Parallel(noisy_square, range(3), parallelizer="serial", capture=True,
                        checkpoint=db).run()
    again = pj.Parallel(noisy_square, range(3), parallelizer="serial", capture=True,
                        checkpoint=db).run()
    assert first.stdout == again.stdout == [f"task {i}\n" for i in range(3)]
    assert [r.stdout for r in pj.load_checkpoint(db)] == first.stdout


def test_load_checkpoint_gives_task_results(tmp_path: Path) -> None:
    db = str(tmp_path / "sweep.sqlite")
    runs = _runs(tmp_path)
    pj.Parallel(logged_square, range(4), kwargs={"folder": runs, "fail": 1}, ncpus=2,
                die=False, checkpoint=db).run()
    loaded = pj.load_checkpoint(db)
    assert [(r.index, r.value, r.success) for r in loaded] == [
        (0, 0, True), (1, None, False), (2, 4, True), (3, 9, True)]
    assert isinstance(loaded[1].exception, ValueError)
    assert "task value 1 fails" in loaded[1].traceback
    assert all(r.attempts == 1 and r.pid > 0 and r.finished >= r.started > 0 for r in loaded)
    with pytest.raises(pj.CheckpointError, match="no such file"):
        pj.load_checkpoint(tmp_path / "missing.sqlite")


def test_a_result_that_cannot_be_pickled_runs_again(tmp_path: Path) -> None:
    db = str(tmp_path / "sweep.sqlite")
    assert len(pj.parallelize(generator_of, [1, 2], parallelizer="thread", checkpoint=db)) == 2
    loaded = pj.load_checkpoint(db)
    assert [r.success for r in loaded] == [True, True]
    assert "cannot be pickled" in str(loaded[0].exception)
    with sqlite3.connect(db) as conn:
        assert {row[0] for row in conn.execute("SELECT status FROM tasks")} == {"unsaved"}
    conn.close()
    again = pj.Parallel(generator_of, [1, 2], parallelizer="thread", checkpoint=db).run()
    assert [r.pid for r in again.task_results] == [os.getpid()] * 2
    assert [r.started > loaded[0].finished for r in again.task_results] == [True, True]


@pytest.mark.timeout(60)
def test_a_second_run_on_the_same_file_fails_at_its_start(tmp_path: Path) -> None:
    db, release = str(tmp_path / "sweep.sqlite"), str(tmp_path / "release")
    first = pj.Parallel(wait_for_path, range(2), kwargs={"path": release}, ncpus=2,
                        checkpoint=db)
    first.run_async()
    try:
        with pytest.raises(pj.CheckpointError, match="another run is using it") as caught:
            pj.parallelize(wait_for_path, range(2), kwargs={"path": release},
                           parallelizer="serial", checkpoint=db)
        assert caught.value.path == db
        assert isinstance(caught.value, OSError)
    finally:
        Path(release).touch()
        first.finalize()
    assert first.results == [0, 1]
    assert [r.index for r in pj.load_checkpoint(db)] == [0, 1]


def test_a_file_of_another_function_is_refused_and_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "sweep.sqlite"
    pj.parallelize(square, range(3), parallelizer="serial", checkpoint=db)
    before = _digest(db)
    with pytest.raises(pj.CheckpointError, match=r"sweep\.sqlite.*tests\.jobs\.square.*"
                       r"not of tests\.jobs\.noisy_square"):
        pj.parallelize(noisy_square, range(3), parallelizer="serial", checkpoint=db)
    assert _digest(db) == before


@pytest.mark.parametrize("content", [b"not a database at all" * 100,
                                     b"SQLite format 3\0" + b"\xff" * 200])
def test_a_damaged_file_is_refused_and_left_alone(tmp_path: Path, content: bytes) -> None:
    db = tmp_path / "sweep.sqlite"
    db.write_bytes(content)
    with pytest.raises(pj.CheckpointError, match=r"sweep\.sqlite.*not a SQLite database"):
        pj.parallelize(square, range(3), parallelizer="serial", checkpoint=db)
    assert db.read_bytes() == content
    with pytest.raises(pj.CheckpointError, match="not a SQLite database"):
        pj.load_checkpoint(db)


def test_another_database_or_a_folder_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "other.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE people (name TEXT)")
    conn.close()
    before = _digest(db)
    with pytest.raises(pj.CheckpointError, match="not a parallel_jobs checkpoint"):
        pj.parallelize(square, range(3), parallelizer="serial", checkpoint=db)
    assert _digest(db) == before
    with pytest.raises(pj.CheckpointError, match="cannot be opened"):
        pj.parallelize(square, range(3), parallelizer="serial", checkpoint=tmp_path)
    with pytest.raises(TypeError, match="checkpoint must be a file path"):
        pj.Parallel(square, range(3), checkpoint=3)  # type: ignore[arg-type]


def test_checkpoint_error_pickles() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(pj.CheckpointError("a.sqlite", "is odd")))
    assert (error.path, error.reason, str(error)) == ("a.sqlite", "is odd",
                                                      "checkpoint 'a.sqlite': is odd")


_KILLED_SWEEP = """
import sys
import parallel_jobs as pj
from tests.jobs import logged_square

db, runs, reported = sys.argv[1:4]

def report(data):
    # Runs after the task's batch is committed: what it names must be in the file.
    with open(reported, "a") as fh:
        fh.write(f"{data['index']}\\n")

pj.parallelize(logged_square, range(60), kwargs={"folder": runs, "seconds": 0.02}, ncpus=2,
               chunksize=3, callback=report, checkpoint=db)
"""


@pytest.mark.timeout(120)
def test_sigkill_of_the_parent_loses_nothing_reported_and_resume_runs_the_rest(
        tmp_path: Path) -> None:
    runs, db, reported = _runs(tmp_path), tmp_path / "sweep.sqlite", tmp_path / "reported"
    script = tmp_path / "sweep.py"
    script.write_text(_KILLED_SWEEP)
    child = subprocess.Popen([sys.executable, str(script), str(db), runs, str(reported)],
                             cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert child.poll() is None, "the sweep ended before it was killed"
            assert time.monotonic() < deadline, "the sweep never wrote 10 tasks"
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                    count = conn.execute("SELECT count(*) FROM tasks").fetchone()[0]
                conn.close()
            except sqlite3.Error:
                count = 0  # not created yet
            if count >= 10:
                break
            time.sleep(0.01)
        workers = psutil.Process(child.pid).children(recursive=True)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    # Orphaned workers may finish a task or two: wait until none is left to count its file.
    _, alive = psutil.wait_procs(workers, timeout=5)
    for proc in alive:
        proc.kill()
    psutil.wait_procs(alive, timeout=5)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()
    done = {r.index for r in pj.load_checkpoint(db)}
    assert 10 <= len(done) < 60
    told = {int(line) for line in reported.read_text().split()}
    assert told <= done
    before = executions(runs)
    results = pj.parallelize(logged_square, range(60), kwargs={"folder": runs, "seconds": 0.02},
                             ncpus=2, chunksize=3, checkpoint=db)
    assert results == [x * x for x in range(60)]
    after = executions(runs)
    again = {x: after[x] - before.get(x, 0) for x in range(60)}
    assert again == {x: 0 if x in done else 1 for x in range(60)}


def test_dask_checkpoints_in_the_parent_and_streams(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    runs, db = _runs(tmp_path), str(tmp_path / "sweep.sqlite")
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                       dashboard_address=None)
    client = distributed.Client(cluster, set_as_default=False)
    try:
        pj.parallelize(logged_square, range(3), kwargs={"folder": runs}, parallelizer=client,
                       checkpoint=db)
        assert pj.parallelize(logged_square, range(5), kwargs={"folder": runs},
                              parallelizer=client, checkpoint=db) == [0, 1, 4, 9, 16]
        streamed = pj.imap(logged_square, iter(range(7)), kwargs={"folder": runs},
                           parallelizer=client, checkpoint=db, ordered=False)
        assert sorted(streamed) == [x * x for x in range(7)]
    finally:
        client.close()
        cluster.close()
    assert executions(runs) == dict.fromkeys(range(7), 1)


def test_a_batch_of_no_task_writes_nothing(tmp_path: Path) -> None:
    # A chunk stopped before its first task comes back with no task in it.
    from parallel_jobs.engine.checkpoint import Checkpoint
    from parallel_jobs.records import Batch, Payload

    checkpoint = Checkpoint.open(tmp_path / "sweep.sqlite", Payload(square))
    try:
        batch = Batch.empty(range(3), 0)
        batch.cut(0)
        checkpoint.write(batch, set(), lambda index: 0)
    finally:
        checkpoint.close()
    assert pj.load_checkpoint(tmp_path / "sweep.sqlite") == []


def test_the_file_alone_holds_everything_once_the_run_returns(tmp_path: Path) -> None:
    # The write-ahead log is moved into the file before run() returns: a copy of the file
    # made at once (to keep, or to send) misses nothing.
    import shutil

    db = tmp_path / "sweep.sqlite"
    pj.parallelize(square, range(50), ncpus=2, checkpoint=db)
    assert not Path(f"{db}-wal").exists()
    copy = tmp_path / "copy.sqlite"
    shutil.copyfile(db, copy)
    assert [r.value for r in pj.load_checkpoint(copy)] == [x * x for x in range(50)]


# -- the writer thread ----------------------------------------------------------------------------


def _writers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "parallel_jobs-checkpoint"]


def _holds(db: Path, index: int) -> bool:
    """Whether another connection, as a reader would open it, finds task ``index`` in ``db``."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM tasks WHERE idx = ?", (index,)).fetchone() == (1,)
    finally:
        conn.close()


def test_what_imap_yields_is_in_the_file_first(tmp_path: Path) -> None:
    # The writer thread commits behind the Runner's back: imap must wait for it before it yields.
    db = tmp_path / "sweep.sqlite"
    for index, value in enumerate(pj.imap(square, range(30), ncpus=2, chunksize=2,
                                          checkpoint=db)):
        assert value == index * index
        assert _holds(db, index), f"task {index} was yielded before it was committed"
    assert not _writers()


@pytest.mark.timeout(30)
def test_what_the_callback_is_told_is_in_the_file_first(tmp_path: Path) -> None:
    db = tmp_path / "sweep.sqlite"
    told: list[int] = []

    def check(data: dict[str, Any]) -> None:
        assert _holds(db, data["index"]), f"task {data['index']} was reported before its commit"
        told.append(data["index"])

    pj.parallelize(square, range(30), ncpus=2, chunksize=2, callback=check, checkpoint=db)
    assert sorted(told) == list(range(30))
    assert not _writers()


@pytest.mark.timeout(30)
def test_what_a_background_run_shows_done_is_in_the_file_first(tmp_path: Path) -> None:
    # monitor() draws a background run's store while it runs: with no callback and no bar,
    # the run must still commit what the store counts as done.
    db, gate = tmp_path / "sweep.sqlite", tmp_path / "go"
    P = pj.Parallel(square_or_wait, range(6), kwargs={"hold": 4, "path": str(gate)},
                    ncpus=1, chunksize=1, checkpoint=db)
    P.run_async()
    try:
        deadline = time.monotonic() + 20
        while P._store is None or P._store.done < 4:  # tasks 0-3 done; task 4 waits
            assert time.monotonic() < deadline, "the first four tasks never finished"
            time.sleep(0.005)
        assert all(_holds(db, i) for i in range(4))
    finally:
        gate.touch()
        P.finalize()
    assert P.results == [x * x for x in range(6)]


@pytest.mark.timeout(30)
def test_no_writer_thread_outlives_a_run_that_raised(tmp_path: Path) -> None:
    runs, db = _runs(tmp_path), tmp_path / "sweep.sqlite"
    with pytest.raises(ValueError, match="task value 3 fails"):
        pj.parallelize(logged_square, range(10), kwargs={"folder": runs, "fail": 3}, ncpus=2,
                       chunksize=1, checkpoint=db)
    assert not _writers()
    # The failure that stopped the run was reported (raised): it is in the file.
    assert [(r.index, r.success) for r in pj.load_checkpoint(db) if r.index == 3] == [(3, False)]


@pytest.mark.timeout(30)
def test_no_writer_thread_outlives_an_interrupted_run(tmp_path: Path) -> None:
    # A real Ctrl-C in the caller's main thread, from the task that runs there.
    assert threading.current_thread() is threading.main_thread()
    db = tmp_path / "sweep.sqlite"
    P = pj.Parallel(signal_self_on, range(4), kwargs={"signum": signal.SIGINT, "bad": 1},
                    die=False, parallelizer="serial", checkpoint=db)
    with pytest.raises(KeyboardInterrupt):
        P.run()
    assert not _writers()
    assert P.results[0] == 0
    assert [r.index for r in pj.load_checkpoint(db)] == [0]


@pytest.mark.timeout(30)
def test_no_writer_thread_outlives_an_imap_closed_early(tmp_path: Path) -> None:
    db = tmp_path / "sweep.sqlite"
    stream = pj.imap(square, iter(range(10**6)), ncpus=2, checkpoint=db)
    assert next(stream) == 0
    assert _writers()
    stream.close()
    assert not _writers()
    assert pj.parallelize(square, range(3), parallelizer="serial", checkpoint=db) == [0, 1, 4]


_FULL_DISK = """
import json, resource, signal, sys, threading
import parallel_jobs as pj

# Files may grow to 1 MB, then writes fail as on a full disk (EFBIG instead of a signal).
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, resource.RLIM_INFINITY))
try:
    pj.parallelize(bytes, [200_000] * 20, ncpus=2, checkpoint=sys.argv[1])
except pj.CheckpointError as exc:
    error = {"type": type(exc).__name__, "path": exc.path, "message": str(exc)}
else:
    error = None
threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
print(json.dumps({"error": error, "threads": threads}))
"""


@pytest.mark.timeout(60)
def test_a_failure_of_the_writer_reaches_the_caller_as_checkpoint_error(tmp_path: Path) -> None:
    import json

    db, script = tmp_path / "sweep.sqlite", tmp_path / "full.py"
    script.write_text(_FULL_DISK)
    done = subprocess.run([sys.executable, str(script), str(db)], cwd=ROOT, capture_output=True,
                          text=True, timeout=50, check=True)
    outcome = json.loads(done.stdout)
    assert outcome["threads"] == []
    error = outcome["error"]
    assert error is not None, "the run wrote 4 MB into a file limited to 1 MB without a word"
    assert error["type"] == "CheckpointError"
    assert error["path"] == str(db)
    assert "cannot be written" in error["message"]


def test_shared_arguments_that_cannot_be_keyed_are_refused_and_the_file_let_go(
        tmp_path: Path) -> None:
    db = tmp_path / "sweep.sqlite"
    with pytest.raises(pj.CheckpointError, match="shared arguments cannot be pickled"):
        pj.parallelize(with_any_keywords, range(2), kwargs={"stream": (x for x in [1])},
                       parallelizer="thread", checkpoint=db)
    assert not _writers()
    assert pj.parallelize(square, range(2), parallelizer="serial", checkpoint=db) == [0, 1]


@pytest.mark.timeout(60)
def test_a_run_stopped_within_chunks_resumes_with_only_the_rest(tmp_path: Path) -> None:
    # Chunks of consecutive tasks keep their keys per chunk: a chunk cut short by the stop
    # must still write the right key for each task that ran.
    runs, db = _runs(tmp_path), str(tmp_path / "sweep.sqlite")

    def stop_at_five(data: dict[str, Any]) -> None:
        data["stop"] = sum(executions(runs).values()) >= 5

    first = pj.Parallel(logged_square, range(40), kwargs={"folder": runs, "seconds": 0.01},
                        ncpus=2, chunksize=4, callback=stop_at_five, checkpoint=db).run()
    done = {r.index for r in pj.load_checkpoint(db)}
    assert done == {i for i, ok in enumerate(first.success) if ok}
    assert 5 <= len(done) < 40
    before = executions(runs)
    results = pj.parallelize(logged_square, range(40), kwargs={"folder": runs, "seconds": 0.01},
                             ncpus=2, chunksize=4, checkpoint=db)
    assert results == [x * x for x in range(40)]
    after = executions(runs)
    assert {x: after[x] - before.get(x, 0) for x in range(40)} == {
        x: 0 if x in done else 1 for x in range(40)}
