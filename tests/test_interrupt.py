"""Ctrl-C and SIGTERM stop a run cleanly: the caller gets KeyboardInterrupt (SystemExit(143) for
SIGTERM), every worker is gone, no shared memory is left, and the results finished so far stay
on the Parallel object. Nothing outlives a parent killed outright, a second Ctrl-C cannot cut
the cleanup short, and a Ctrl-C while workers fork stops the run like any other.

Each case runs a real script in its own session (as a shell runs a command) and signals it
once its tasks are known to be running: each writes its pid into a folder first.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from parallel_jobs import Parallel, WorkerCrashedError
from tests import jobs
from tests.conftest import ROOT
from tests.test_faults import gone

SCRIPT = """
import json, os, sys, time
from pathlib import Path

root, folder, start_method, parallelizer = sys.argv[1:5]
sys.path.insert(0, root)
import numpy as np
import psutil
from parallel_jobs import Parallel
from tests import jobs


def alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


if __name__ == "__main__":
    # 4 MiB of shared data: under spawn it travels through shared memory.
    data = np.ones(1 << 19)
    P = Parallel(jobs.report_then_wait, range(6), folder=folder, quick=2, data=data, ncpus=2,
                 chunksize=1, start_method=start_method,
                 parallelizer=None if parallelizer == "default" else parallelizer)
    error = None
    try:
        P.run()
        outcome = None
    except BaseException as exc:
        outcome, error = repr(exc), exc
    caught = time.time()
    pids = [int(p.read_text()) for p in Path(folder).glob("running-*") if p.suffix != ".tmp"]
    print(json.dumps({
        "outcome": outcome,
        "caught": caught,
        "results": P.results,
        "success": P.success,
        "pids": pids,
        "alive": [pid for pid in pids if alive(pid)],
        "children": [c.pid for c in psutil.Process().children(recursive=True)
                     if "resource_tracker" not in " ".join(c.cmdline())],
        "shm": jobs.held_segments(os.getpid()),
    }), flush=True)
    if isinstance(error, SystemExit):
        raise error
"""


def _wait_for(condition: Any, what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


@contextlib.contextmanager
def _running(tmp_path: Path, start_method: str, parallelizer: str) -> Iterator[Any]:
    """Start the script in its own session; yield it once tasks 2 and 3 are running."""
    script = tmp_path / "interrupted_run.py"
    script.write_text(SCRIPT)
    folder = tmp_path / "tasks"
    folder.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(script), ROOT, str(folder), start_method, parallelizer],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        running = [folder / "running-2", folder / "running-3"]
        _wait_for(lambda: all(p.exists() for p in running) or proc.poll() is not None,
                  "tasks 2 and 3 to start")
        assert proc.poll() is None, proc.communicate()
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def _interrupt(tmp_path: Path, start_method: str, parallelizer: str, how: str) -> dict[str, Any]:
    """Run the script, signal it once tasks 2 and 3 run, and return what it printed."""
    with _running(tmp_path, start_method, parallelizer) as proc:
        if start_method == "spawn":
            assert jobs.held_segments(proc.pid), "the run shares its data"
        sent = time.time()
        if how == "SIGINT":
            # A terminal's Ctrl-C reaches the whole foreground process group.
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    # As a process that SIGTERM ended, for a shell: 128 + 15.
    assert proc.returncode == (0 if how == "SIGINT" else 143), err
    report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    report["latency"] = report["caught"] - sent
    return report


@pytest.mark.timeout(40)
@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
# '-async': the run goes on in a background thread while the caller waits in finalize().
@pytest.mark.parametrize("parallelizer", ["default", "fast", "default-async", "fast-async"])
def test_an_interrupt_stops_the_run_cleanly(
    start_method: str, parallelizer: str, how: str, tmp_path: Path
) -> None:
    report = _interrupt(tmp_path, start_method, parallelizer, how)

    assert report["outcome"] is not None
    expected = "KeyboardInterrupt" if how == "SIGINT" else "SystemExit(143)"
    assert report["outcome"].startswith(expected)
    # The two tasks that finished before the signal keep their results.
    assert report["results"] == [0, 1, None, None, None, None]
    assert report["success"] == [True, True, False, False, False, False]
    # By the time the caller sees KeyboardInterrupt, every worker is already gone.
    assert len(report["pids"]) == 2
    assert report["alive"] == []
    assert report["children"] == []
    assert report["shm"] == []
    assert report["latency"] < 5.0, f"the interrupt took {report['latency']:.2f} s"
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
                   for pid in report["pids"])


@pytest.mark.timeout(40)
@pytest.mark.parametrize("parallelizer", ["default", "default-async"])
def test_workers_die_with_a_parent_killed_outright(
    start_method: str, parallelizer: str, tmp_path: Path
) -> None:
    # SIGKILL (the out-of-memory killer may pick the parent) leaves the parent no chance to
    # stop its workers: the kernel must, or the two tasks would sleep on for 30 s.
    with _running(tmp_path, start_method, parallelizer) as proc:
        pids = [int(p.read_text()) for p in (tmp_path / "tasks").glob("running-[0-9]")]
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=20)
        deadline = time.monotonic() + 5
        while not all(gone(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.01)
    assert len(pids) == 2
    assert all(gone(pid) for pid in pids)
    # The shared data had no name to outlive the parent (it once stayed in /dev/shm for good).
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"parallel_jobs_{proc.pid}_")]


# -- a parent killed outright --------------------------------------------------------------------

ALL_METHODS = [m for m in ("fork", "spawn", "forkserver")
               if m in multiprocessing.get_all_start_methods()]
MARK = "PARALLEL_JOBS_TEST_RUN"

KILLED = """
import sys
root, folder, start_method, shared = sys.argv[1:5]
sys.path.insert(0, root)
from parallel_jobs import Parallel
from tests import jobs

if __name__ == "__main__":
    kwargs = {"globaldict": {"n": 0}} if shared == "globaldict" else {}
    Parallel(jobs.spin_noted, range(2), folder=folder, ncpus=2, chunksize=1,
             start_method=start_method, **kwargs).run()
"""


def _marked(tag: str) -> list[psutil.Process]:
    """The live processes started with ``MARK=tag`` in their environment: the script, and every
    process it or its descendants started (workers, manager, fork server, resource tracker)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARK) == tag and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.mark.timeout(60)
@pytest.mark.parametrize("shared", ["", "globaldict"])
@pytest.mark.parametrize("method", ALL_METHODS)
def test_nothing_outlives_a_parent_killed_outright(method: str, shared: str,
                                                   tmp_path: Path) -> None:
    # Under forkserver the busy workers, the fork server and the resource tracker ran on for
    # good, and so did the globaldict manager under every start method.
    tag = f"{os.getpid()}-{method}-{shared}"
    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    folder = tmp_path / "tasks"
    folder.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(script), ROOT, str(folder), method, shared or "-"],
        env={**os.environ, MARK: tag}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )
    try:
        running = [folder / "running-0", folder / "running-1"]
        _wait_for(lambda: all(p.exists() for p in running) or proc.poll() is not None,
                  "both tasks to start")
        assert proc.poll() is None, proc.communicate()
        started = _marked(tag)
        assert len(started) >= 3 + (shared == "globaldict")
        proc.kill()
        proc.communicate(timeout=10)
        deadline = time.monotonic() + 1.0
        while _marked(tag) and time.monotonic() < deadline:
            time.sleep(0.01)
        left = {p.pid: " ".join(p.cmdline())[:80] for p in _marked(tag)}
        assert left == {}, "still running a second after the parent died"
    finally:
        for leftover in _marked(tag):
            leftover.kill()


# -- a crashed worker's helpers ------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_crashed_worker_takes_the_processes_its_task_started_along(
    start_method: str, tmp_path: Path
) -> None:
    P = Parallel(jobs.start_helper_then_crash, range(3), folder=str(tmp_path), ncpus=2,
                 chunksize=1, die=False, start_method=start_method)
    with pytest.warns(RuntimeWarning, match="tasks succeeded"):
        P.run()
    assert isinstance(P.exceptions[1], WorkerCrashedError)
    assert P.results[0] == 0
    assert P.results[2] == 2
    helper = int((tmp_path / "helper").read_text())
    try:
        deadline = time.monotonic() + 5
        while not gone(helper) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert gone(helper), "the helper outlived the worker that started it"
    finally:
        with contextlib.suppress(psutil.Error):
            psutil.Process(helper).kill()


# -- two interrupts in a row ---------------------------------------------------------------------

UNCAUGHT = """
import sys
root, folder, parallelizer = sys.argv[1:4]
sys.path.insert(0, root)
from parallel_jobs import Parallel
from tests import jobs

if __name__ == "__main__":
    P = Parallel(jobs.report_then_wait, range(4), folder=folder, quick=0, ncpus=2, chunksize=1,
                 start_method="fork",
                 parallelizer=None if parallelizer == "finalize" else parallelizer)
    if parallelizer == "finalize":
        P.run_async()
        P.finalize()
    else:
        P.run()
"""


@pytest.mark.timeout(60)
# 'finalize': the caller starts a background run and waits for it in finalize() itself.
@pytest.mark.parametrize("parallelizer", ["default", "default-async", "finalize"])
def test_a_second_interrupt_does_not_cut_the_cleanup_short(
    parallelizer: str, tmp_path: Path
) -> None:
    # A terminal and a wrapper (uv run, conda run, an IDE) both deliver the Ctrl-C, a few ms
    # apart. The second one used to land in the cleanup: the workers were never stopped, and
    # the interpreter's exit, which joins them, hung with the uncaught KeyboardInterrupt.
    script = tmp_path / "uncaught.py"
    script.write_text(UNCAUGHT)
    for gap in (0.0005, 0.002, 0.005, 0.01, 0.02):
        folder = tmp_path / f"tasks-{gap}"
        folder.mkdir()
        proc = subprocess.Popen([sys.executable, str(script), ROOT, str(folder), parallelizer],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            running = [folder / "running-0", folder / "running-1"]
            _wait_for(lambda: all(p.exists() for p in running) or proc.poll() is not None,  # noqa: B023
                      "both tasks to start")
            pids = [int(p.read_text()) for p in running]
            os.killpg(proc.pid, signal.SIGINT)
            time.sleep(gap)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
            try:
                _, err = proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the script hung at exit (second SIGINT {gap * 1000:g} ms later)")
            assert proc.returncode == -signal.SIGINT, err
            assert "KeyboardInterrupt" in err
            assert all(gone(pid) for pid in pids), f"workers left ({gap * 1000:g} ms)"
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()


# -- Ctrl-C while workers fork -------------------------------------------------------------------

FORKING = """
import os, random, signal, sys, threading
root, start_method, trials = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, root)
import psutil
from parallel_jobs import parallelize, release_workers
from tests import jobs

if __name__ == "__main__":
    me = os.getpid()
    # One run first: an interrupt inside the first run's imports (dill, multiprocess) would
    # leave them half-imported for every later trial, which is Python's affair, not ours.
    parallelize(jobs.sleep_for, [0], ncpus=1, start_method=start_method)
    release_workers()
    rng = random.Random(11)
    for trial in range(trials):
        # Anywhere in the first 30 ms of the run, while its workers are being started.
        timer = threading.Timer(rng.uniform(0, 0.03), os.killpg, (0, signal.SIGINT))
        try:
            timer.start()  # inside the try: a signal may land before start() even returns
            parallelize(jobs.sleep_for, [0.2] * 8, ncpus=2, chunksize=1,
                        start_method=start_method)
            outcome = "finished"
        except KeyboardInterrupt:
            outcome = "interrupted"
        except BaseException as exc:
            outcome = type(exc).__name__
        timer.join()
        release_workers()  # kept by spawn runs for the next: not what this counts
        children = [c.pid for c in psutil.Process().children(recursive=True)
                    if c.status() != psutil.STATUS_ZOMBIE
                    and "resource_tracker" not in " ".join(c.cmdline())]
        print(trial, os.getpid() == me, outcome, len(children), flush=True)
"""


@pytest.mark.timeout(90)
def test_an_interrupt_while_workers_start_stops_the_run(start_method: str,
                                                        tmp_path: Path) -> None:
    # It used to be swallowed (the run went on), or a just-forked child raised it and ran the
    # rest of this script a second time, or it surfaced as WorkerCrashedError or AssertionError.
    trials = 12 if start_method == "fork" else 4
    script = tmp_path / "forking.py"
    script.write_text(FORKING)
    proc = subprocess.Popen([sys.executable, str(script), ROOT, start_method, str(trials)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=70)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, err
    assert out.splitlines() == [f"{trial} True interrupted 0" for trial in range(trials)], err
