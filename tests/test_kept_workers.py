"""Spawned and forkserver workers are kept between runs, holding nothing of the last run."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import psutil
import pytest

from parallel_jobs import parallelize, release_workers
from tests import jobs
from tests.conftest import run_script

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
