"""Runs leave nothing behind: 100 runs in a row, clean and failing, under every local backend,
leave this process with no more threads, file descriptors, child processes or shared-memory
segments than it had before."""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import psutil
import pytest

from parallel_jobs import Parallel, WorkerCrashedError, parallelize
from tests import jobs


def snapshot() -> dict[str, int]:
    gc.collect()  # a handle dropped but not yet collected is no leak
    me = psutil.Process()
    return {
        "threads": threading.active_count(),
        "os threads": me.num_threads(),
        "fds": me.num_fds(),
        "children": len(me.children(recursive=True)),
        "shm": len(jobs.held_segments(os.getpid())),
    }


def clean_run() -> None:
    assert parallelize(jobs.square, range(6), ncpus=2) == [0, 1, 4, 9, 16, 25]


def crashing_run() -> None:
    P = Parallel(jobs.die_on, range(6), how="kill", ncpus=2, chunksize=1, die=False)
    with pytest.warns(RuntimeWarning, match="tasks succeeded"):
        P.run()
    assert isinstance(P.exceptions[3], WorkerCrashedError)


def dying_run() -> None:
    with pytest.raises(ValueError, match="task value 3 is bad"):
        parallelize(jobs.fail_on, range(6), ncpus=2, chunksize=1)


def timed_out_run() -> None:
    P = Parallel(jobs.sleep_if, range(4), slow=1, seconds=30, timeout=0.05, ncpus=2, die=False)
    with pytest.warns(RuntimeWarning, match="tasks succeeded"):
        P.run()


def thread_run() -> None:
    assert parallelize(jobs.square, range(6), parallelizer="thread") == [0, 1, 4, 9, 16, 25]


def fast_run() -> None:
    assert parallelize(jobs.square, range(6), parallelizer="fast") == [0, 1, 4, 9, 16, 25]


def spawned_run_with_shared_array() -> None:
    data = np.ones(1 << 18)  # 2 MiB: goes through shared memory
    result = parallelize(jobs.report_then_wait, range(4), folder="unused", quick=4, data=data,
                         ncpus=2, start_method="spawn")
    assert result == [0, 1, 2, 3]


# Cheap runs fill most of the 100; a spawned run costs ~0.3 s, so only a few of those.
CYCLE: list[Callable[[], Any]] = [
    clean_run, crashing_run, clean_run, dying_run, thread_run, clean_run, timed_out_run,
    fast_run, clean_run, crashing_run,
]


@pytest.mark.timeout(120)
def test_a_hundred_runs_leave_nothing_behind() -> None:
    for run in {*CYCLE, spawned_run_with_shared_array}:
        run()  # first use: imports, the multiprocess heap, lazily created helpers
    before = snapshot()
    for number in range(100):
        run = spawned_run_with_shared_array if number % 25 == 0 else CYCLE[number % len(CYCLE)]
        run()
        assert snapshot()["children"] == before["children"], f"run {number} ({run.__name__})"
    after = snapshot()
    # Fewer is fine: a thread or handle left by an earlier test may end meanwhile.
    grown = {key: (before[key], after[key]) for key in before if after[key] > before[key]}
    assert grown == {}, f"(before, after): {grown}"
