"""``Task`` and ``TaskResult`` are frozen records: immutable, picklable, comparable, printable;
and the ``TaskResult`` records of a real run describe what happened."""

from __future__ import annotations

import os
import pickle

import attrs
import numpy as np
import pytest

from parallel_jobs import Parallel, Task, TaskResult, WorkerCrashedError
from parallel_jobs.protocol.pickling import Failure
from parallel_jobs.records import GLOBALDICT, SHARED_ON_PURPOSE, Chunk, Payload, task_call
from parallel_jobs.worker import run_chunk
from tests import jobs


def _records() -> list[Task | TaskResult]:
    return [
        Task(index=2, args=(5, "a"), kwargs={"y": 1}),
        TaskResult(index=0, value=[1, 2], success=True, started=1.5, finished=2.0, elapsed=0.5,
                   cpu_time=0.25, peak_rss=1024, pid=7, attempts=1),
        TaskResult(index=1, exception=ValueError("bad"), traceback="Traceback ...", attempts=2),
    ]


@pytest.mark.parametrize("record", _records(), ids=["task", "result", "failure"])
def test_records_are_immutable(record: Task | TaskResult) -> None:
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        record.index = 9  # type: ignore[misc]
    with pytest.raises((AttributeError, TypeError)):
        record.extra = 1  # type: ignore[union-attr]


@pytest.mark.parametrize("record", _records(), ids=["task", "result", "failure"])
def test_records_pickle_and_compare_equal(record: Task | TaskResult) -> None:
    copy = pickle.loads(pickle.dumps(record))
    assert copy == record
    assert type(copy) is type(record)
    assert attrs.evolve(record, index=5) != record


def test_failed_result_keeps_its_exception_through_pickling() -> None:
    failed = _records()[2]
    assert isinstance(failed, TaskResult)
    copy = pickle.loads(pickle.dumps(failed))
    assert isinstance(copy.exception, ValueError)
    assert str(copy.exception) == "bad"


def test_results_compare_by_value_not_by_exception_identity() -> None:
    # Exceptions compare by identity; two records of the same failure must still be equal.
    a = TaskResult(index=1, exception=ValueError("bad"))
    b = TaskResult(index=1, exception=ValueError("bad"))
    assert a == b


def test_results_holding_arrays_compare_by_content() -> None:
    # Example 4 of sciris returns lists of arrays; == on arrays is element-wise.
    value = {"xy": [np.arange(3.0), np.ones(2)], "n": 1}
    result = TaskResult(index=0, value=value, success=True)
    assert pickle.loads(pickle.dumps(result)) == result
    assert result != attrs.evolve(result, value={"xy": [np.arange(3.0), np.zeros(2)], "n": 1})
    assert result != attrs.evolve(result, value={"xy": [np.arange(3.0)], "n": 1})
    assert result != attrs.evolve(result, value=np.arange(3.0))


def test_results_hash_despite_unhashable_values() -> None:
    assert hash(TaskResult(index=0, value=[1])) == hash(TaskResult(index=0, value=[1]))


@pytest.mark.parametrize("record", _records(), ids=["task", "result", "failure"])
def test_records_print_every_field(record: Task | TaskResult) -> None:
    text = repr(record)
    assert text.startswith(f"{type(record).__name__}(index={record.index}")
    for field in attrs.fields(type(record)):
        assert f"{field.name}=" in text
    assert str(record) == text


def test_task_defaults() -> None:
    assert Task(3) == Task(index=3, args=(), kwargs=None)


def test_result_defaults_describe_a_task_that_never_ran() -> None:
    never = TaskResult(index=4)
    assert (never.value, never.success, never.exception, never.attempts) == (None, False, None, 0)


def test_run_fills_one_record_per_task() -> None:
    with pytest.warns(RuntimeWarning, match="2 of 3"):
        P = Parallel(jobs.fail_on, [1, 3, 5], ncpus=2, die=False).run()
    records = P.task_results
    assert [r.index for r in records] == [0, 1, 2]
    assert [r.value for r in records] == [1, None, 5]
    assert [r.success for r in records] == [True, False, True]
    assert records[0].exception is None
    assert records[0].traceback == ""
    assert isinstance(records[1].exception, ValueError)
    assert "task value 3 is bad" in records[1].traceback
    assert "fail_on" in records[1].traceback
    for record in records:
        assert record.attempts == 1
        assert record.pid not in (0, os.getpid())
        assert record.elapsed >= 0
        assert record.cpu_time >= 0
        assert record.peak_rss > 0
        assert record.started <= record.finished
        assert record.finished - record.started == pytest.approx(record.elapsed, abs=1e-6)
        assert P.times.started.timestamp() - 1 < record.started < P.times.finished.timestamp() + 1
    assert [r.elapsed for r in records] == P.times.jobs


def test_records_of_a_run_pickle() -> None:
    P = Parallel(jobs.square, [2, 3], parallelizer="serial").run()
    records = P.task_results
    assert pickle.loads(pickle.dumps(records)) == records
    assert all(r.pid == os.getpid() for r in records)


def test_no_records_before_a_run() -> None:
    assert Parallel(jobs.square, [1]).task_results == []


# -- failures (issue 11 items 3 and 4) -----------------------------------------------------------


def _raised(error: BaseException) -> BaseException:
    try:
        raise error
    except BaseException as caught:
        return caught


@pytest.mark.parametrize("error", [SystemExit(3), KeyboardInterrupt("mine"),
                                   jobs.CustomBaseError("gives up")],
                         ids=["SystemExit", "KeyboardInterrupt", "custom"])
def test_a_failure_carries_any_base_exception_across_pickling(error: BaseException) -> None:
    failure = Failure.capture(_raised(error))
    copy = pickle.loads(pickle.dumps(failure))
    assert type(copy.exception) is type(error)
    assert copy.exception.args == error.args
    assert "Traceback (most recent call last)" in copy.traceback


def test_capturing_an_exception_whose_str_raises_keeps_its_type_and_traceback() -> None:
    failure = Failure.capture(_raised(jobs.BrokenStrError(2)))
    assert failure.type_name == "tests.jobs.BrokenStrError"
    assert failure.message == "<str() of BrokenStrError failed: RuntimeError>"
    assert "_raised" in failure.traceback
    copy = pickle.loads(pickle.dumps(failure))
    assert type(copy.exception) is jobs.BrokenStrError


def test_an_error_never_raised_has_no_traceback_to_repeat_its_message() -> None:
    # A crash or a timeout, which the parent describes: its "traceback" would only be its text.
    failure = Failure.capture(WorkerCrashedError(3, -9))
    assert failure.traceback == ""
    assert failure.message.startswith("the worker process running task 3 was killed")


# -- the call built from a task (issue 12) -----------------------------------------------------


def _call_parts(*args: object, **kwargs: object) -> tuple[tuple[object, ...], dict[str, object]]:
    return args, kwargs


@pytest.mark.parametrize(("payload", "chunk"), [
    (Payload(_call_parts), Chunk(range(3), itervals=[1, (2, "b"), [3]])),
    (Payload(_call_parts, args=(9,), kwargs={"k": 1}), Chunk(range(2), itervals=[(1,), 2])),
    (Payload(_call_parts, kwargs={"k": 1, "m": 2}),
     Chunk(range(2), iterkwargs=[{"k": 5}, {"n": 6}])),
    (Payload(_call_parts, args=(9,), kwargs={"k": 1}),
     Chunk(range(2), itervals=[1, (2, 3)], iterkwargs=[{"k": 5}, {}])),
], ids=["own values", "shared args", "own kwargs win", "both"])
def test_the_worker_calls_each_task_as_task_call_builds_it(payload: Payload,
                                                          chunk: Chunk) -> None:
    # The worker's loop inlines task_call (a call per task would slow tiny tasks): they must
    # agree, for the callbacks that show a task's arguments show what the function received.
    batch = run_chunk(payload, chunk)
    assert not batch.failures
    assert batch.values == [task_call(payload, task) for task in chunk.tasks()]


def test_what_tasks_share_on_purpose_is_no_input() -> None:
    shared: dict[str, int] = {}
    payload = Payload(_call_parts, kwargs={"k": 1}).sharing(shared)
    assert payload.globaldict is shared
    assert payload.inputs == {"k": 1}
    assert payload.on_purpose == {GLOBALDICT: shared}
    assert set(payload.on_purpose) <= SHARED_ON_PURPOSE
