"""What a failed task leaves behind, on every backend (issue 11 items 3, 4, 17; issue 10's
"Errors a user reads").

A task that raises anything at all (a BaseException that is not an Exception, an exception
whose ``__str__`` raises) fails that task only; an argument a '-copy' parallelizer cannot copy
fails its task, named; and the errors the user reads say which task, with its values, and
carry the worker's traceback wherever the task ran in another process.
"""

from __future__ import annotations

import asyncio
import pickle
import signal
import subprocess
import sys
import threading
from typing import Any

import pytest

from parallel_jobs import (
    Parallel,
    RemoteTraceback,
    SerializationError,
    TaskTimeoutError,
    WorkerCrashedError,
    parallelize,
)
from parallel_jobs import errors as pj_errors
from tests import jobs
from tests.conftest import ROOT, returned

BACKENDS = [None, "multiprocessing", "fast", "thread", "serial"]
IN_PROCESS = {"thread", "serial"}

BASE_EXCEPTIONS: dict[str, type[BaseException]] = {
    "SystemExit": SystemExit,
    "KeyboardInterrupt": KeyboardInterrupt,
    "GeneratorExit": GeneratorExit,
    "CancelledError": asyncio.CancelledError,
    "custom": jobs.CustomBaseError,
}


def run_tolerant(P: Parallel) -> Parallel:
    """Run with die=False, where a failed task must be reported by a warning."""
    with pytest.warns(RuntimeWarning, match="tasks succeeded"):
        P.run()
    return P


def check_remote_cause(error: BaseException, index: int, words: str) -> None:
    """The worker's traceback is the error's cause, naming the task and the code that raised."""
    cause = error.__cause__
    assert isinstance(cause, RemoteTraceback), f"no remote traceback on {error!r}"
    assert f"Task {index} raised this in its worker" in cause.text
    assert words in cause.text


# -- item 3: a BaseException fails its own task ----------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", list(BASE_EXCEPTIONS))
@pytest.mark.parametrize("parallelizer", BACKENDS)
def test_a_base_exception_fails_only_its_task_as_its_own_type(parallelizer: str | None,
                                                              kind: str) -> None:
    P = Parallel(jobs.raise_base, range(5), kind=kind, ncpus=2, chunksize=2, die=False,
                 parallelizer=parallelizer)
    run_tolerant(P)
    assert returned(P) == [0, 1, None, 3, 4]
    error = P.exceptions[2]
    assert type(error) is BASE_EXCEPTIONS[kind]
    if kind == "SystemExit":
        assert error.args == (3,)
    else:
        assert "task 2" in str(error)
    if parallelizer not in IN_PROCESS:
        check_remote_cause(error, 2, "raise_base")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("parallelizer", BACKENDS)
def test_sys_exit_in_a_task_with_die_is_raised_in_the_caller_not_obeyed(
        parallelizer: str | None) -> None:
    with pytest.raises(SystemExit) as info:
        parallelize(jobs.raise_base, range(4), kind="SystemExit", ncpus=2,
                    parallelizer=parallelizer)
    assert info.value.args == (3,)
    if sys.version_info >= (3, 11):
        assert any("raised by task 2 (2)" in note for note in info.value.__notes__)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_the_callers_own_signal_in_a_serial_task_stops_the_run(signum: int) -> None:
    # The task raises a real signal in the caller's main thread: the caller's Ctrl-C (or a
    # SIGTERM, which ends the run with SystemExit(143)) must stop the run, not fail one task.
    assert threading.current_thread() is threading.main_thread()
    P = Parallel(jobs.signal_self_on, range(4), signum=signum, bad=1, die=False,
                 parallelizer="serial")
    stopped = KeyboardInterrupt if signum == signal.SIGINT else SystemExit
    with pytest.raises(stopped):
        P.run()
    assert P.results == [0, None, None, None]  # task 1 was stopped, not failed
    assert P.skipped == [False, True, True, True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# -- item 4: an exception whose __str__ raises -------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("parallelizer", BACKENDS)
def test_an_exception_whose_str_raises_fails_its_task_with_type_and_traceback(
        parallelizer: str | None) -> None:
    P = Parallel(jobs.raise_broken_str, range(4), ncpus=2, die=False,
                 parallelizer=parallelizer)
    run_tolerant(P)
    assert returned(P) == [0, 1, None, 3]
    error = P.exceptions[2]
    assert type(error) is jobs.BrokenStrError
    assert error.args == (2,)
    record = P.task_results[2]
    assert "raise_broken_str" in record.traceback
    assert "BrokenStrError" in record.traceback
    if parallelizer not in IN_PROCESS:
        check_remote_cause(error, 2, "raise_broken_str")
    P.report()  # reads every failure; must not call the broken __str__ unguarded


@pytest.mark.timeout(30)
@pytest.mark.parametrize("parallelizer", [None, "thread"])
def test_an_exception_whose_str_raises_is_raised_with_die(parallelizer: str | None) -> None:
    with pytest.raises(jobs.BrokenStrError) as info:
        parallelize(jobs.raise_broken_str, range(4), ncpus=2, parallelizer=parallelizer)
    assert info.value.args == (2,)


# -- item 17: an argument that '-copy' cannot copy ---------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("parallelizer", ["serial-copy", "thread-copy"])
def test_an_uncopyable_task_value_fails_that_task_named(parallelizer: str) -> None:
    values: list[Any] = [1, 2, threading.Lock(), 4]
    P = Parallel(jobs.value_and_pid, values, ncpus=2, die=False, parallelizer=parallelizer)
    run_tolerant(P)
    assert P.success == [True, True, False, True]
    assert [r[0] for r in returned(P) if r is not None] == [1, 2, 4]
    error = P.exceptions[2]
    assert isinstance(error, SerializationError)
    assert isinstance(error, TypeError)
    assert error.what == "the iterated value of task 2"
    assert "deep-copied" in str(error)
    assert "lock" in error.reason


@pytest.mark.timeout(30)
@pytest.mark.parametrize("parallelizer", ["serial-copy", "thread-copy"])
def test_an_uncopyable_shared_argument_fails_every_task_naming_it(parallelizer: str) -> None:
    P = Parallel(jobs.touch, range(3), kwargs={"folder": ".", "extra": threading.Lock()},
                 die=False, parallelizer=parallelizer)
    with pytest.warns(RuntimeWarning, match="only 0 of 3"):
        P.run()
    for error in P.exceptions:
        assert isinstance(error, SerializationError)
        assert error.what == "keyword argument 'extra'"


@pytest.mark.timeout(30)
def test_an_uncopyable_value_with_die_names_its_task() -> None:
    with pytest.raises(SerializationError, match="the iterated value of task 1") as info:
        parallelize(jobs.square, [1, threading.Lock()], parallelizer="serial-copy")
    if sys.version_info >= (3, 11):
        assert any("raised by task 1 (<unlocked " in note
                   for note in info.value.__notes__)


# -- issue 10: errors a user reads -------------------------------------------------------------


@pytest.mark.timeout(30)
def test_a_crash_with_die_is_not_presented_as_raised_in_the_worker() -> None:
    with pytest.raises(WorkerCrashedError) as info:
        parallelize(jobs.die_on, range(4), how="exit", ncpus=1, chunksize=1)
    error = info.value
    # The parent made this error: no "raised this in its worker" cause repeats its text.
    assert error.__cause__ is None
    assert str(error).startswith("the worker process running task 3 (3) exited with code 3")
    if sys.version_info >= (3, 11):
        assert error.__notes__ == [
            "parallel_jobs: raised by task 3 (3); pass die=False to run every task regardless"]


@pytest.mark.timeout(30)
def test_a_timeout_that_ends_the_run_says_the_worker_was_stopped_not_replaced() -> None:
    with pytest.raises(TaskTimeoutError) as info:
        parallelize(jobs.sleep_if, range(3), slow=1, timeout=0.2, ncpus=1, chunksize=1)
    error = info.value
    assert error.__cause__ is None
    assert str(error) == (
        "task 1 (1) ran for longer than its timeout of 0.2 s; its worker was stopped")
    assert "replaced" not in str(error)


def test_errors_the_parent_makes_keep_the_task_values_through_pickling() -> None:
    import pickle

    for error in (WorkerCrashedError(3, -9, task="('a', n=2)"),
                  TaskTimeoutError(3, 1.5, task="('a', n=2)")):
        copy = pickle.loads(pickle.dumps(error))
        assert str(copy) == str(error)
        assert "task 3 ('a', n=2)" in str(copy)


@pytest.mark.timeout(30)
def test_the_values_shown_are_shortened(tmp_path: Any) -> None:
    marker = str(tmp_path / ("m" * 200))
    P = Parallel(jobs.die_on, iterkwargs=[{"x": 1}, {"x": 3, "marker": marker}], how="kill",
                 die=False)
    run_tolerant(P)
    error = P.exceptions[1]
    assert isinstance(error, WorkerCrashedError)
    assert error.task.startswith("(x=3, marker='/")
    assert len(error.task) <= 62
    assert f"task 1 {error.task} was killed by SIGKILL" in str(error)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("keep_records", [True, False])
@pytest.mark.parametrize("parallelizer", [None, "multiprocessing", "fast", "pool.map"])
def test_exceptions_carry_the_workers_traceback_with_die_false(
        parallelizer: str | None, keep_records: bool) -> None:
    # Every process backend but dask's (tests/test_dask.py pins that one): the own pools,
    # concurrent.futures, and a map-like callable whose workers are processes.
    if parallelizer == "pool.map":
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(2) as pool:
            P = Parallel(jobs.fail_on, [1, 3, 5], die=False, keep_records=keep_records,
                         parallelizer=pool.map)
            run_tolerant(P)
    else:
        P = Parallel(jobs.fail_on, [1, 3, 5], ncpus=2, die=False, keep_records=keep_records,
                     parallelizer=parallelizer)
        run_tolerant(P)
    error = P.exceptions[1]
    assert type(error) is ValueError
    check_remote_cause(error, 1, "fail_on")
    assert returned(P) == [1, None, 5]


@pytest.mark.timeout(60)
def test_a_crash_with_die_prints_its_message_once(tmp_path: Any) -> None:
    script = tmp_path / "crash.py"
    script.write_text(
        "import parallel_jobs as pj\n"
        "from tests import jobs\n"
        "if __name__ == '__main__':\n"
        "    pj.parallelize(jobs.die_on, range(4), how='exit', ncpus=1, chunksize=1)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=50, cwd=ROOT, check=False)
    assert done.returncode == 1
    assert done.stderr.count("exited with code 3: the task") == 1, done.stderr
    assert "raised this in its worker" not in done.stderr


ERRORS = [
    pj_errors.UnknownParallelizerError("thread-pool", ["thread", "serial"]),
    pj_errors.WorkerCrashedError(3, -9, "killed by the test", "(5,)"),
    pj_errors.MemoryLimitError(3, -9, 900, 500, "(5,)"),
    pj_errors.InitializerError(1234, "ValueError: no config", "Traceback ..."),
    pj_errors.TaskTimeoutError(2, 1.5, True, "(x=1)"),
    pj_errors.SerializationError("the function", "cannot pickle 'lock'"),
    pj_errors.RemoteTaskError("mod.Odd", "odd", "Traceback ..."),
    pj_errors.CheckpointError("/tmp/sweep.sqlite", "is locked"),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda error: type(error).__name__)
def test_every_error_crosses_a_process_boundary_whole(error: pj_errors.ParallelJobsError) -> None:
    # Real pickling, as between a worker and the parent: the same class, the same fields, the
    # same message, for each error built from other arguments than the ones it passes on.
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert error.fields
    for name in error.fields:
        assert getattr(copy, name) == getattr(error, name)
    assert str(copy) == str(error)
