"""Chunking: tiny tasks travel in chunks sized from their measured durations, a user's
``chunksize`` wins, everything still counts tasks, and dispatch never materialises the input."""

from __future__ import annotations

import io
import tracemalloc
from typing import Any

import pytest
from rich.console import Console

from parallel_jobs import Parallel
from parallel_jobs.backends.base import BackendOptions
from parallel_jobs.backends.pool import ProcessPoolBackend
from parallel_jobs.engine.monitor import LoadMonitor
from parallel_jobs.engine.plan import RunPlan, TaskSource
from parallel_jobs.engine.progress import ProgressReporter
from parallel_jobs.engine.runner import Chunker, Runner
from parallel_jobs.engine.store import ResultStore
from parallel_jobs.records import Chunk, Payload
from tests import jobs


class RecordingPool(ProcessPoolBackend):
    """The real process pool, noting the size and the kind of each chunk it is given."""

    def __init__(self, options: BackendOptions) -> None:
        super().__init__(options)
        self.chunks: list[tuple[int, type, type]] = []

    def submit(self, chunk: Chunk) -> None:
        self.chunks.append((len(chunk), type(chunk.indices), type(chunk.itervals)))
        super().submit(chunk)


def run_recorded(
    func: Any, iterarg: Any, *, chunksize: int | None = None, reporter: Any = None,
    start_method: str | None = None,
) -> tuple[ResultStore, RecordingPool]:
    plan = RunPlan(len(iterarg), iterarg, None, Payload(func))
    backend = RecordingPool(BackendOptions(ncpus=2, start_method=start_method))
    store = ResultStore(plan.njobs)
    monitor = LoadMonitor(interval=60, sampler=lambda: (0.0, 0.0, 0))
    runner = Runner(plan, backend, store, monitor=monitor, reporter=reporter,
                    chunksize=chunksize, ncpus=2)
    runner.run()
    return store, backend


# -- the Chunker alone -------------------------------------------------------------------------


def test_chunks_hold_one_task_until_one_has_been_timed() -> None:
    chunker = Chunker(ncpus=2)
    assert chunker.size(remaining=10**6) == 1
    chunker.observe(count=1, seconds=1e-6)
    assert chunker.size(remaining=10**6) > 1


def test_chunks_aim_at_the_target_duration() -> None:
    chunker = Chunker(ncpus=2, target=0.02)
    chunker.observe(count=10, seconds=10 * 1e-5)
    assert 1990 <= chunker.size(remaining=10**7) <= 2000  # 0.02 s / 10 us


def test_chunks_of_long_tasks_shrink_to_a_fair_share_of_what_remains() -> None:
    chunker = Chunker(ncpus=2)
    chunker.observe(count=1, seconds=0.001)
    sizes = [chunker.size(remaining) for remaining in (1000, 100, 16, 8)]
    assert sizes == [20, 12, 2, 2]


def test_chunks_of_long_tasks_never_hold_less_than_one() -> None:
    chunker = Chunker(ncpus=2)
    chunker.observe(count=1, seconds=5.0)
    assert chunker.size(remaining=8) == 1


def test_chunks_of_tiny_tasks_do_not_shrink_below_the_floor() -> None:
    chunker = Chunker(ncpus=2, floor=0.002)
    chunker.observe(count=1000, seconds=1000 * 1e-6)
    # A fair share of 300 tasks would be 37; 2 ms of 1 us tasks is 2000, so the rest goes at once.
    assert chunker.size(remaining=300) >= 300


def test_a_slow_first_task_does_not_keep_chunks_small() -> None:
    chunker = Chunker(ncpus=2)
    chunker.observe(count=1, seconds=0.01)  # a cold worker's first call
    chunker.observe(count=2000, seconds=2000 * 1e-6)
    assert chunker.mean is not None
    assert chunker.mean < 2e-5


def test_automatic_chunks_of_the_tiniest_tasks_stop_growing_at_the_ceiling() -> None:
    chunker = Chunker(ncpus=2, most=4096)
    chunker.observe(count=100_000, seconds=100_000 * 1e-8)
    assert chunker.size(remaining=10**7) == 4096
    assert Chunker(ncpus=2, fixed=10_000, most=4096).size(remaining=10**7) == 10_000


def test_a_fixed_chunksize_and_a_limit_win() -> None:
    assert Chunker(ncpus=2, fixed=7).size(remaining=10**6) == 7
    limited = Chunker(ncpus=2, limit=1)
    limited.observe(count=1000, seconds=1e-3)
    assert limited.size(remaining=10**6) == 1


# -- real runs ---------------------------------------------------------------------------------


def test_tiny_tasks_travel_in_few_chunks(start_method: str) -> None:
    store, backend = run_recorded(jobs.square, range(5000), start_method=start_method)
    assert list(store.values) == [x * x for x in range(5000)]
    assert store.done == 5000
    sizes = [size for size, _, _ in backend.chunks]
    assert sum(sizes) == 5000
    # About 5 chunks on an idle machine; a busy one inflates the measured durations, so the
    # bound only says that tasks did not travel one by one.
    assert len(sizes) < 250, sizes
    assert max(sizes) > 50


def test_a_user_chunksize_is_honoured_and_tasks_are_still_counted_one_by_one() -> None:
    seen: list[int] = []
    console = Console(file=io.StringIO(), force_terminal=False, width=200)
    reporter = ProgressReporter("chunked", console=console)
    store, backend = run_recorded(jobs.square, range(100), chunksize=7, reporter=reporter)
    sizes = [size for size, _, _ in backend.chunks]
    assert sizes == [7] * 14 + [2]
    assert store.done == 100
    assert "100/100" in console.file.getvalue()

    P = Parallel(jobs.square, range(100), ncpus=2, chunksize=7,
                 callback=lambda data: seen.append(data["index"]))
    P.run()
    assert sorted(seen) == list(range(100))
    results = P.task_results
    assert [r.index for r in results] == list(range(100))
    assert all(r.success and r.attempts == 1 for r in results)
    assert [r.value for r in results] == [x * x for x in range(100)]


def test_every_task_is_timed_on_its_own_inside_a_chunk() -> None:
    # Lopsided: an empty task would need a 0.3 s stall to look like a sleeping one.
    P = Parallel(jobs.sleep_for, [0.0] * 20 + [0.3] * 4, ncpus=2, chunksize=6)
    P.run()
    elapsed = P.times["jobs"]
    assert all(seconds < 0.3 for seconds in elapsed[:20])
    assert all(seconds >= 0.3 for seconds in elapsed[20:])
    # Within a chunk, each task has a start of its own, after the one before it. (Tasks of
    # different workers may share a start: wall-clock seconds since 1970 in a float resolve
    # about a quarter of a microsecond.)
    for first in range(0, 24, 6):
        chunk = P.task_results[first:first + 6]
        assert len({r.pid for r in chunk}) == 1
        starts = [r.started for r in chunk]
        assert starts == sorted(starts)
        assert len(set(starts)) == len(starts)


# -- lazy dispatch -----------------------------------------------------------------------------


def test_the_task_source_hands_out_ranges_not_lists() -> None:
    source = TaskSource(10**6)
    taken = [source.take(250_000) for _ in range(4)]
    assert all(type(indices) is range for indices in taken)
    assert not source.has_more()
    plan = RunPlan(10**6, range(10**6), None, Payload(jobs.square))
    chunk = plan.chunk(range(500_000, 10**6))
    assert type(chunk.itervals) is range
    assert chunk.itervals[0] == 500_000


@pytest.mark.timeout(120)
def test_a_million_tasks_never_exist_at_once_in_the_parent() -> None:
    n = 10**6
    plan = RunPlan(n, range(n), None, Payload(jobs.nothing))
    store = ResultStore(n)  # its columns are the run's output, allocated before tracing
    # Spawned workers do not inherit the tracing, which would slow them tenfold.
    backend = RecordingPool(BackendOptions(ncpus=2, start_method="spawn"))
    monitor = LoadMonitor(interval=60, sampler=lambda: (0.0, 0.0, 0))
    runner = Runner(plan, backend, store, monitor=monitor, ncpus=2)
    tracemalloc.start()
    try:
        runner.run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert store.done == n
    # A Task record and its argument tuple alone take over 100 bytes each: a million of them
    # would be 100 MB. Only the chunks in flight exist, and chunks of a range are ranges.
    assert peak < 20 * 2**20, f"dispatch peaked at {peak / 2**20:.1f} MB"
    assert all(kind is range for _, kind, _ in backend.chunks)
    assert all(kind is range for _, _, kind in backend.chunks)
    assert len(backend.chunks) < 10_000
