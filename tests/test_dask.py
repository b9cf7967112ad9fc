"""The dask backend on real LocalClusters: worker processes on 127.0.0.1, no dashboard.

One cluster serves most tests (starting one costs about a second); the tests that kill workers
get a fresh cluster each, because dask's nanny replaces a dead worker with a new process.
"""

from __future__ import annotations

import os
import pickle
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import numpy as np
import psutil
import pytest
from distributed import Client, LocalCluster, get_client

from parallel_jobs import Parallel, parallelize
from parallel_jobs.backends.dask import INSTALL_HINT
from parallel_jobs.errors import RemoteTraceback, TaskTimeoutError, WorkerCrashedError
from tests import jobs
from tests.conftest import returned

CLUSTER = {
    "n_workers": 2,
    "threads_per_worker": 1,
    "processes": True,
    "host": "127.0.0.1",
    # Loopback and a free port: with None, dask still serves /health on port 8787 of every
    # interface and warns when a second cluster finds that port taken.
    "dashboard_address": "127.0.0.1:0",
    "worker_dashboard_address": "127.0.0.1:0",
}


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    """The shared cluster; not the default client, so a test chooses whether dask sees it."""
    cluster = LocalCluster(**CLUSTER)
    client = Client(cluster, set_as_default=False)
    yield client
    client.close()
    cluster.close()


@pytest.fixture
def fragile_client() -> Iterator[Client]:
    """A fresh cluster on which dask gives up on a task after the first worker it kills."""
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = LocalCluster(**CLUSTER)
    client = Client(cluster, set_as_default=False)
    yield client
    client.close()
    cluster.close()


def worker_pids(client: Client) -> set[int]:
    return set(client.run(os.getpid).values())


def first_plus(x: int, big: np.ndarray) -> float:
    return x + float(big[0])


def wait_for_file(x: int, path: str, slow: int = 1) -> int:
    """Task ``slow`` blocks until ``path`` exists (at most 30 s): a task that overruns, and that
    the test can release afterwards so the cluster's worker thread is free again."""
    if x == slow:
        deadline = time.monotonic() + 30
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)
    return x


def keys_of_runs(dask_scheduler: Any) -> list[str]:
    """Runs on the scheduler: the keys that runs of parallel_jobs still hold."""
    return [str(key) for key in dask_scheduler.tasks
            if str(key).startswith(("parallel_jobs-", "Payload-"))]


def wait_until_released(client: Client) -> list[str]:
    """The keys still held after the scheduler had up to 10 s to process the releases, which
    reach it asynchronously."""
    deadline = time.monotonic() + 10
    held = client.run_on_scheduler(keys_of_runs)
    while held and time.monotonic() < deadline:
        time.sleep(0.05)
        held = client.run_on_scheduler(keys_of_runs)
    return held


def graph_of_run(dask_scheduler: Any) -> dict[str, Any]:
    """Runs on the scheduler: what the graph holds for each task of the run."""
    tasks = dask_scheduler.tasks.values()
    return {
        "payloads": {str(ts.key): len(ts.who_has or ()) for ts in tasks
                     if str(ts.key).startswith("Payload-")},
        "chunks": {
            str(ts.key): (len(pickle.dumps(ts.run_spec)),
                          sorted(str(dep.key) for dep in ts.dependencies))
            for ts in tasks
            if str(ts.key).startswith("parallel_jobs-") and ts.run_spec is not None
        },
        "workers": len(dask_scheduler.workers),
    }


# -- results ------------------------------------------------------------------------------------


def test_iterarg_results_in_input_order(client: Client) -> None:
    assert parallelize(jobs.square, range(200), parallelizer=client) == [x * x for x in range(200)]
    pairs = [(1, 2), (2, 3), (3, 4)]
    assert parallelize(jobs.multiply, pairs, parallelizer=client) == [2, 6, 12]


def test_iterkwargs_args_and_kwargs(client: Client) -> None:
    columns = {"x": [1, 2, 3], "y": [4, 5, 6]}
    assert parallelize(jobs.multiply, iterkwargs=columns, parallelizer=client) == [4, 10, 18]
    rows = [{"x": 1, "y": 2}, {"x": 3, "y": 4}]
    assert parallelize(jobs.multiply, iterkwargs=rows, parallelizer=client) == [2, 12]
    results = parallelize(jobs.add_all, [1, 2], args=(10, 100), kwargs={"z": 1000},
                          parallelizer=client)
    assert results == [1111, 1112]
    assert parallelize(jobs.repeat, ["a", "b"], y=2, parallelizer=client) == [["a", "a"],
                                                                              ["b", "b"]]


def test_lambda_runs_on_the_cluster(client: Client) -> None:
    offset = 7
    assert parallelize(lambda x: x + offset, [1, 2], parallelizer=client) == [8, 9]


# -- failures -----------------------------------------------------------------------------------


def test_die_raises_the_original_exception(client: Client) -> None:
    with pytest.raises(ValueError, match="task value 3 is bad") as info:
        parallelize(jobs.fail_on, range(6), parallelizer=client)
    assert "raised by task 3" in " ".join(getattr(info.value, "__notes__", []))
    assert wait_until_released(client) == []


def test_die_false_records_every_failure(client: Client) -> None:
    P = Parallel(jobs.fail_on, range(6), die=False, parallelizer=client)
    with pytest.warns(RuntimeWarning, match="only 5 of 6 tasks succeeded"):
        P.run()
    assert returned(P) == [0, 1, 2, None, 4, 5]
    assert P.success == [True, True, True, False, True, True]
    assert isinstance(P.exceptions[3], ValueError)
    assert "fail_on" in P.task_results[3].traceback


def test_retries_run_a_failed_task_again(client: Client, tmp_path: Path) -> None:
    P = Parallel(jobs.fail_once, range(5), kwargs={"folder": str(tmp_path)}, retries=1,
                 parallelizer=client).run()
    assert P.results == list(range(5))
    assert (tmp_path / "runs").read_text() == "xx"
    assert [r.attempts for r in P.task_results] == [1, 1, 1, 2, 1]


def test_timeout_cancels_the_task_and_says_it_may_still_run(client: Client,
                                                            tmp_path: Path) -> None:
    release = tmp_path / "release"
    # 3 s against a 30 s block: the quick tasks keep a wide margin on a loaded machine.
    P = Parallel(wait_for_file, range(4), kwargs={"path": str(release)}, timeout=3.0,
                 die=False, parallelizer=client)
    try:
        with pytest.warns(RuntimeWarning, match="only 3 of 4"):
            P.run()
    finally:
        release.touch()
    error = P.exceptions[1]
    assert isinstance(error, TaskTimeoutError)
    assert error.stopped is False
    assert "may still be running" in str(error)
    assert returned(P) == [0, None, 2, 3]
    assert P.task_results[1].elapsed >= 3.0


def test_a_crashing_task_costs_only_itself(fragile_client: Client) -> None:
    pids = worker_pids(fragile_client)
    # A timeout gives each worker thread one task at a time, so no innocent task shares the
    # worker that dies (dask would blame every task on it).
    P = Parallel(jobs.die_on, range(6), bad=3, timeout=60, die=False,
                 parallelizer=fragile_client)
    with pytest.warns(RuntimeWarning, match="only 5 of 6"):
        P.run()
    assert returned(P) == [0, 1, 4, None, 16, 25]
    error = P.exceptions[3]
    assert isinstance(error, WorkerCrashedError)
    assert error.index == 3
    assert "KilledWorker" in str(error)
    assert P.task_results[3].pid in pids


def test_a_chunk_that_killed_its_worker_is_rerun_task_by_task(fragile_client: Client,
                                                              tmp_path: Path) -> None:
    # Task 1 kills its worker on its first run only: dask fails the whole chunk [0, 1, 2], whose
    # tasks then run again one by one, and all of them succeed.
    P = Parallel(jobs.fail_once, range(3), kwargs={"folder": str(tmp_path), "how": "crash",
                                                   "bad": 1},
                 chunksize=3, parallelizer=fragile_client).run()
    assert P.results == [0, 1, 2]
    assert (tmp_path / "runs").read_text() == "xx"


@pytest.mark.parametrize("func", [jobs.raise_base, jobs.raise_broken_str])
def test_a_base_exception_or_a_broken_str_fails_its_task_only(client: Client,
                                                              func: Any) -> None:
    # Issue 11 items 3 and 4: a task's SystemExit, or an exception whose __str__ raises, is
    # that task's failure, with the worker's traceback as its cause (issue 10).
    kwargs = {"kind": "SystemExit"} if func is jobs.raise_base else {}
    P = Parallel(func, range(4), kwargs=kwargs, die=False, parallelizer=client)
    with pytest.warns(RuntimeWarning, match="only 3 of 4"):
        P.run()
    assert P.success == [True, True, False, True]
    error = P.exceptions[2]
    assert type(error) is (SystemExit if func is jobs.raise_base else jobs.BrokenStrError)
    assert isinstance(error.__cause__, RemoteTraceback)
    assert func.__name__ in error.__cause__.text


@pytest.mark.timeout(120)
def test_a_task_that_kills_every_worker_it_meets_fails_alone() -> None:
    # Issue 11 item 6: dask's default allows 3 deaths per task, so the task kills both workers
    # of the cluster and the payload with them; each resend used to reset dask's count, and
    # the run died with "No valid workers found", die=False notwithstanding.
    cluster = LocalCluster(**CLUSTER)
    client = Client(cluster, set_as_default=False)
    try:
        P = Parallel(jobs.die_on, range(6), bad=3, die=False, parallelizer=client)
        with pytest.warns(RuntimeWarning, match="only 5 of 6"):
            P.run()
    finally:
        client.close()
        cluster.close()
    assert returned(P) == [0, 1, 4, None, 16, 25]
    error = P.exceptions[3]
    assert isinstance(error, WorkerCrashedError)
    assert error.index == 3
    assert "alone" in str(error)


@pytest.mark.timeout(60)
def test_timeout_counts_from_the_start_and_hung_tasks_keep_their_threads(
        client: Client) -> None:
    # Issue 11 item 5: two tasks overrun and hold both worker threads for 4 s. The quick tasks
    # must wait for a free thread rather than queue behind them and "time out" meanwhile.
    seconds = [4.0, 4.0] + [0.01] * 6
    P = Parallel(jobs.sleep_for, seconds, timeout=1.0, die=False, parallelizer=client)
    with pytest.warns(RuntimeWarning, match="only 6 of 8"):
        P.run()
    assert P.success == [False, False] + [True] * 6
    for error in P.exceptions[:2]:
        assert isinstance(error, TaskTimeoutError)
    assert min(r.started for r in P.task_results[2:]) >= max(
        r.started for r in P.task_results[:2]) + 3.0


# -- where tasks run ----------------------------------------------------------------------------


def test_task_results_carry_the_worker_pid_and_times(client: Client) -> None:
    pids = worker_pids(client)
    before = time.time()
    P = Parallel(jobs.sleep_for, [0.05] * 4, parallelizer=client).run()
    after = time.time()
    for result in P.task_results:
        assert result.success
        assert result.pid in pids
        assert result.pid != os.getpid()
        assert before <= result.started <= result.finished <= after
        assert result.elapsed >= 0.05


def test_callback_sees_every_task(client: Client) -> None:
    seen: dict[int, Any] = {}

    def callback(data: dict[str, Any]) -> None:
        seen[data["index"]] = data["outdict"]["result"]

    parallelize(jobs.square, range(30), callback=callback, parallelizer=client)
    assert seen == {x: x * x for x in range(30)}


def test_the_payload_is_scattered_once_and_the_client_left_open(client: Client) -> None:
    big = np.ones(1_000_000)  # 8 MB: one copy per task would show in each task's graph
    graphs: list[dict[str, Any]] = []

    def inspect(data: dict[str, Any]) -> None:
        if not graphs:
            graphs.append(client.run_on_scheduler(graph_of_run))

    results = parallelize(first_plus, range(20), big=big, chunksize=1, callback=inspect,
                          parallelizer=client)
    assert results == [x + 1.0 for x in range(20)]
    graph = graphs[0]
    (payload_key, replicas), = graph["payloads"].items()
    assert replicas == graph["workers"] == 2
    assert graph["chunks"]
    for size, dependencies in graph["chunks"].values():
        assert dependencies == [payload_key]
        assert size < 10_000
    assert wait_until_released(client) == []
    assert client.status == "running"
    assert parallelize(jobs.square, [3], parallelizer=client) == [9]


def test_progress_bar_and_background_run(client: Client,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    P = Parallel(jobs.square, range(5), progress=True, label="on dask", parallelizer=client)
    P.run_async()
    assert P.finalize().results == [0, 1, 4, 9, 16]
    drawn = capsys.readouterr().err
    assert "on dask" in drawn
    assert "5/5" in drawn


def test_dask_string_uses_the_current_client(client: Client) -> None:
    with client.as_current():
        P = Parallel(jobs.pid, range(8), parallelizer="dask").run()
    assert P.method == "dask"
    assert set(P.results) <= worker_pids(client)


def test_dask_string_without_a_client_starts_and_closes_a_cluster() -> None:
    with pytest.raises(ValueError, match="No global client"):
        get_client()
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    results = parallelize(jobs.pid, range(6), ncpus=2, parallelizer="dask")
    assert os.getpid() not in results
    assert {p.pid for p in me.children(recursive=True)} == before
    with pytest.raises(ValueError, match="task value 3 is bad"):
        parallelize(jobs.fail_on, range(6), ncpus=2, parallelizer="dask")
    assert {p.pid for p in me.children(recursive=True)} == before


# -- configuration ------------------------------------------------------------------------------


def test_globaldict_is_refused_with_dask() -> None:
    with pytest.raises(ValueError, match="globaldict cannot be shared across a dask cluster"):
        Parallel(jobs.count_in_globaldict, range(3), globaldict={}, parallelizer="dask")


def test_without_dask_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    P = Parallel(jobs.square, range(3), parallelizer="dask")
    with pytest.raises(ImportError, match=re.escape(INSTALL_HINT)):
        P.run()
    assert P.status == "not run"
