"""Every ``parallelizer`` name, suffix and form gives the same results, each where it should run."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
from typing import Any

import psutil
import pytest

import parallel_jobs as pj
from parallel_jobs import Parallel, parallelize
from tests import jobs
from tests.conftest import returned

NAMES = {
    None: "multiprocess",
    "default": "multiprocess",
    "robust": "multiprocess",
    "multiprocess": "multiprocess",
    "multiprocessing": "multiprocessing",
    "fast": "concurrent.futures",
    "concurrent": "concurrent.futures",
    "concurrent.futures": "concurrent.futures",
    "serial": "serial",
    "thread": "thread",
    "threadpool": "thread",
}
IN_PROCESS = ("serial", "thread")


def _variants() -> list[tuple[str | None, str, str]]:
    cases: list[tuple[str | None, str, str]] = [(None, "", "multiprocess")]
    for name, method in NAMES.items():
        if name is None:
            continue
        for suffix in ("", "-copy", "-async"):
            if (method, suffix) != ("serial", "-async"):
                cases.append((name, suffix, method))
    return cases


@pytest.mark.parametrize(
    ("name", "suffix", "method"), _variants(),
    ids=[f"{n}{s}" for n, s, _ in _variants()],
)
def test_every_name_gives_the_same_results(name: str | None, suffix: str, method: str) -> None:
    parallelizer = None if name is None else name + suffix
    P = Parallel(jobs.value_and_pid, [3, (4,), 5, 6], ncpus=2, parallelizer=parallelizer)
    assert P.method == method
    assert P.run() is P
    assert P.results is not None
    assert [value for value, _ in P.results] == [3, 4, 5, 6]
    pids = {pid for _, pid in P.results}
    if method in IN_PROCESS:
        assert pids == {os.getpid()}
    else:
        assert os.getpid() not in pids
    assert P.status == "done"


@pytest.mark.parametrize(
    ("name", "suffix", "method"), _variants(),
    ids=[f"{n}{s}" for n, s, _ in _variants()],
)
def test_every_name_reports_failures_and_calls_back_the_same(
    name: str | None, suffix: str, method: str
) -> None:
    parallelizer = None if name is None else name + suffix
    calls: list[int] = []
    P = Parallel(jobs.fail_on, [1, 3, 5], ncpus=2, die=False, parallelizer=parallelizer,
                 callback=lambda data: calls.append(data["index"]))
    with pytest.warns(RuntimeWarning, match="only 2 of 3"):
        P.run()
    assert returned(P) == [1, None, 5]
    assert P.success == [True, False, True]
    assert P.exceptions is not None
    assert isinstance(P.exceptions[1], ValueError)
    assert sorted(calls) == [0, 1, 2]
    with pytest.raises(ValueError, match="task value 3 is bad"):
        parallelize(jobs.fail_on, [1, 3, 5], ncpus=2, parallelizer=parallelizer)


def test_names_are_case_and_space_insensitive() -> None:
    assert Parallel(jobs.square, [1], parallelizer=" Thread-Copy ").method == "thread"


def test_async_alone_means_the_default_in_the_background() -> None:
    P = Parallel(jobs.square, [1, 2], parallelizer="async")
    assert (P.method, P.choice.is_async) == ("multiprocess", True)
    assert P.run().results == [1, 4]


def test_serial_true_means_serial_whatever_the_parallelizer() -> None:
    P = Parallel(jobs.value_and_pid, [1, 2], serial=True, parallelizer="fast")
    assert P.method == "serial"
    assert P.run().results == [(1, os.getpid()), (2, os.getpid())]


def _mutate(x: list[int]) -> int:
    x.append(0)
    return len(x)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("parallelizer", "copied"),
    [("serial", False), ("serial-copy", True), ("thread", False), ("thread-copy", True),
     # Process backends pickle a copy for each task, as sciris did, whatever the start
     # method and however many tasks one worker runs in one chunk.
     *[(f"{name}:{method}:{chunk}", True) for name in ("multiprocess", "multiprocessing", "fast")
       for method in ("fork", "spawn", "forkserver") for chunk in (1, 3)]],
)
def test_copy_gives_each_task_its_own_arguments(parallelizer: str, copied: bool) -> None:
    shared: list[int] = []
    options: dict[str, Any] = {}
    if ":" in parallelizer:
        parallelizer, method, chunk = parallelizer.split(":")
        options = {"start_method": method, "chunksize": int(chunk)}
    results = parallelize(_mutate, 3, args=[shared], ncpus=1, parallelizer=parallelizer,
                          **options)
    if copied:
        assert (results, shared) == ([1, 1, 1], [])
    else:
        assert (results, shared) == ([1, 2, 3], [0, 0, 0])


@pytest.mark.timeout(20)
@pytest.mark.parametrize("parallelizer", ["serial-copy", "thread-copy"])
def test_copy_of_an_uncopyable_argument_fails_the_run(parallelizer: str) -> None:
    with pytest.raises(TypeError, match="lock"):
        parallelize(jobs.multiply, [1, 2], args=[threading.Lock()], ncpus=2,
                    parallelizer=parallelizer)


def test_a_users_map_is_called_once_with_every_task() -> None:
    calls: list[int] = []

    def my_map(func: Any, items: list[Any]) -> list[Any]:
        calls.append(len(items))
        return [func(item) for item in items]

    results = parallelize(jobs.multiply, iterkwargs={"x": [1, 2, 3], "y": [4, 5, 6]},
                          parallelizer=my_map)
    assert results == [4, 10, 18]
    assert calls == [3]


def test_builtin_and_executor_maps_work() -> None:
    from concurrent.futures import ThreadPoolExecutor

    assert parallelize(jobs.square, [1, 2], parallelizer=map) == [1, 4]
    with ThreadPoolExecutor(2) as executor:
        assert parallelize(jobs.square, [1, 2], parallelizer=executor.map) == [1, 4]


def test_a_users_map_gets_the_users_globaldict_itself() -> None:
    # A manager's dict is how a user's own pool shares state; copying it would lose the writes.
    manager = mp.Manager()
    try:
        shared = manager.dict()
        with mp.Pool(2) as pool:
            P = Parallel(jobs.count_in_globaldict, [1, 2, 3], globaldict=shared,
                         parallelizer=pool.map).run()
            pool.close()
            pool.join()
        assert dict(shared) == {1: 10, 2: 20, 3: 30}
        assert P.globaldict == {1: 10, 2: 20, 3: 30}
    finally:
        manager.shutdown()


def test_a_users_map_that_drops_results_is_an_error() -> None:
    with pytest.raises(ValueError, match="returned 1 results for 2 tasks"):
        parallelize(jobs.square, [1, 2], parallelizer=lambda f, items: [f(items[0])])


def test_a_users_map_task_failure_raises_its_own_type() -> None:
    with pytest.raises(ValueError, match="task value 3 is bad"):
        parallelize(jobs.fail_on, [1, 3], parallelizer=lambda f, items: list(map(f, items)))


def _list_map(func: Any, items: list[Any]) -> list[Any]:
    return list(map(func, items))


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "parallelizer",
    [None, "serial", "thread", "fast", pytest.param(_list_map, id="custom")],
)
def test_sys_exit_in_a_task_fails_that_task_only(parallelizer: Any) -> None:
    # Issue 11 item 3: a task's SystemExit is its failure, not the caller's exit (before, the
    # whole run ended, and under 'fast' the caller exited with the task's status).
    with pytest.warns(RuntimeWarning, match="only 2 of 3"):
        P = Parallel(jobs.exit_on, [0, 1, 2], ncpus=2, die=False,
                     parallelizer=parallelizer).run()
    assert returned(P) == [0, None, 2]
    assert P.exceptions is not None
    assert type(P.exceptions[1]) is SystemExit


def _own_children() -> set[int]:
    keep = ("forkserver", "resource_tracker", "semaphore_tracker")
    found = set()
    for child in psutil.Process().children():
        try:
            if not any(k in " ".join(child.cmdline()) for k in keep):
                found.add(child.pid)
        except psutil.Error:
            continue
    return found


@pytest.mark.parametrize("parallelizer", ["multiprocess", "multiprocessing"])
def test_process_methods_run_on_the_runners_own_workers(
    parallelizer: str, start_method: str
) -> None:
    seen: list[tuple[int, set[int]]] = []

    def callback(data: dict[str, Any]) -> None:
        # The callback runs in the parent while the run is live: the workers are its children.
        seen.append((data["outdict"]["result"][1], _own_children()))

    P = Parallel(jobs.value_and_pid, range(4), ncpus=2, parallelizer=parallelizer,
                 start_method=start_method, callback=callback).run()
    assert P.method == parallelizer
    assert len(seen) == 4
    for task_pid, children in seen:
        assert task_pid in children
        # The workers, and no manager or pool-helper process; towards the end, an idle worker
        # has already left (nothing was left to hand out).
        assert 1 <= len(children) <= 2


def _make_closure() -> Any:
    offset = 100

    def add_offset(x: int) -> int:
        return x + offset

    return add_offset


@pytest.mark.parametrize("parallelizer", [None, "multiprocessing"])
def test_lambdas_closures_and_local_functions_work(
    parallelizer: str | None, start_method: str
) -> None:
    scale = 3

    def local(x: int) -> int:
        return x * scale

    for func, expected in [
        (lambda x: x - 1, [0, 1]),
        (_make_closure(), [101, 102]),
        (local, [3, 6]),
    ]:
        results = parallelize(func, [1, 2], ncpus=2, parallelizer=parallelizer,
                              start_method=start_method)
        assert results == expected


def test_threads_run_concurrently() -> None:
    barrier = threading.Barrier(2, timeout=10)
    # Each task waits for the other: only two tasks running at once can get past the barrier.
    results = parallelize(lambda x: barrier.wait() is not None and x, [1, 2], ncpus=2,
                          parallelizer="thread")
    assert results == [1, 2]


def test_parallelizers_table_lists_every_name() -> None:
    for name in NAMES:
        if name is not None:
            assert pj.PARALLELIZERS[name] == NAMES[name]


@pytest.mark.parametrize("parallelizer", ["multiprocess", "multiprocessing", "fast"])
def test_process_workers_do_not_share_the_callers_numpy_rng(parallelizer: str) -> None:
    # Forked workers start with a copy of the caller's RNG state: unless each is reseeded,
    # two tasks in different workers draw the same "random" number.
    np = pytest.importorskip("numpy")
    np.random.seed(1)
    draws = parallelize(jobs.draw_random, 8, ncpus=2, parallelizer=parallelizer, chunksize=1)
    assert len(set(draws)) == 8


@pytest.mark.timeout(20)
def test_thread_timeout_stops_waiting_for_a_task_running_alone() -> None:
    release = threading.Event()

    def wait_for_release(_: int) -> bool:
        return release.wait(30)

    try:
        P = Parallel(wait_for_release, [0], parallelizer="thread", timeout=0.05, die=False)
        with pytest.warns(RuntimeWarning, match="0 of 1"):
            P.run()
    finally:
        release.set()
    assert P.exceptions is not None
    error = P.exceptions[0]
    assert isinstance(error, pj.TaskTimeoutError)
    assert error.stopped is False


# Chunk sizes: which backends need a task per chunk, and when.
ONE_TASK_PER_CHUNK = {
    # parallelizer: (with a timeout, with '-copy', with neither)
    "multiprocess": (None, None, None),
    "multiprocessing": (None, None, None),
    "fast": (1, None, None),
    "thread": (1, 1, None),
    "serial": (None, 1, None),
    "dask": (1, 1, None),
}


@pytest.mark.parametrize("parallelizer", sorted(ONE_TASK_PER_CHUNK))
def test_a_backend_takes_one_task_per_chunk_when_it_must_time_or_copy_each(
        parallelizer: str) -> None:
    # A thread, a future or a dask task that overruns is abandoned with every task of its
    # chunk, and a '-copy' backend that copies once per chunk would share that copy.
    from parallel_jobs.backends import resolve
    from parallel_jobs.backends.base import BackendOptions

    if parallelizer == "dask":
        pytest.importorskip("distributed")
    choice = resolve(parallelizer)
    timed, copied, plain = ONE_TASK_PER_CHUNK[parallelizer]
    assert choice.build(BackendOptions(ncpus=2, timeout=1.0)).max_chunk == timed
    assert choice.build(BackendOptions(ncpus=2, copy=True)).max_chunk == copied
    assert choice.build(BackendOptions(ncpus=2)).max_chunk == plain


def test_a_users_map_gets_one_task_per_item() -> None:
    from parallel_jobs.backends import resolve
    from parallel_jobs.backends.base import BackendOptions

    assert resolve(map).build(BackendOptions(ncpus=2, timeout=1.0, copy=True)).max_chunk == 1
    assert resolve(map).build(BackendOptions(ncpus=2)).max_chunk == 1
