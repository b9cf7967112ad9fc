"""One object decides, for every backend, how long to wait and which task is overdue."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from parallel_jobs.backends.deadlines import Deadlines, running_task
from parallel_jobs.errors import TaskTimeoutError
from parallel_jobs.records import Batch, Chunk
from parallel_jobs.worker import IDLE


def test_without_a_limit_the_callers_wait_stands_and_nothing_is_overdue() -> None:
    deadlines = Deadlines(None)
    long_ago = time.perf_counter() - 1e6
    assert deadlines.wait(2.5, [("worker", (0, long_ago))]) == 2.5
    assert deadlines.wait(None, [("worker", None)]) is None
    assert deadlines.overdue([("worker", (0, long_ago))]) == []


def test_without_a_limit_the_busy_tasks_are_not_even_read() -> None:
    # Backends pass a generator over their workers: with no timeout it costs nothing.
    def busy() -> Iterator[tuple[str, tuple[int, float]]]:
        raise AssertionError("read without a limit")
        yield  # a generator

    assert Deadlines(None).wait(1.0, busy()) == 1.0
    assert Deadlines(None).overdue(busy()) == []


def test_the_wait_ends_at_the_earliest_deadline() -> None:
    deadlines = Deadlines(10.0)
    now = time.perf_counter()
    wait = deadlines.wait(None, [("a", (0, now - 8.0)), ("b", (1, now - 2.0))])
    assert wait is not None
    assert 1.0 < wait <= 2.0
    assert deadlines.wait(0.5, [("a", (0, now - 8.0))]) == 0.5


def test_a_task_not_started_yet_is_looked_at_again_after_one_limit() -> None:
    assert Deadlines(3.0).wait(None, [("a", None)]) == 3.0
    assert Deadlines(3.0).wait(60.0, [("a", None)]) == 3.0


def test_only_tasks_past_their_limit_are_overdue() -> None:
    now = time.perf_counter()
    busy = [("late", (4, now - 5.0)), ("early", (5, now - 1.0)), ("waiting", None)]
    (overrun,) = Deadlines(2.0).overdue(busy)
    assert (overrun.holder, overrun.index, overrun.started) == ("late", 4, now - 5.0)
    assert overrun.elapsed >= 5.0


def test_a_timed_out_batch_fails_the_task_and_requeues_the_rest_of_its_chunk() -> None:
    deadlines = Deadlines(2.0)
    now = time.perf_counter()
    (overrun,) = deadlines.overdue([("worker", (7, now - 3.0))])
    batch = deadlines.timed_out(overrun, Chunk(range(6, 9)), pid=123, stopped=False,
                                action="abandoning it")
    assert list(batch.indices) == [7]
    assert list(batch.requeue) == [6, 8]
    assert batch.pid == 123
    error = batch.failures[0].exception
    assert isinstance(error, TaskTimeoutError)
    assert (error.index, error.timeout, error.stopped) == (7, 2.0, False)


def test_marking_fails_only_the_tasks_that_ran_too_long() -> None:
    batch = Batch.empty([0, 1], 0)
    batch.values[:] = ["quick", "slow"]
    batch.elapsed[0], batch.elapsed[1] = 0.5, 1.5
    Deadlines(1.0).mark(batch)
    assert batch.values == ["quick", None]
    assert list(batch.failures) == [1]
    assert isinstance(batch.failures[1].exception, TaskTimeoutError)


@pytest.mark.parametrize(("slot", "expected"), [
    ([3.0, 12.5], (3, 12.5)),
    ([3.0, IDLE], None),
])
def test_a_slot_says_which_task_runs_and_since_when(
        slot: list[float], expected: tuple[int, float] | None) -> None:
    assert running_task(slot) == expected


class _Racing(list):  # type: ignore[type-arg]
    """A slot whose task ends (and the next begins) between two reads of its start."""

    def __init__(self) -> None:
        super().__init__([3.0, 12.5])
        self.reads = 0

    def __getitem__(self, pos: int) -> float:  # type: ignore[override]
        value = super().__getitem__(pos)
        if pos == 1:
            self.reads += 1
            if self.reads == 1:
                self[0], self[1] = 4.0, 13.0
        return float(value)


def test_a_task_ending_while_its_slot_is_read_is_not_reported() -> None:
    assert running_task(_Racing()) is None
