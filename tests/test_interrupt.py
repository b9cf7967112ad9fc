"""Ctrl-C and SIGTERM stop a run cleanly: the caller gets KeyboardInterrupt, every worker is
gone, no shared memory is left, and the results finished so far stay on the Parallel object.

Each case runs a real script in its own session (as a shell runs a command) and signals it
once its tasks are known to be running: each writes its pid into a folder first.
"""

from __future__ import annotations

import contextlib
import json
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
    try:
        P.run()
        outcome = None
    except KeyboardInterrupt as exc:
        outcome = repr(exc)
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
    }))
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
    assert proc.returncode == 0, err
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
    assert report["outcome"].startswith("KeyboardInterrupt")
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
