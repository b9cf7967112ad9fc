"""The result store: narrow columns that still give back every task's exact pid and attempts,
however many workers a run goes through and however many retries it allows."""

from __future__ import annotations

import pytest

from parallel_jobs.engine.store import FAILED, SUCCEEDED, ResultStore
from parallel_jobs.protocol.pickling import Failure
from parallel_jobs.records import Batch


def clean_batch(lo: int, hi: int, pid: int) -> Batch:
    batch = Batch.empty(range(lo, hi), pid)
    batch.values[:] = [i * i for i in range(lo, hi)]
    for pos in range(hi - lo):
        batch.started[pos] = 100.0 + pos
        batch.elapsed[pos] = 0.5
    return batch


def test_a_clean_chunk_is_stored_whole() -> None:
    store = ResultStore(10)
    store.record(clean_batch(2, 6, pid=4242), set())
    assert store.values[2:6] == [4, 9, 16, 25]
    assert [store.pid(i) for i in range(10)] == [0, 0] + [4242] * 4 + [0] * 4
    assert [store.task_result(i).attempts for i in (1, 2, 5, 6)] == [0, 1, 1, 0]
    assert store.done == 4
    assert store.state[3] == SUCCEEDED


def test_pids_survive_a_run_that_outlives_255_workers() -> None:
    # A run whose workers keep crashing is replaced worker by worker: every pid must stay exact
    # once the one-byte worker numbers run out.
    n = 700
    store = ResultStore(n)
    for index in range(n):
        store.record(clean_batch(index, index + 1, pid=10_000 + index), set())
    assert store.worker.typecode == "H"
    assert [store.pid(i) for i in range(n)] == [10_000 + i for i in range(n)]
    assert store.task_result(n - 1).pid == 10_000 + n - 1


def test_attempts_count_past_255_when_retries_allow_it() -> None:
    retries = 300
    store = ResultStore(1, retries=retries)
    failure = Failure.capture(ValueError("again"))
    for attempt in range(retries + 1):
        batch = Batch.empty([0], pid=77)
        batch.failures[0] = failure
        final = {0} if attempt == retries else set()
        store.record(batch, final)
    result = store.task_result(0)
    assert result.attempts == retries + 1
    assert not result.success
    assert store.state[0] == FAILED
    assert isinstance(result.exception, ValueError)


def test_a_store_of_a_few_retries_counts_attempts_in_one_byte() -> None:
    assert ResultStore(5, retries=3).attempts.itemsize == 1
    assert ResultStore(5).worker.itemsize == 1


def test_a_store_without_records_keeps_values_states_and_failures_only() -> None:
    store = ResultStore(1000, records=False)
    assert len(store.values) == len(store.state) == 1000
    for column in (store.started, store.elapsed, store.cpu_time, store.peak_kib, store.worker,
                   store.attempts):
        assert len(column) == 0
    store.record(clean_batch(0, 4, pid=7), set())
    assert store.values[:4] == [0, 1, 4, 9]
    assert [store.attempts_of(i) for i in (0, 3, 4)] == [1, 1, 0]
    with pytest.raises(RuntimeError, match="no per-task records"):
        store.task_result(0)


def test_a_store_without_records_still_counts_attempts_when_tasks_may_be_retried() -> None:
    store = ResultStore(3, retries=2, records=False)
    assert len(store.attempts) == 3
    failing = Batch.empty([1], pid=7)
    failing.failures[0] = Failure.capture(ValueError("once"))
    store.record(failing, set())  # not final: it will be retried
    assert store.attempts_of(1) == 1
    assert store.done == 0
    retried = Batch.empty([1], pid=8)
    retried.values[0] = "ok"
    store.record(retried, set())
    assert store.attempts_of(1) == 2
    assert store.values[1] == "ok"
    assert store.done == 1
