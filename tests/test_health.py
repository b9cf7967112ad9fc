"""Workers that stay healthy over long runs (issue 14): initializers and worker state,
recycling after N tasks or past a memory size, per-task memory limits, thread limits."""

from __future__ import annotations

import math
import os
import threading
import time
from collections import Counter

import pytest

import parallel_jobs as pj
from parallel_jobs.engine.health import parse_bytes
from parallel_jobs.worker_health import current_rss
from tests import jobs

MB = 1_000_000


# -- initializer and worker_state --------------------------------------------------------------


def test_initializer_state_is_seen_by_every_task_of_its_worker(start_method: str) -> None:
    results = pj.parallelize(
        jobs.state_and_pid, range(30), ncpus=2, start_method=start_method, chunksize=2,
        initializer=jobs.remember_setup, initargs=("db",),
    )
    for _, (tag, state_pid), pid in results:
        assert tag == "db"
        assert state_pid == pid  # the state of the worker that ran the task, set up there


def test_a_failing_initializer_is_one_error_naming_the_worker(start_method: str) -> None:
    started = time.monotonic()
    with pytest.raises(pj.InitializerError) as caught:
        pj.parallelize(jobs.pid_of, range(50), ncpus=2, start_method=start_method,
                       initializer=jobs.failing_setup, die=False)
    assert time.monotonic() - started < 20
    error = caught.value
    assert error.pid > 0
    assert f"worker process {error.pid}" in str(error)
    assert "ConnectionError: no database here" in str(error)
    assert "failing_setup" in error.traceback


def test_thread_workers_each_have_their_own_state() -> None:
    results = pj.parallelize(jobs.state_and_pid, range(8), ncpus=2, parallelizer="thread",
                             initializer=jobs.remember_setup, initargs=("t",))
    assert {tag for _, (tag, _), _ in results} == {"t"}


def test_serial_state_is_the_callers_threads() -> None:
    def check() -> None:
        pj.parallelize(jobs.state_and_pid, range(3), parallelizer="serial",
                       initializer=jobs.remember_setup, initargs=("s",))
        assert pj.worker_state()["tag"] == "s"

    # In a thread of its own, so the test leaves this thread's state alone.
    thread = threading.Thread(target=check)
    thread.start()
    thread.join()


def test_a_failing_initializer_in_a_thread_run_is_raised_once() -> None:
    with pytest.raises(pj.InitializerError) as caught:
        pj.parallelize(jobs.pid_of, range(5), ncpus=2, parallelizer="thread",
                       initializer=jobs.failing_setup, die=False)
    assert isinstance(caught.value.__cause__, ConnectionError)


# -- max_tasks_per_worker ----------------------------------------------------------------------


@pytest.mark.parametrize("chunksize", [None, 5])
def test_max_tasks_per_worker_replaces_workers_between_tasks(
        start_method: str, chunksize: int | None) -> None:
    n, most = 20, 3
    P = pj.Parallel(jobs.pid_of, range(n), ncpus=2, start_method=start_method,
                    chunksize=chunksize, max_tasks_per_worker=most)
    per_pid = Counter(P.run().results)
    assert len(per_pid) >= math.ceil(n / most)
    assert max(per_pid.values()) <= most
    assert all(P.success)


# -- max_worker_memory --------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_leaking_function_finishes_without_a_worker_past_max_worker_memory(
        start_method: str) -> None:
    leak = 4 * MB
    limit = current_rss() + 40 * MB  # a worker starts at most as large as this process
    P = pj.Parallel(jobs.leak, range(200), ncpus=2, start_method=start_method,
                    max_worker_memory=limit, kwargs={"size": leak})
    results = P.run().results
    assert all(P.success)
    # A worker is measured after each task and replaced once past the limit: before that task
    # it was within it, and one task leaks ``leak``.
    assert max(rss for _, rss in results) <= limit + leak + MB
    assert len({pid for pid, _ in results}) > 2
    replaced = P.summary()["workers_replaced"]
    assert replaced
    assert all("max_worker_memory" in reason for _, reason in replaced)


# -- task_memory_limit -------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.filterwarnings("ignore:only .* tasks succeeded:RuntimeWarning")
def test_a_task_past_task_memory_limit_fails_alone_and_fast(start_method: str) -> None:
    limit = current_rss() + 300 * MB
    P = pj.Parallel(jobs.hog, range(8), ncpus=2, start_method=start_method, die=False,
                    task_memory_limit=limit, kwargs={"hog_at": 3})
    P.run()
    assert P.success == [i != 3 for i in range(8)]
    error = P.exceptions[3]
    assert isinstance(error, pj.MemoryLimitError)
    assert isinstance(error, pj.WorkerCrashedError)
    assert error.index == 3
    assert error.limit == limit
    assert error.peak > limit
    assert "task 3 (3)" in str(error)
    assert "task_memory_limit" in str(error)
    # Stopped while it ran, short of the 4 GB it would have reached: no clock needed to tell.
    assert error.peak < 4000 * MB
    assert P.summary()["memory_limits_hit"] == 1


@pytest.mark.timeout(60)
@pytest.mark.filterwarnings("ignore:only .* tasks succeeded:RuntimeWarning")
def test_task_memory_limit_failures_are_retried() -> None:
    P = pj.Parallel(jobs.hog, range(4), ncpus=2, die=False, retries=1,
                    task_memory_limit=current_rss() + 300 * MB, kwargs={"hog_at": 1})
    P.run()
    assert P.success == [True, False, True, True]
    assert P.task_results[1].attempts == 2


@pytest.mark.timeout(60)
def test_a_kept_worker_applies_the_next_runs_memory_limit() -> None:
    limit = current_rss() + 200 * MB
    pj.parallelize(jobs.pid_of, range(4), ncpus=2, start_method="spawn",
                   task_memory_limit=limit)
    # The same (kept) spawned workers, no limit now: a task may grow past the old one.
    values = pj.parallelize(jobs.hog, range(2), ncpus=2, start_method="spawn",
                            kwargs={"hog_at": 0, "most": 400 * MB})
    assert values == [-1, 1]


def test_without_memory_options_nothing_watches() -> None:
    results = pj.parallelize(jobs.thread_names, range(4), ncpus=2)
    assert not any("watchdog" in name for names in results for name in names)


# -- thread limits -----------------------------------------------------------------------------


def test_thread_limits_are_visible_in_a_worker(start_method: str) -> None:
    pytest.importorskip("threadpoolctl")
    pytest.importorskip("numpy")
    limits = pj.parallelize(jobs.thread_limits, range(2), ncpus=2, start_method=start_method,
                            threads_per_worker=1)
    assert limits[0]
    assert all(count == 1 for counts in limits for count in counts)
    variables = pj.parallelize(jobs.omp_variable, range(2), ncpus=2, start_method=start_method,
                               threads_per_worker=3)
    assert variables == ["3", "3"]


def test_threads_per_worker_none_leaves_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert pj.parallelize(jobs.omp_variable, range(2), ncpus=2, threads_per_worker=None) == [
        "7", "7"]


def test_threads_per_worker_auto_is_cpus_over_ncpus() -> None:
    expected = str(max(1, pj.cpu_count() // 2))
    assert pj.parallelize(jobs.omp_variable, range(2), ncpus=2) == [expected, expected]


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(("option", "value", "error"), [
    ("max_tasks_per_worker", 0, ValueError),
    ("max_tasks_per_worker", 2.5, ValueError),
    ("max_worker_memory", "lots", ValueError),
    ("max_worker_memory", -1, ValueError),
    ("task_memory_limit", [1], TypeError),
    ("threads_per_worker", 0, ValueError),
    ("initializer", "setup", TypeError),
    ("initargs", 3, TypeError),
])
def test_bad_health_options_fail_at_construction_naming_them(
        option: str, value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=option):
        pj.Parallel(jobs.pid_of, range(2), **{option: value})


@pytest.mark.parametrize(("parallelizer", "option"), [
    ("thread", "max_tasks_per_worker"),
    ("serial", "task_memory_limit"),
    ("fast", "max_worker_memory"),
    ("dask", "initializer"),
])
def test_options_a_parallelizer_cannot_honour_fail_at_construction(
        parallelizer: str, option: str) -> None:
    value = jobs.remember_setup if option == "initializer" else 10
    with pytest.raises(ValueError, match=option):
        pj.Parallel(jobs.pid_of, range(2), parallelizer=parallelizer, **{option: value})


def test_sizes_are_read_in_decimal_and_binary_units() -> None:
    assert parse_bytes("2 GB", "x") == 2_000_000_000
    assert parse_bytes("512MiB", "x") == 512 * 2**20
    assert parse_bytes("100", "x") == 100
    assert parse_bytes(None, "x") is None


def test_fast_runs_the_initializer_in_each_worker() -> None:
    results = pj.parallelize(jobs.state_and_pid, range(6), ncpus=2, parallelizer="fast",
                             initializer=jobs.remember_setup, initargs=("f",))
    for _, (tag, state_pid), pid in results:
        assert tag == "f"
        assert state_pid == pid


def test_a_failing_initializer_under_fast_is_raised_once() -> None:
    with pytest.raises(pj.InitializerError, match="no database here"):
        pj.parallelize(jobs.pid_of, range(6), ncpus=2, parallelizer="fast",
                       initializer=jobs.failing_setup, die=False)


def test_the_report_says_which_workers_were_replaced_and_why(
        caplog: pytest.LogCaptureFixture) -> None:
    import io
    import logging

    from rich.console import Console

    with caplog.at_level(logging.INFO, logger="parallel_jobs"):
        P = pj.Parallel(jobs.pid_of, range(6), ncpus=2, max_tasks_per_worker=2).run()
    assert "ran max_tasks_per_worker=2 tasks" in caplog.text
    info = P.summary()
    assert len(info["workers_replaced"]) >= 2
    assert any("max_tasks_per_worker=2" in row["note"] for row in info["workers"])
    console = Console(file=io.StringIO(), width=200)
    P.report(console)
    text = console.file.getvalue()
    assert "workers replaced (health options)" in text
    assert "retired: ran max_tasks_per_worker=2 tasks" in text


@pytest.mark.timeout(60)
@pytest.mark.filterwarnings("ignore:only .* tasks succeeded:RuntimeWarning")
def test_the_stdlib_pool_honours_every_option_too() -> None:
    P = pj.Parallel(jobs.state_and_pid, range(12), ncpus=2, parallelizer="multiprocessing",
                    initializer=jobs.remember_setup, initargs=("m",), max_tasks_per_worker=3)
    results = P.run().results
    assert {tag for _, (tag, _), _ in results} == {"m"}
    assert max(Counter(pid for _, _, pid in results).values()) <= 3
    hogged = pj.Parallel(jobs.hog, range(4), ncpus=2, parallelizer="multiprocessing",
                         die=False, task_memory_limit=current_rss() + 300 * MB,
                         kwargs={"hog_at": 2})
    hogged.run()
    assert isinstance(hogged.exceptions[2], pj.MemoryLimitError)
    assert hogged.success == [True, True, False, True]


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs /proc")
def test_limiting_an_inherited_blas_starts_no_thread() -> None:
    np = pytest.importorskip("numpy")
    pytest.importorskip("threadpoolctl")
    np.linalg.solve(np.eye(200) + 1, np.ones(200))  # the parent's BLAS has its threads running
    # Limiting it through OpenBLAS' own call would start its thread server in each worker, and
    # those threads spin for 0.1 s of CPU: twice the time of a short run on two cores.
    assert pj.parallelize(jobs.os_threads, range(2), ncpus=2, start_method="fork",
                          threads_per_worker=1) == [1, 1]


# -- logging -------------------------------------------------------------------------------------


def test_log_records_of_tasks_reach_the_callers_handlers(
        start_method: str, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    with caplog.at_level(logging.WARNING):
        results = pj.parallelize(jobs.log_and_square, range(6), ncpus=2,
                                 start_method=start_method, chunksize=2)
    assert results == [x * x for x in range(6)]
    records = [r for r in caplog.records if r.name == "tests.task"]
    assert sorted(r.getMessage() for r in records) == [f"working on {x}" for x in range(6)]
    assert {r.task_index for r in records} == set(range(6))  # type: ignore[attr-defined]
    assert all(r.process != os.getpid() for r in records)  # logged in the workers
    assert not [r for r in caplog.records if r.getMessage().startswith("details")]
