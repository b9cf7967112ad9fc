"""Fixtures shared by every test: no test may leave a child process behind."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from parallel_jobs import release_workers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

START_METHODS = [m for m in ("fork", "spawn") if m in multiprocessing.get_all_start_methods()]


def run_script(folder: Path, source: str, timeout: float = 50.0) -> list[str]:
    """Run ``source`` as a script in a fresh interpreter (from the checkout, so that it can
    import ``tests``), check that it exits 0, and return the lines it printed."""
    script = folder / "script.py"
    script.write_text(source)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def returned(parallel: Any) -> list[Any]:
    """``parallel.results`` with None for each task that did not succeed, after checking that
    a failed task's result is its exception (sciris: "store the exception as the result")."""
    out = []
    for result, ok, error in zip(parallel.results, parallel.success, parallel.exceptions,
                                 strict=True):
        if not ok:
            assert result is error
        out.append(result if ok else None)
    return out


def _children() -> set[int]:
    # Helper processes that outlive a test by design (a forkserver, a resource tracker) are
    # started once per session; everything else is a leak.
    keep = ("forkserver", "resource_tracker", "semaphore_tracker")
    found = set()
    for child in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if not any(k in cmdline for k in keep):
            found.add(child.pid)
    return found


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Fail a test that leaves a worker process running."""
    before = _children()
    yield
    # Idle spawn/forkserver workers kept for the next run are by design, not leaks.
    release_workers()
    leftover = _children() - before
    if leftover:
        procs = []
        for pid in leftover:
            try:
                procs.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        # A worker may still be exiting when the test returns: give it a moment to go.
        _, alive = psutil.wait_procs(procs, timeout=3)
        for proc in alive:
            proc.kill()
        assert not alive, f"test left child processes running: {[p.pid for p in alive]}"


@pytest.fixture(params=START_METHODS)
def start_method(request: pytest.FixtureRequest) -> str:
    """Run a test under each process start method this platform has."""
    return str(request.param)
