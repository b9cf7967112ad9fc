"""When the default pool's forked workers come and go: each is forked when its first chunk is
submitted, and an idle one leaves as soon as nothing is left to hand out, yet a chunk that
comes later (a retry) still finds a worker."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import psutil
import pytest

from parallel_jobs import Parallel
from parallel_jobs.backends.base import BackendOptions
from parallel_jobs.backends.pool import ProcessPoolBackend
from parallel_jobs.records import Chunk, Payload
from tests import jobs
from tests.conftest import run_script

pytestmark = pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(),
                                reason="needs fork")


def _live_children() -> set[int]:
    return {p.pid for p in psutil.Process().children() if p.status() != psutil.STATUS_ZOMBIE}


def _collect_one(backend: ProcessPoolBackend) -> list[int]:
    batches = []
    while not batches:
        batches = backend.collect(timeout=30)
    return list(batches[0].values)


@pytest.mark.timeout(30)
def test_forked_workers_start_with_their_first_chunk_and_retire_when_idle() -> None:
    before = _live_children()
    backend = ProcessPoolBackend(BackendOptions(ncpus=2, start_method="fork"))
    try:
        backend.start(Payload(jobs.square))
        assert _live_children() == before, "no worker before there is work"
        backend.submit(Chunk(range(1), itervals=[3]))
        first = _live_children() - before
        assert len(first) == 1
        assert _collect_one(backend) == [9]

        backend.retire_idle()
        (worker,) = [psutil.Process(pid) for pid in first]
        # It was told to exit and does so without waiting for shutdown.
        worker.wait(timeout=20)

        # A chunk after the retirement (a retry, say) gets a new worker.
        backend.submit(Chunk(range(1, 2), itervals=[4]))
        assert _collect_one(backend) == [16]
        second = _live_children() - before
        assert len(second) == 1
        assert second != first
    finally:
        backend.shutdown()
    assert _live_children() == before


@pytest.mark.timeout(60)
def test_a_retry_after_the_idle_workers_retired_still_runs(tmp_path: Path) -> None:
    # Task 1 fails on its first attempt once task 0's worker has exited: nothing was left to
    # hand out, so that worker was retired, and the retry needs a new one.
    parallel = Parallel(jobs.fail_after_worker_zero_exits, range(2), folder=str(tmp_path),
                        retries=1, ncpus=2, chunksize=1, start_method="fork")
    parallel.run()
    assert parallel.results == [0, 1]
    first, retried = parallel.task_results
    assert retried.attempts == 2
    assert first.pid != retried.pid
    assert (tmp_path / "failed").exists()


PRELOADING = """
import multiprocessing
import sys

import parallel_jobs as pj

def preloaded(_):
    return "colorsys" in sys.modules

if __name__ == "__main__":
    multiprocessing.set_forkserver_preload(["colorsys"])
    print(pj.parallelize(preloaded, range(2), parallelizer="multiprocessing",
                         start_method="forkserver"))
"""


@pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(),
                    reason="needs forkserver")
@pytest.mark.timeout(60)
def test_the_fork_server_keeps_what_the_caller_asked_it_to_preload(tmp_path: Path) -> None:
    # The pool adds its own modules to the fork server's preload list, and keeps the caller's.
    assert run_script(tmp_path, PRELOADING, timeout=50) == ["[True, True]"]
