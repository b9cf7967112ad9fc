"""A crashed, hung or failing task costs that task, never the run (issue #4).

Every case runs real worker processes that really die: ``os._exit``, SIGKILL as the
out-of-memory killer sends it, and a real segmentation fault.
"""

from __future__ import annotations

import functools
import operator
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from parallel_jobs import (
    Parallel,
    ParallelJobsError,
    RemoteTaskError,
    SerializationError,
    TaskTimeoutError,
    WorkerCrashedError,
    parallelize,
)
from tests import jobs
from tests.conftest import returned

# How each way of dying shows up: exit code, signal name, and words of the likely cause.
DEATHS = {
    "exit": (3, None, "exited with code 3"),
    "kill": (-9, "SIGKILL", "out-of-memory killer"),
    "segv": (-11, "SIGSEGV", "segmentation fault"),
}


def run_tolerant(P: Parallel) -> Parallel:
    """Run with die=False, where a failed task must be reported by a warning."""
    with pytest.warns(RuntimeWarning, match="tasks succeeded"):
        P.run()
    return P


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# -- crashes ---------------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", list(DEATHS))
def test_a_crash_costs_only_the_task_that_crashed(start_method: str, how: str) -> None:
    P = Parallel(jobs.die_on, range(10), how=how, ncpus=1, chunksize=1, die=False,
                 start_method=start_method)
    run_tolerant(P)

    assert returned(P) == [x * x if x != 3 else None for x in range(10)]
    assert P.success == [x != 3 for x in range(10)]
    error = P.exceptions[3]
    exitcode, signame, cause = DEATHS[how]
    assert isinstance(error, WorkerCrashedError)
    assert isinstance(error, RuntimeError)
    assert (error.index, error.exitcode, error.signal) == (3, exitcode, signame)
    assert "task 3" in str(error)
    assert cause in str(error)
    assert "faulthandler" in str(error)
    # One worker only: the one that died ran tasks 0-3, a fresh one ran the rest.
    results = P.task_results
    dead = results[3].pid
    assert {r.pid for r in results[:3]} == {dead}
    assert dead not in {r.pid for r in results[4:]}
    assert len({r.pid for r in results[4:]}) == 1
    assert gone(dead)
    assert results[3].attempts == 1


@pytest.mark.timeout(30)
def test_a_crash_inside_a_chunk_requeues_the_rest_of_it(start_method: str) -> None:
    P = Parallel(jobs.die_on, range(10), how="kill", bad=6, ncpus=2, chunksize=5, die=False,
                 start_method=start_method)
    run_tolerant(P)
    assert returned(P) == [x * x if x != 6 else None for x in range(10)]
    assert isinstance(P.exceptions[6], WorkerCrashedError)
    assert P.exceptions[6].index == 6


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["exit", "kill"])
def test_die_raises_a_crash_at_once_without_waiting_for_other_tasks(
    start_method: str, how: str, tmp_path: Path
) -> None:
    marker = tmp_path / "died"
    # Task 0 sleeps for 30 s on the other worker: the run must not wait for it.
    with pytest.raises(WorkerCrashedError) as info:
        parallelize(jobs.die_on, range(4), bad=1, how=how, others=30.0, marker=str(marker),
                    ncpus=2, chunksize=1, start_method=start_method)
    latency = time.time() - float(marker.read_text())
    assert info.value.index == 1
    assert latency < 5.0, f"the crash took {latency:.2f} s to reach the caller"
    notes = getattr(info.value, "__notes__", [])
    assert any("task 1" in note for note in notes)


class ExitsWhenPickled:
    """Ends the process that tries to pickle it: the worker dies after its task returned."""

    def __reduce__(self) -> Any:
        os._exit(4)


def return_exits_when_pickled(x: int) -> Any:
    return ExitsWhenPickled() if x == 2 else x


@pytest.mark.timeout(30)
def test_a_worker_dying_outside_any_task_fails_its_chunk_and_says_when() -> None:
    P = Parallel(return_exits_when_pickled, range(5), ncpus=1, chunksize=1, die=False,
                 start_method="fork")
    run_tolerant(P)
    assert returned(P) == [0, 1, None, 3, 4]
    error = P.exceptions[2]
    assert isinstance(error, WorkerCrashedError)
    assert (error.index, error.exitcode) == (2, 4)
    assert "outside any task" in str(error)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("reaped", [False, True], ids=["zombie", "reaped-by-someone-else"])
def test_a_worker_killed_while_idle_is_replaced_before_its_next_task(reaped: bool) -> None:
    # The callback runs in the parent between tasks: there it kills the idle worker, as the
    # out-of-memory killer may. "Reaped": a SIGCHLD handler elsewhere in the program collected
    # the dead worker's status, so multiprocessing still believes it alive.
    killed: list[int] = []

    def kill_worker_once(data: dict[str, Any]) -> None:
        if killed:
            return
        pid = data["outdict"]["result"]
        os.kill(pid, signal.SIGKILL)
        if reaped:
            os.waitpid(pid, 0)
        else:
            while psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                time.sleep(0.001)
        killed.append(pid)

    P = Parallel(jobs.pid, range(4), ncpus=1, chunksize=1, callback=kill_worker_once,
                 start_method="fork").run()
    assert P.results is not None
    assert all(P.success)
    assert P.results[0] == killed[0]
    assert killed[0] not in P.results[1:]


def test_crash_errors_survive_pickling() -> None:
    import pickle

    error = WorkerCrashedError(4, -9, "detail")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.index, copy.exitcode, copy.signal, str(copy)) == (4, -9, "SIGKILL", str(error))
    timeout = pickle.loads(pickle.dumps(TaskTimeoutError(2, 0.5, stopped=False)))
    assert (timeout.index, timeout.timeout, timeout.stopped) == (2, 0.5, False)


# -- timeouts --------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_timeout_stops_an_overrunning_task_and_the_rest_go_on(start_method: str) -> None:
    # Chunks of 5: each task of the first chunk takes 0.15 s, 0.75 s in all, longer than the
    # 0.6 s timeout; only task 7 (30 s) overruns, because the limit applies to each task.
    P = Parallel(jobs.sleep_if, range(10), slow=7, others=0.15, timeout=0.6, chunksize=5,
                 ncpus=2, die=False, start_method=start_method)
    started = time.perf_counter()
    run_tolerant(P)
    assert time.perf_counter() - started < 10

    assert returned(P) == [x if x != 7 else None for x in range(10)]
    error = P.exceptions[7]
    assert isinstance(error, TaskTimeoutError)
    assert isinstance(error, TimeoutError)
    assert (error.index, error.timeout, error.stopped) == (7, 0.6, True)
    assert str(error).endswith("; its worker was stopped")
    assert [e is None for e in P.exceptions] == [x != 7 for x in range(10)]
    result = P.task_results[7]
    assert 0.6 <= result.elapsed < 10
    assert gone(result.pid)


@pytest.mark.timeout(30)
def test_timeout_stops_the_processes_a_task_started_too(tmp_path: Path) -> None:
    P = Parallel(jobs.start_child_then_hang, range(3), folder=str(tmp_path), timeout=0.5,
                 ncpus=2, chunksize=1, die=False)
    run_tolerant(P)
    assert returned(P) == [0, None, 2]
    assert isinstance(P.exceptions[1], TaskTimeoutError)
    grandchild = int((tmp_path / "grandchild").read_text())
    # Killed already; a zombie until init reaps it, which it may do at leisure.
    deadline = time.monotonic() + 5
    while not gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gone(grandchild)


@pytest.mark.timeout(30)
def test_timeout_with_die_raises_at_once(start_method: str) -> None:
    started = time.perf_counter()
    with pytest.raises(TaskTimeoutError) as info:
        parallelize(jobs.sleep_if, range(4), slow=0, seconds=30, timeout=0.3, ncpus=2,
                    start_method=start_method)
    assert info.value.index == 0
    assert time.perf_counter() - started < 10


# -- retries ---------------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["raise", "crash", "hang"])
def test_retries_run_a_failed_task_again(start_method: str, how: str, tmp_path: Path) -> None:
    timeout = 0.5 if how == "hang" else None
    P = Parallel(jobs.fail_once, range(6), folder=str(tmp_path), how=how, retries=2,
                 timeout=timeout, ncpus=2, chunksize=1, start_method=start_method).run()
    assert P.results == list(range(6))
    assert all(P.success)
    assert [r.attempts for r in P.task_results] == [1, 1, 1, 2, 1, 1]
    assert (tmp_path / "runs").read_text() == "xx"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["raise", "crash"])
def test_retries_give_up_after_the_last_attempt(how: str, tmp_path: Path) -> None:
    P = Parallel(jobs.fail_once, range(5), folder=str(tmp_path), how=how, always=True,
                 retries=2, ncpus=2, chunksize=1, die=False)
    run_tolerant(P)
    assert returned(P) == [0, 1, 2, None, 4]
    assert P.task_results[3].attempts == 3
    assert (tmp_path / "runs").read_text() == "xxx"
    expected = RuntimeError if how == "raise" else WorkerCrashedError
    assert isinstance(P.exceptions[3], expected)


@pytest.mark.timeout(30)
def test_retries_then_die_raise_the_last_failure(tmp_path: Path) -> None:
    with pytest.raises(WorkerCrashedError):
        parallelize(jobs.fail_once, range(5), folder=str(tmp_path), how="crash", always=True,
                    retries=1, ncpus=2, chunksize=1)
    assert (tmp_path / "runs").read_text() == "xx"


# -- what cannot be pickled ------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_an_unpicklable_return_value_fails_its_own_task_only(start_method: str) -> None:
    P = Parallel(jobs.return_unpicklable, range(6), ncpus=2, chunksize=3, die=False,
                 start_method=start_method)
    run_tolerant(P)
    assert returned(P) == [0, 1, 2, None, 4, 5]
    error = P.exceptions[3]
    assert isinstance(error, SerializationError)
    assert "return value of task 3" in str(error)
    assert "Unpicklable refuses" in str(error)


def test_an_unpicklable_return_value_with_die_names_the_task() -> None:
    with pytest.raises(SerializationError, match="return value of task 3"):
        parallelize(jobs.return_unpicklable, range(6), ncpus=2)


@pytest.mark.timeout(30)
def test_an_exception_that_cannot_be_pickled_still_arrives(start_method: str) -> None:
    P = Parallel(jobs.raise_odd, range(5), kind="unpicklable", ncpus=2, die=False,
                 start_method=start_method)
    run_tolerant(P)
    assert returned(P) == [0, 1, 2, None, 4]
    error = P.exceptions[3]
    assert isinstance(error, RemoteTaskError)
    assert isinstance(error, ParallelJobsError)
    assert error.type_name == "tests.jobs.HoldsUnpicklable"
    assert error.message == "holding something unpicklable"
    assert str(error) == "tests.jobs.HoldsUnpicklable: holding something unpicklable"
    assert "in raise_odd" in error.traceback
    assert "raise HoldsUnpicklable(msg)" in error.traceback
    assert P.task_results[3].traceback == error.traceback


def test_an_exception_that_cannot_be_pickled_is_raised_with_die() -> None:
    with pytest.raises(RemoteTaskError, match="HoldsUnpicklable: holding something") as info:
        parallelize(jobs.raise_odd, range(5), kind="unpicklable", ncpus=2)
    assert "raise HoldsUnpicklable(msg)" in str(info.value.__cause__)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("parallelizer", [None, "fast"])
@pytest.mark.parametrize(
    ("where", "what"),
    [("func", "the function"), ("args", "args"), ("kwargs", "keyword argument 'extra'")],
)
def test_an_unpicklable_function_or_argument_fails_before_any_task(
    where: str, what: str, parallelizer: str | None, tmp_path: Path
) -> None:
    # Under spawn nothing is inherited: the function and shared arguments must be pickled.
    generator = (i for i in range(3))
    func: Any = jobs.touch
    options: dict[str, Any] = {"kwargs": {"folder": str(tmp_path)}}
    if where == "func":
        func = functools.partial(jobs.touch, extra=generator)
    elif where == "args":
        options["args"] = (generator,)
    else:
        options["kwargs"]["extra"] = generator
    P = Parallel(func, range(4), ncpus=2, die=False, start_method="spawn",
                 parallelizer=parallelizer, **options)
    with pytest.raises(SerializationError) as info:
        P.run()
    assert str(info.value).startswith(f"{what} cannot be pickled")
    assert "generator" in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(30)
def test_an_unpicklable_task_value_fails_that_task_only(start_method: str) -> None:
    values = [0, 1, 2, jobs.Unpicklable(), 4, 5, 6, 7]
    P = Parallel(jobs.square, values, ncpus=2, chunksize=4, die=False,
                 start_method=start_method)
    run_tolerant(P)
    assert returned(P) == [0, 1, 4, None, 16, 25, 36, 49]
    error = P.exceptions[3]
    assert isinstance(error, SerializationError)
    assert "arguments of task 3" in str(error)


class FailsToUnpickle:
    """Pickles, but unpickling it raises ZeroDivisionError: as an object whose class a worker
    cannot import, or whose state no longer fits its class."""

    def __reduce__(self) -> Any:
        return (operator.truediv, (1, 0))


@pytest.mark.timeout(30)
def test_shared_arguments_that_a_worker_cannot_unpickle_fail_every_task_saying_why(
    tmp_path: Path,
) -> None:
    P = Parallel(jobs.touch, range(4), folder=str(tmp_path), extra=FailsToUnpickle(), ncpus=2,
                 die=False, start_method="spawn")
    run_tolerant(P)
    assert P.success == [False] * 4
    for error in P.exceptions:
        assert isinstance(error, SerializationError)
        assert str(error).startswith("the function or the shared arguments")
        assert "unpickling in the worker failed: ZeroDivisionError" in str(error)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(30)
def test_a_task_value_that_a_worker_cannot_unpickle_fails_that_task(start_method: str) -> None:
    P = Parallel(jobs.square, [1, 2, FailsToUnpickle(), 4], ncpus=2, chunksize=1, die=False,
                 start_method=start_method)
    run_tolerant(P)
    assert returned(P) == [1, 4, None, 16]
    assert isinstance(P.exceptions[2], SerializationError)
    assert "unpickling in the worker failed: ZeroDivisionError" in str(P.exceptions[2])
    with pytest.raises(SerializationError, match="unpickling in the worker failed"):
        parallelize(jobs.square, [1, 2, FailsToUnpickle(), 4], ncpus=2,
                    start_method=start_method)


# -- nested runs -----------------------------------------------------------------------------


@pytest.mark.timeout(40)
@pytest.mark.parametrize("parallelizer", [None, "multiprocessing", "fast", "thread"])
def test_a_task_may_run_its_own_parallel_run(start_method: str, parallelizer: str | None) -> None:
    results = parallelize(jobs.nested_sum, [2, 3], ncpus=2, parallelizer=parallelizer,
                          start_method=start_method)
    assert results == [(5, []), (14, [])]


@pytest.mark.timeout(40)
@pytest.mark.parametrize(
    ("library", "inner", "serially"),
    [
        ("multiprocess", None, True),
        ("multiprocessing", "multiprocessing", True),
        ("multiprocessing", "fast", True),
        # A daemon of the stdlib is no daemon to multiprocess, which may start processes.
        ("multiprocessing", None, False),
    ],
)
def test_a_task_in_a_daemonic_pool_may_still_run_its_own_run(
    library: str, inner: str | None, serially: bool
) -> None:
    module = __import__(library)
    with module.get_context("fork").Pool(2) as pool:
        results = parallelize(jobs.nested_sum, [2, 3], kwargs={"parallelizer": inner},
                              parallelizer=pool.map)
        pool.close()
        pool.join()
    assert [total for total, _ in results] == [5, 14]
    for _, caught in results:
        if serially:
            assert len(caught) == 1
            assert "daemonic" in caught[0]
            assert "serially" in caught[0]
        else:
            assert caught == []


# -- backends that cannot stop a task --------------------------------------------------------


@pytest.mark.timeout(30)
def test_thread_backend_abandons_an_overrunning_task_and_says_so() -> None:
    release = threading.Event()
    before = threading.active_count()
    try:
        P = Parallel(jobs.wait_for_event, range(4), event=release, parallelizer="thread",
                     ncpus=2, timeout=0.2, die=False)
        started = time.perf_counter()
        run_tolerant(P)
        assert time.perf_counter() - started < 10
    finally:
        release.set()
    assert returned(P) == [0, None, 2, 3]
    error = P.exceptions[1]
    assert isinstance(error, TaskTimeoutError)
    assert error.stopped is False
    assert "cannot stop a running task" in str(error)
    deadline = time.monotonic() + 10
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= before


@pytest.mark.timeout(30)
def test_thread_backend_dies_without_waiting_for_a_blocked_task() -> None:
    release = threading.Event()
    try:
        started = time.perf_counter()
        with pytest.raises(ValueError, match="task 0 fails"):
            parallelize(jobs.wait_for_event, range(4), event=release, slow=1, bad=0,
                        parallelizer="thread", ncpus=2, chunksize=1)
        assert time.perf_counter() - started < 10
    finally:
        release.set()


@pytest.mark.timeout(30)
def test_fast_backend_abandons_an_overrunning_task_and_kills_it_at_the_end() -> None:
    P = Parallel(jobs.sleep_if, range(4), slow=1, seconds=30, timeout=0.3, parallelizer="fast",
                 ncpus=2, die=False)
    started = time.perf_counter()
    run_tolerant(P)
    assert time.perf_counter() - started < 10
    assert returned(P) == [0, None, 2, 3]
    error = P.exceptions[1]
    assert isinstance(error, TaskTimeoutError)
    assert error.stopped is False


@pytest.mark.timeout(40)
def test_fast_backend_times_tasks_from_their_start_not_their_wait(start_method: str) -> None:
    # Two tasks hang and hold both processes: the 20 quick ones must neither wait behind them
    # in the executor's queue nor be charged for that wait (issue 11 item 5). Under spawn, a
    # process's start-up is not charged either.
    seconds = [30.0, 30.0] + [0.01] * 20
    P = Parallel(jobs.sleep_for, seconds, timeout=1.0, parallelizer="fast", ncpus=2,
                 die=False, start_method=start_method)
    started = time.perf_counter()
    with pytest.warns(RuntimeWarning, match="only 20 of 22"):
        P.run()
    assert time.perf_counter() - started < 20
    assert P.success == [False, False] + [True] * 20
    for error in P.exceptions[:2]:
        assert isinstance(error, TaskTimeoutError)
        assert error.stopped is False
    assert all(1.0 <= r.elapsed < 5.0 for r in P.task_results[:2])


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["exit", "kill"])
def test_fast_backend_survives_a_crash(how: str) -> None:
    # One task in flight at a time: the broken executor can only have been broken by it.
    P = Parallel(jobs.die_on, range(6), how=how, parallelizer="fast", ncpus=1, chunksize=1,
                 die=False)
    run_tolerant(P)
    assert returned(P) == [0, 1, 4, None, 16, 25]
    assert isinstance(P.exceptions[3], WorkerCrashedError)
    assert P.exceptions[3].index == 3


@pytest.mark.timeout(30)
def test_fast_backend_dies_on_a_crash_without_waiting(start_method: str, tmp_path: Path) -> None:
    # Under spawn the executor starts each process after waking its manager thread; unless
    # woken again, the manager missed this crash until task 0 ended, 30 s later.
    marker = tmp_path / "died"
    with pytest.raises(WorkerCrashedError):
        parallelize(jobs.die_on, range(4), bad=1, how="kill", others=30.0, marker=str(marker),
                    parallelizer="fast", ncpus=2, chunksize=1, start_method=start_method)
    assert time.time() - float(marker.read_text()) < 5.0


def test_serial_backend_marks_an_overrun_when_the_task_returns() -> None:
    P = Parallel(jobs.sleep_if, range(3), slow=1, seconds=0.3, timeout=0.05, serial=True,
                 die=False)
    run_tolerant(P)
    assert returned(P) == [0, None, 2]
    assert isinstance(P.exceptions[1], TaskTimeoutError)
    assert P.exceptions[1].stopped is False


def test_worker_pids_are_gone_after_a_run() -> None:
    P = Parallel(jobs.pid, range(4), ncpus=2).run()
    assert P.results is not None
    assert all(gone(pid) for pid in P.results)
    assert os.getpid() not in P.results
