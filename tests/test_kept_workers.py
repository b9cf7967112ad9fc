"""Spawned and forkserver workers are kept between runs, holding nothing of the last run: a
run sees the caller's current code, cwd, environment and path whichever worker serves it, kept
workers belong to the process (not to the thread that started them), and a forked child of
the caller leaves them alone."""

from __future__ import annotations

import importlib
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from parallel_jobs import Parallel, parallelize, release_workers
from tests import jobs
from tests.conftest import ROOT, run_script

KEEPING = [m for m in ("spawn", "forkserver") if m in multiprocessing.get_all_start_methods()]


def _mapped_segments(pid: int) -> list[str]:
    with open(f"/proc/{pid}/maps") as fh:
        return [line for line in fh if "/memfd:parallel_jobs" in line]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("start_method", KEEPING)
def test_a_second_run_reuses_the_first_runs_workers(start_method: str) -> None:
    first = set(parallelize(jobs.pid, range(4), ncpus=2, chunksize=1, start_method=start_method))
    second = set(parallelize(jobs.square, range(4), ncpus=2, start_method=start_method))
    assert second == {0, 1, 4, 9}
    third = set(parallelize(jobs.pid, range(4), ncpus=2, chunksize=1, start_method=start_method))
    assert third <= first
    release_workers()
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
                   for pid in first)


@pytest.mark.timeout(60)
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc/<pid>/maps")
def test_a_kept_worker_lets_go_of_the_last_runs_shared_arrays() -> None:
    np = pytest.importorskip("numpy")
    data = np.ones((4, 1 << 18))  # 8 MB: shared through shared memory
    results = parallelize(jobs.use_data, range(4), data=data, ncpus=2, chunksize=1,
                          start_method="spawn", bad=-1)
    assert results == [1, 2, 5, 10]
    workers = [p.pid for p in psutil.Process().children() if "spawn" in " ".join(p.cmdline())]
    assert workers, "the run's workers are kept for the next run"
    # The workers drop the payload when told the run is over, a moment after the run returns.
    deadline = time.monotonic() + 10
    while any(_mapped_segments(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(_mapped_segments(pid) for pid in workers)
    release_workers()


def test_forked_workers_are_never_kept() -> None:
    before = {p.pid for p in psutil.Process().children()}
    parallelize(jobs.square, range(4), ncpus=2, start_method="fork")
    _, alive = psutil.wait_procs(
        [p for p in psutil.Process().children() if p.pid not in before], timeout=5)
    assert alive == []


SCRIPT = """
import os
import parallel_jobs as pj

def pid(_):
    return os.getpid()

if __name__ == "__main__":
    for library in ("multiprocess", "multiprocessing"):
        pj.parallelize(pid, range(4), parallelizer=library, start_method="spawn", chunksize=1)
    print("ran", flush=True)
"""


@pytest.mark.timeout(60)
def test_the_interpreter_exits_with_workers_of_both_libraries_kept(tmp_path: Path) -> None:
    # Each library joins its children at exit; kept workers must be stopped before that, or
    # the interpreter waits on them forever.
    assert run_script(tmp_path, SCRIPT, timeout=30) == ["ran"]


# -- a run sees the caller's current code and world --------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("start_method", KEEPING)
def test_a_run_calls_the_reloaded_code_not_what_kept_workers_imported(
    start_method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"edited_{start_method}"
    source = tmp_path / f"{name}.py"
    source.write_text("def value(_):\n    return 'first'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    try:
        assert parallelize(module.value, range(2), ncpus=2, start_method=start_method) == [
            "first", "first"]
        # As a notebook's autoreload does after the user edits the file.
        source.write_text("def value(_):\n    return 'second, edited'\n")
        os.utime(source, (time.time() + 5, time.time() + 5))
        importlib.reload(module)
        assert parallelize(module.value, range(2), ncpus=2, start_method=start_method) == [
            "second, edited", "second, edited"]
    finally:
        sys.modules.pop(name, None)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("start_method", KEEPING)
def test_kept_workers_see_the_callers_cwd_environment_and_path(
    start_method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = parallelize(jobs.world_seen, range(2), ncpus=2, chunksize=1,
                        start_method=start_method)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PARALLEL_JOBS_TEST_WORLD", "changed")
    monkeypatch.syspath_prepend(str(tmp_path))
    second = parallelize(jobs.world_seen, range(2), ncpus=2, chunksize=1,
                         start_method=start_method)
    assert {pid for *_, pid in second} <= {pid for *_, pid in first}, "reused workers"
    for cwd, variable, path, _ in second:
        assert cwd == str(tmp_path)
        assert variable == "changed"
        assert path == sys.path


# -- kept workers belong to the process ------------------------------------------------------


@pytest.mark.timeout(90)
def test_kept_workers_outlive_the_thread_that_started_them(tmp_path: Path) -> None:
    # They died with the thread that started them (PR_SET_PDEATHSIG), in the middle of a later
    # run from another thread, whose tasks then failed as "killed by SIGKILL".
    release_workers()
    pids: list[int] = []
    may_end = threading.Event()

    def first_run() -> None:
        pids.extend(parallelize(jobs.pid, range(2), ncpus=2, chunksize=1,
                                start_method="spawn"))
        may_end.wait(30)

    thread = threading.Thread(target=first_run)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while len(pids) < 2 and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        P = Parallel(jobs.announce_then_wait, range(2), folder=str(tmp_path), ncpus=2,
                     chunksize=1, start_method="spawn", die=False)
        P.run_async()
        started = [tmp_path / "started-0", tmp_path / "started-1"]
        while not all(p.exists() for p in started) and time.monotonic() < deadline:
            time.sleep(0.01)
        # The first run's thread ends while the second run's tasks run in its workers.
        native = thread.native_id
        may_end.set()
        thread.join(30)
        # The kernel signals a thread's children when the thread itself is gone, a moment
        # after join() returns.
        while os.path.exists(f"/proc/self/task/{native}") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not os.path.exists(f"/proc/self/task/{native}")
        (tmp_path / "go").touch()
        P.finalize()
    finally:
        may_end.set()
        thread.join(30)
    assert P.results == [0, 1], P.exceptions
    assert {r.pid for r in P.task_results} <= set(pids), "the second run reused the workers"


FORKS_AFTER = """
import os, sys
import parallel_jobs as pj

def pid(_):
    return os.getpid()

if __name__ == "__main__":
    method = sys.argv[1]
    pj.parallelize(pid, range(2), ncpus=2, start_method=method)  # leaves workers kept
    child = os.fork()
    if child == 0:
        # A pre-fork server's worker, or a daemonizing helper: it runs its own work, then exits.
        print("child", pj.parallelize(abs, [-1, -2], ncpus=2, start_method=method), flush=True)
        sys.exit(0)
    _, status = os.waitpid(child, 0)
    print("child status", os.waitstatus_to_exitcode(status), flush=True)
    print("parent", pj.parallelize(abs, [-3], ncpus=1, start_method=method), flush=True)
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("start_method", KEEPING)
def test_a_forked_child_leaves_the_parents_kept_workers_alone(
    start_method: str, tmp_path: Path
) -> None:
    # Its exit tried to join them ("AssertionError: can only join a child process"), and under
    # forkserver it could not run anything: it waited on its parent's fork server.
    script = tmp_path / "script.py"
    script.write_text(FORKS_AFTER)
    done = subprocess.run([sys.executable, str(script), start_method], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["child [1, 2]", "child status 0", "parent [3]"]
    assert "Error" not in done.stderr, done.stderr
