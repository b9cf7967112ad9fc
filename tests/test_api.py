"""``parallelize`` and ``Parallel`` behave as ``sciris.parallelize`` documents, on real processes.

The six examples of the sciris documentation come first, written as they are there.
"""

from __future__ import annotations

import inspect
import itertools
import math
import multiprocessing as mp
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

import parallel_jobs as pj
from parallel_jobs import Parallel, parallelize
from tests import jobs
from tests.conftest import returned

sc = pj  # the examples read as in the sciris documentation


# -- the sciris examples ------------------------------------------------------------------------
# Their functions are at module level, as in a script: example 5 pickles them with the stdlib.


def f(x: Any, y: Any = None) -> Any:
    return x * x if y is None else x * y


def rnd() -> float:
    return float(np.random.random())


def myfunc(i: int, x: float, y: float) -> list[Any]:
    xy = [x + i * np.random.randn(100), y + i * np.random.randn(100)]
    return xy


def f_repeat(x: Any, y: int) -> list[Any]:
    return [x] * y


def dask_map(task: Any, argslist: list[Any]) -> list[Any]:
    import dask

    queued = [dask.delayed(task)(args) for args in argslist]
    return list(dask.compute(*queued))


def test_example_1_simple_usage() -> None:
    results = sc.parallelize(f, [1, 2, 3])
    assert results == [1, 4, 9]


def test_example_2_embarrassingly_parallel() -> None:
    results = sc.parallelize(rnd, 10, ncpus=4)
    assert len(results) == 10
    assert all(0 <= r < 1 for r in results)
    assert len(set(results)) == 10  # every worker draws its own numbers


def test_example_3_three_equivalent_ways() -> None:
    results1 = sc.parallelize(func=f, iterarg=[(1, 2), (2, 3), (3, 4)])
    results2 = sc.parallelize(func=f, iterkwargs={"x": [1, 2, 3], "y": [2, 3, 4]})
    results3 = sc.parallelize(
        func=f, iterkwargs=[{"x": 1, "y": 2}, {"x": 2, "y": 3}, {"x": 3, "y": 4}]
    )
    assert results1 == results2 == results3
    assert results1 == [2, 6, 12]


@pytest.mark.timeout(30)
def test_example_4_non_iterated_arguments_and_load_balancing() -> None:
    xylist1 = sc.parallelize(
        myfunc, iterarg=range(5), kwargs={"x": 3, "y": 8}, maxcpu=0.8, interval=0.2
    )
    xylist2 = sc.parallelize(myfunc, x=5, y=10, iterarg=[0, 1, 2],
                             parallelizer="multiprocessing")
    for xylist, njobs, centre in [(xylist1, 5, (3, 8)), (xylist2, 3, (5, 10))]:
        assert len(xylist) == njobs
        for i, xy in enumerate(xylist):
            assert len(xy) == 2
            assert [a.shape for a in xy] == [(100,), (100,)]
            if i == 0:  # run 0 has no noise: its points sit exactly on (x, y)
                assert np.all(xy[0] == centre[0])
                assert np.all(xy[1] == centre[1])


def test_example_5_custom_parallelization_function() -> None:
    pool = mp.Pool(processes=2)
    try:
        results = sc.parallelize(f_repeat, iterkwargs=dict(x=[1, 2, 3], y=[4, 5, 6]),
                                 parallelizer=pool.map)
    finally:
        pool.close()
        pool.join()
    assert results == [[1] * 4, [2] * 5, [3] * 6]


def test_example_6_dask() -> None:
    results = sc.parallelize(f_repeat, iterkwargs=dict(x=[1, 2, 3], y=[4, 5, 6]),
                             parallelizer=dask_map)
    assert results == [[1] * 4, [2] * 5, [3] * 6]


# -- iterarg, iterkwargs, args, kwargs -----------------------------------------------------------


def _gen() -> Any:
    yield from (1, 2, 3)


@pytest.mark.parametrize(
    "iterarg",
    [[1, 2, 3], (1, 2, 3), range(1, 4), np.array([1, 2, 3]), _gen()],
    ids=["list", "tuple", "range", "ndarray", "generator"],
)
def test_iterarg_of_any_iterable(iterarg: Any) -> None:
    assert parallelize(jobs.square, iterarg, ncpus=2) == [1, 4, 9]


def test_iterarg_of_any_iterable_is_taken_in_iteration_order() -> None:
    # As sciris: a string gives its characters, a dict its keys.
    assert parallelize(str.upper, "ab", serial=True) == ["A", "B"]
    assert parallelize(str.upper, {"x": 1, "y": 2}, serial=True) == ["X", "Y"]


@pytest.mark.parametrize("parallelizer", ["serial", "multiprocess"])
def test_pandas_series_are_taken_by_position_not_label(parallelizer: str) -> None:
    pd = pytest.importorskip("pandas")
    values = pd.Series([1, 2, 3], index=[5, 6, 7])
    columns = {"x": values, "y": pd.Series([4, 5, 6], index=["a", "b", "c"])}
    seen: list[Any] = []
    # The callback rebuilds each task's arguments one by one, by index.
    results = parallelize(jobs.multiply, iterkwargs=columns, parallelizer=parallelizer,
                          callback=lambda data: seen.append(data["kwargs"]))
    assert results == [4, 10, 18]
    assert sorted(kw["x"] for kw in seen) == [1, 2, 3]
    assert parallelize(jobs.square, values, parallelizer=parallelizer,
                       callback=lambda data: seen.append(data["args"])) == [1, 4, 9]


def test_iterarg_results_keep_input_order_whatever_the_finishing_order() -> None:
    delays = [0.2, 0.0, 0.1, 0.0]
    assert parallelize(jobs.sleep_for, delays, ncpus=2) == delays


def test_iterarg_of_many_tasks_keeps_input_order() -> None:
    assert parallelize(jobs.square, range(5000)) == [x * x for x in range(5000)]


def test_iterarg_int_runs_the_function_that_many_times_without_argument() -> None:
    assert parallelize(jobs.no_args, 4) == [42] * 4
    assert parallelize(jobs.no_args, np.int64(2)) == [42] * 2


def test_iterarg_tuple_item_is_unpacked_other_items_are_not() -> None:
    assert parallelize(jobs.multiply, [(2, 3), (4, 5)]) == [6, 20]
    assert parallelize(len, [[1, 2, 3], "ab"]) == [3, 2]


def test_iterkwargs_dict_of_iterables_and_list_of_dicts() -> None:
    columns = {"x": np.array([1, 2]), "y": (y for y in [3, 4])}
    assert parallelize(jobs.multiply, iterkwargs=columns) == [3, 8]
    assert parallelize(jobs.multiply, iterkwargs=[{"x": 1, "y": 3}, {"y": 4, "x": 2}]) == [3, 8]


def test_iterkwargs_together_with_iterarg() -> None:
    assert parallelize(jobs.repeat, iterarg=["a", "b"], iterkwargs={"y": [1, 2]}) == [
        ["a"], ["b", "b"]]
    assert parallelize(jobs.repeat, iterarg=["a", "b"], iterkwargs=[{"y": 2}, {"y": 1}]) == [
        ["a", "a"], ["b"]]


def test_args_and_kwargs_are_the_same_for_every_task() -> None:
    results = parallelize(jobs.add_all, iterarg=[1, 2], args=[10, 100], kwargs={"a": 1000})
    assert results == [1111, 1112]
    assert parallelize(jobs.add_all, iterarg=[1, 2], args=10) == [11, 12]


def test_func_kwargs_merge_into_kwargs_and_per_task_values_win() -> None:
    captured = parallelize(
        dict, iterkwargs=[{"a": "task0"}, {"b": "task1"}], kwargs={"a": "kwargs", "b": "kwargs",
                                                                   "c": "kwargs"}, c="func_kwargs"
    )
    assert captured == [
        {"a": "task0", "b": "kwargs", "c": "func_kwargs"},
        {"a": "kwargs", "b": "task1", "c": "func_kwargs"},
    ]


# -- ncpus -----------------------------------------------------------------------------------------


def test_ncpus_none_means_every_usable_cpu() -> None:
    assert Parallel(jobs.square, range(1000)).ncpus == pj.cpu_count()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_ncpus_none_follows_cpu_affinity() -> None:
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        assert pj.cpu_count() == 1
        P = Parallel(jobs.square, range(10))
    finally:
        os.sched_setaffinity(0, allowed)
    assert P.ncpus == 1
    assert P.run().results == [x * x for x in range(10)]


@pytest.mark.parametrize(("fraction", "share"), [(0.5, 0.5), (0.01, 0.01), (0.99, 0.99)])
def test_ncpus_fraction_rounds_up(fraction: float, share: float) -> None:
    assert Parallel(jobs.square, range(1000), ncpus=fraction).ncpus == math.ceil(
        pj.cpu_count() * share)


def test_ncpus_is_capped_at_the_number_of_tasks() -> None:
    assert Parallel(jobs.square, range(3), ncpus=16).ncpus == 3
    assert Parallel(jobs.square, range(30), ncpus=16).ncpus == 16


def test_ncpus_is_the_number_of_workers() -> None:
    seen: list[int] = []
    parallelize(jobs.value_and_pid, range(6), ncpus=1,
                callback=lambda data: seen.append(data["outdict"]["result"][1]))
    assert len(set(seen)) == 1


# -- globaldict ------------------------------------------------------------------------------------


def _count_children() -> int:
    keep = ("forkserver", "resource_tracker", "semaphore_tracker")
    count = 0
    for child in psutil.Process().children():
        try:
            count += not any(k in " ".join(child.cmdline()) for k in keep)
        except psutil.Error:
            continue
    return count


def test_globaldict_is_shared_by_every_task(start_method: str) -> None:
    children: list[int] = []
    P = Parallel(jobs.count_in_globaldict, [1, 2, 3], ncpus=1, globaldict={"seed": 0},
                 start_method=start_method, callback=lambda _: children.append(_count_children()))
    P.run()
    # Each task sees the writes of the tasks before it.
    assert P.results == [2, 3, 4]
    assert P.globaldict == {"seed": 0, 1: 10, 2: 20, 3: 30}
    assert children == [2, 2, 2]  # the worker, and the manager that serves the dict


@pytest.mark.parametrize("parallelizer", ["serial", "thread"])
def test_globaldict_in_process_is_a_plain_shared_dict(parallelizer: str) -> None:
    shared: dict[Any, Any] = {}
    P = Parallel(jobs.count_in_globaldict, [1, 2, 3], ncpus=1, globaldict=shared,
                 parallelizer=parallelizer).run()
    assert P.results == [1, 2, 3]
    assert P.globaldict == {1: 10, 2: 20, 3: 30}


def test_no_globaldict_no_manager_process() -> None:
    children: list[int] = []
    parallelize(jobs.square, range(3), ncpus=1,
                callback=lambda _: children.append(_count_children()))
    assert children == [1, 1, 1]


def test_no_globaldict_keyword_when_not_given() -> None:
    assert parallelize(jobs.count_in_globaldict, [1], globaldict={}) == [1]
    with pytest.raises(TypeError, match="globaldict"):
        parallelize(jobs.count_in_globaldict, [1])


# -- callback --------------------------------------------------------------------------------------


def test_callback_is_called_once_per_task_with_what_happened() -> None:
    calls: list[dict[str, Any]] = []
    with pytest.warns(RuntimeWarning, match="2 of 3"):
        parallelize(jobs.fail_on, [1, 3, 5], kwargs={"bad": 3}, ncpus=2, die=False,
                    callback=calls.append)
    by_index = {data["index"]: data for data in calls}
    assert sorted(by_index) == [0, 1, 2]
    assert len(calls) == 3
    for index, value in enumerate([1, 3, 5]):
        data = by_index[index]
        assert data["njobs"] == 3
        assert data["args"] == (value,)
        assert data["kwargs"] == {"bad": 3}
        assert data["globaldict"] is None
        outdict = data["outdict"]
        assert set(outdict) == {"result", "success", "skipped", "exception", "stdout", "elapsed"}
        assert outdict["elapsed"] >= 0
        if value == 3:
            # sciris: "store the exception as the result"
            assert outdict["result"] is outdict["exception"]
            assert outdict["success"] is False
            assert isinstance(outdict["exception"], ValueError)
        else:
            assert outdict["result"] == value
            assert outdict["success"] is True
            assert outdict["exception"] is None


def test_callback_stop_with_automatic_chunks_skips_the_rest() -> None:
    def stop(data: dict[str, Any]) -> None:
        data["stop"] = True

    P = Parallel(jobs.square, range(1000), ncpus=2, callback=stop).run()
    assert P.success is not None
    assert P.skipped is not None
    # Only the chunks already in flight ran; no chunk holds more than an eighth of the tasks.
    assert 1 <= sum(P.success) <= 250
    assert sum(P.skipped) == 1000 - sum(P.success)
    assert P.results is not None
    assert all(P.results[i] == i * i for i in range(1000) if P.success[i])


def test_callback_sees_the_globaldict() -> None:
    sizes: list[int] = []
    parallelize(jobs.count_in_globaldict, [1, 2], ncpus=1, globaldict={},
                callback=lambda data: sizes.append(len(data["globaldict"])))
    assert sizes == [1, 2]


@pytest.mark.parametrize("parallelizer", ["multiprocess", "serial", "thread"])
def test_callback_stop_starts_no_further_tasks(parallelizer: str) -> None:
    def stop_after_first(data: dict[str, Any]) -> None:
        data["stop"] = True

    P = Parallel(jobs.square, range(50), ncpus=1, chunksize=1, parallelizer=parallelizer,
                 callback=stop_after_first).run()
    assert returned(P) == [0] + [None] * 49
    assert P.success == [True] + [False] * 49
    assert P.skipped == [False] + [True] * 49
    assert P.status == "done"


# -- progress, load limits -------------------------------------------------------------------------


def test_progress_bar_is_drawn_to_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    assert Parallel(jobs.square, [1, 2, 3], progress=True, label="squares").run().results == [
        1, 4, 9]
    captured = capfd.readouterr()
    assert "squares" in captured.err  # the bar's format belongs to test_progress.py
    assert captured.out == ""


def test_no_progress_draws_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    parallelize(jobs.square, [1, 2, 3])
    assert capfd.readouterr() == ("", "")


def _overlaps(records: list[pj.TaskResult]) -> bool:
    spans = sorted((r.started, r.finished) for r in records)
    return any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))


@pytest.mark.timeout(20)
def test_maxmem_below_current_use_holds_tasks_back() -> None:
    # Memory use is always above 0.01%: the gate refuses every task while another runs.
    P = Parallel(jobs.sleep_for, [0.05] * 4, ncpus=2, maxmem=0.0001, interval=0.01).run()
    assert P.results == [0.05] * 4
    assert not _overlaps(P.task_results)


@pytest.mark.timeout(20)
def test_maxcpu_percentage_above_use_lets_tasks_run_together() -> None:
    P = Parallel(jobs.sleep_for, [0.5] * 2, ncpus=2, maxcpu=100, maxmem=100, interval=0.01).run()
    assert (P.maxcpu, P.maxmem) == (1.0, 1.0)
    assert _overlaps(P.task_results)


@pytest.mark.timeout(20)
def test_interval_spaces_task_starts() -> None:
    # Without the gate both tasks would start together; with it, the second waits out the
    # interval (less what the first took to reach its worker, hence the margin).
    P = Parallel(jobs.sleep_for, [0.6] * 2, ncpus=2, maxcpu=1.0, interval=0.4).run()
    first, second = sorted(r.started for r in P.task_results)
    assert second - first >= 0.25


# -- die -------------------------------------------------------------------------------------------


@pytest.mark.timeout(15)
def test_die_stops_promptly_and_raises_the_tasks_own_exception() -> None:
    P = Parallel(jobs.fail_first_else_sleep, range(4), ncpus=2)
    with pytest.raises(KeyError, match="task 0 fails at once") as info:
        P.run()
    assert type(info.value) is KeyError
    cause = info.value.__cause__
    assert isinstance(cause, pj.RemoteTraceback)
    assert "Task 0 raised this in its worker" in str(cause)
    assert "fail_first_else_sleep" in str(cause)
    if sys.version_info >= (3, 11):
        assert info.value.__notes__ == [
            "parallel_jobs: raised by task 0 (0); pass die=False to run every task regardless"]
    assert P.status == "done"
    assert P.success is not None
    assert P.success[0] is False
    assert P.skipped is not None
    assert sum(P.skipped) >= 2  # at most one task was started beside the failing one


@pytest.mark.parametrize("parallelizer", ["multiprocess", "fast"])
def test_die_raises_the_tasks_own_type_even_if_it_cannot_be_rebuilt_from_args(
    parallelizer: str, start_method: str
) -> None:
    with pytest.raises(jobs.CodedError, match="error 7: by design") as info:
        parallelize(jobs.raise_coded, [7], parallelizer=parallelizer, start_method=start_method)
    assert info.value.code == 7
    assert "raise_coded" in str(info.value.__cause__)


def test_die_false_runs_every_task_and_warns_once() -> None:
    with jobs.record_warnings() as caught:
        P = Parallel(jobs.fail_on, [3, 1, 3, 2], ncpus=2, die=False).run()
    assert [str(w.message) for w in caught if w.category is RuntimeWarning] == [
        "only 2 of 4 tasks succeeded; see the exceptions attribute (or task_results) for what "
        "failed"]
    assert len(caught) == 1
    assert returned(P) == [None, 1, None, 2]
    assert P.success == [False, True, False, True]
    assert P.exceptions is not None
    assert [type(e) for e in P.exceptions] == [ValueError, type(None), ValueError, type(None)]
    assert str(P.exceptions[0]) == "task value 3 is bad"


@pytest.mark.parametrize(
    "run",
    [
        lambda: parallelize(jobs.fail_on, [3, 1], die=False),
        lambda: Parallel(jobs.fail_on, [3, 1], die=False).run(),
        lambda: Parallel(jobs.fail_on, [3, 1], die=False, parallelizer="thread-async").run(),
        lambda: Parallel(jobs.fail_on, [3, 1], die=False).run_async().finalize(),
    ],
    ids=["parallelize", "run", "async-parallelizer", "run_async"],
)
def test_die_false_warning_points_at_the_callers_line(run: Any) -> None:
    with jobs.record_warnings() as record:
        run()
    assert [str(w.message) for w in record] == [
        "only 1 of 2 tasks succeeded; see the exceptions attribute (or task_results) for what "
        "failed"]
    assert record[0].category is RuntimeWarning
    assert record[0].filename == __file__


@pytest.mark.timeout(30)
@pytest.mark.parametrize("parallelizer", ["multiprocess", "fast"])
def test_a_worker_sent_sigterm_dies_of_it(parallelizer: str, start_method: str) -> None:
    # The run turns SIGTERM into KeyboardInterrupt in the caller; forked workers must not
    # inherit that, or a terminated worker would raise inside its task (and 'fast' would ship
    # the KeyboardInterrupt back to the caller as the task's outcome).
    P = Parallel(jobs.terminate_self, [0], die=False, parallelizer=parallelizer,
                 start_method=start_method)
    with pytest.warns(RuntimeWarning, match="only 0 of 1"):
        P.run()
    assert P.exceptions is not None
    error = P.exceptions[0]
    assert isinstance(error, pj.WorkerCrashedError)
    if parallelizer == "multiprocess":
        assert error.signal == "SIGTERM"


def test_die_false_with_every_task_succeeding_does_not_warn() -> None:
    P = Parallel(jobs.fail_on, [1, 2], die=False).run()
    assert P.success == [True, True]
    assert P.exceptions == [None, None]


def test_die_false_parallelize_returns_the_exception_as_a_failed_tasks_result() -> None:
    with pytest.warns(RuntimeWarning, match="only 1 of 2 tasks succeeded"):
        results = parallelize(jobs.fail_on, [3, 4], die=False)
    assert isinstance(results[0], ValueError)
    assert results[1] == 4


# -- the Parallel object ---------------------------------------------------------------------------


def test_parallel_attributes_after_a_run() -> None:
    P = Parallel(jobs.square, [1, 2, 3], ncpus=2, label="squares")
    assert (P.njobs, P.ncpus, P.method, P.label) == (3, 2, "multiprocess", "squares")
    assert (P.status, P.running, P.ready) == ("not run", False, False)
    assert P.results is None
    assert P.times == {"started": None, "finished": None, "elapsed": None, "jobs": None}
    assert P.run() is P
    assert (P.status, P.running, P.ready) == ("done", False, True)
    assert P.results == [1, 4, 9]
    assert P.success == [True, True, True]
    assert P.exceptions == [None, None, None]
    assert set(P.times) == {"started", "finished", "elapsed", "jobs"}
    assert P.times.started <= P.times.finished
    assert P.times.elapsed == P.times["elapsed"] > 0
    assert (P.times.finished - P.times.started).total_seconds() == pytest.approx(
        P.times.elapsed, abs=0.05)
    assert len(P.times.jobs) == 3
    assert all(t >= 0 for t in P.times.jobs)
    assert [r.value for r in P.task_results] == [1, 4, 9]
    with pytest.raises(AttributeError):
        _ = P.times.nonexistent


def test_parallel_repr_is_short() -> None:
    P = Parallel(jobs.square, [1, 2], ncpus=2, label="sq")
    assert repr(P) == "Parallel('sq', jobs=2, cpus=2, method='multiprocess', status='not run')"
    P.run()
    assert repr(P) == "Parallel('sq', jobs=2, cpus=2, method='multiprocess', status='done')"
    assert repr(Parallel(jobs.square, [1], serial=True)) == (
        "Parallel(jobs=1, cpus=1, method='serial', status='not run')")


def test_parallel_disp_prints_configuration_and_outcome(
    capsys: pytest.CaptureFixture[str],
) -> None:
    P = Parallel(jobs.square, [1, 2], label="sq", serial=True)
    P.disp()
    before = capsys.readouterr().out
    assert "njobs" in before
    assert "'serial'" in before
    assert "succeeded" not in before
    P.run().disp()
    after = capsys.readouterr().out
    assert "2 of 2" in after
    assert "'done'" in after


def test_parallel_runs_twice() -> None:
    P = Parallel(jobs.value_and_pid, [1, 2], ncpus=2)
    first = P.run().results
    started = P.times.started
    second = P.run().results
    assert first is not None
    assert second is not None
    assert [v for v, _ in first] == [v for v, _ in second] == [1, 2]
    assert {p for _, p in first}.isdisjoint({p for _, p in second})  # fresh workers each run
    assert P.times.started > started


def test_reset_forgets_the_run() -> None:
    P = Parallel(jobs.square, [1, 2]).run()
    P.reset()
    assert (P.status, P.results, P.success, P.task_results) == ("not run", None, None, [])


@pytest.mark.timeout(30)
@pytest.mark.parametrize("parallelizer", ["multiprocess", "thread"])
def test_run_async_runs_in_the_background(tmp_path: Path, parallelizer: str) -> None:
    gate = tmp_path / "go"
    P = Parallel(jobs.wait_for_path, [1, 2, 3], path=str(gate), ncpus=2,
                 parallelizer=parallelizer)
    assert P.run_async() is P
    # The tasks cannot finish until the file exists: the run is observably in progress.
    assert (P.status, P.running, P.ready, P.results) == ("running", True, False, None)
    with pytest.raises(RuntimeError, match="already running"):
        P.run()
    with pytest.raises(RuntimeError, match="running"):
        P.reset()
    gate.touch()
    assert P.finalize() is P
    assert (P.status, P.running, P.ready, P.results) == ("done", False, True, [1, 2, 3])
    assert P.finalize() is P  # finalizing twice is harmless


@pytest.mark.timeout(30)
def test_stop_starts_no_further_tasks_of_a_background_run(tmp_path: Path) -> None:
    P = Parallel(jobs.announce_then_wait, list(range(10)), folder=str(tmp_path), ncpus=2,
                 chunksize=1)
    P.run_async()
    for x in (0, 1):  # both workers are busy with a task that waits for "go"
        jobs.wait_for_path(None, str(tmp_path / f"started-{x}"))
    P.stop()
    (tmp_path / "go").touch()
    P.finalize()
    assert returned(P) == [0, 1] + [None] * 8
    assert P.skipped == [False] * 2 + [True] * 8
    assert not (tmp_path / "started-2").exists()


@pytest.mark.timeout(30)
def test_monitor_follows_a_background_run(tmp_path: Path,
                                          capfd: pytest.CaptureFixture[str]) -> None:
    gate = tmp_path / "go"
    gate.touch()
    P = Parallel(jobs.wait_for_path, [1, 2], path=str(gate), ncpus=2, label="watched")
    P.run_async()
    P.monitor(interval=0.01)
    # The run has ended; its results wait for finalize(), as with sciris.
    assert (P.status, P.running, P.ready, P.results) == ("done", False, True, None)
    assert P.finalize().results == [1, 2]
    assert "watched" in capfd.readouterr().err


@pytest.mark.timeout(15)
def test_finalize_raises_a_background_runs_error() -> None:
    P = Parallel(jobs.fail_first_else_sleep, range(3), ncpus=2).run_async()
    with pytest.raises(KeyError, match="task 0 fails at once"):
        P.finalize()
    assert P.status == "done"
    assert P.success is not None
    assert P.success[0] is False


def test_async_parallelizer_runs_through_run_async() -> None:
    P = Parallel(jobs.square, [1, 2], parallelizer="thread-async")
    assert P.run().results == [1, 4]
    assert P.status == "done"


# -- sciris' attributes and close() (issue 10) ---------------------------------------------------


def test_sciris_attributes_are_kept() -> None:
    globaldict = {"n": 0}
    P = Parallel(jobs.add_all, [1, 2], None, [10], {"y": 1}, globaldict=globaldict,
                 parallelizer="thread-async", z=2)
    assert P.iterarg == [1, 2]
    assert P.iterkwargs is None
    assert P.args == [10]
    assert P.kwargs == {"y": 1, "z": 2}
    assert P.inputdict is globaldict
    assert (P.serial, P.capture, P.is_async, P.embarrassing) == (False, False, True, False)
    assert P.lbkwargs == {"maxcpu": None, "maxmem": None, "interval": None}
    assert Parallel(jobs.no_args, 3, serial=True).embarrassing


def test_sciris_attributes_have_sciris_values() -> None:
    sc = pytest.importorskip("sciris")
    arguments: dict[str, Any] = {
        "func": jobs.add_all, "iterarg": [1, 2], "iterkwargs": [{"a": 1}, {"a": 2}],
        "args": [10], "kwargs": {"y": 1}, "serial": True, "lbkwargs": {"maxcpu": 0.9},
        "capture": True, "z": 2,
    }
    theirs, ours = sc.Parallel(**arguments), Parallel(**arguments)
    for name in ("iterarg", "iterkwargs", "args", "kwargs", "inputdict", "serial", "capture",
                 "is_async", "njobs", "ncpus", "label", "die", "progress", "start_method",
                 "parallelizer", "callback"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.lbkwargs == dict(theirs.lbkwargs)
    assert bool(ours.embarrassing) == bool(theirs.embarrassing)
    integer = {"func": jobs.no_args, "iterarg": 3, "serial": True}
    assert Parallel(**integer).embarrassing == sc.Parallel(**integer).embarrassing


@pytest.mark.timeout(30)
def test_close_stops_a_background_run_and_gathers_it(tmp_path: Path) -> None:
    P = Parallel(jobs.report_then_wait, range(6), folder=str(tmp_path), ncpus=2, chunksize=1)
    P.run_async()
    pids = []
    for x in (2, 3):
        jobs.wait_for_path(None, str(tmp_path / f"running-{x}"))
        pids.append(int((tmp_path / f"running-{x}").read_text()))
    P.close()
    assert (P.status, P.running) == ("done", False)
    assert P.results is not None
    assert P.results[:2] == [0, 1]
    assert P.results[2:] == [None] * 4
    # Stopped while running or never started: both are tasks that did not finish.
    assert P.skipped == [False] * 2 + [True] * 4
    assert P.success == [True] * 2 + [False] * 4
    # The two tasks sleeping for 30 s were stopped, not waited for.
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
                   for pid in pids)
    P.close()  # again: nothing left to do
    assert P.finalize() is P


def test_close_without_a_background_run_does_nothing() -> None:
    P = Parallel(jobs.square, [1, 2], ncpus=2)
    P.close()
    assert P.status == "not run"
    P.run().close()
    assert (P.status, P.results) == ("done", [1, 4])


@pytest.mark.timeout(30)
def test_close_after_a_background_run_ended_gathers_it() -> None:
    P = Parallel(jobs.square, [1, 2], ncpus=2).run_async()
    assert P._background is not None
    P._background.thread.join()
    P.close()
    assert (P.status, P.results) == ("done", [1, 4])


@pytest.mark.timeout(30)
def test_close_raises_the_error_of_a_background_run_that_ended_with_one() -> None:
    P = Parallel(jobs.fail_first_else_sleep, range(3), ncpus=2).run_async()
    assert P._background is not None
    P._background.thread.join()
    with pytest.raises(KeyError, match="task 0 fails at once"):
        P.close()


# -- stdout ---------------------------------------------------------------------------------------


def test_stdout_is_none_before_a_run_and_empty_strings_without_capture() -> None:
    P = Parallel(jobs.square, [1, 2, 3], ncpus=2)
    assert P.stdout is None
    P.run()
    assert P.stdout == ["", "", ""]
    P.reset()
    assert P.stdout is None


# -- lbkwargs gates as maxcpu/maxmem/interval do -------------------------------------------------


@pytest.mark.timeout(20)
def test_lbkwargs_maxmem_holds_tasks_back() -> None:
    P = Parallel(jobs.sleep_for, [0.05] * 4, ncpus=2,
                 lbkwargs={"maxmem": 0.0001, "interval": 0.01}).run()
    assert P.results == [0.05] * 4
    assert not _overlaps(P.task_results)


@pytest.mark.timeout(20)
def test_lbkwargs_of_parallelize_hold_tasks_back() -> None:
    spans = parallelize(jobs.sleep_span, [0.05] * 4, ncpus=2,
                        lbkwargs={"maxmem": 0.0001, "interval": 0.01})
    spans.sort()
    assert all(earlier[1] <= later[0] for earlier, later in itertools.pairwise(spans))


@pytest.mark.timeout(20)
def test_lbkwargs_interval_spaces_task_starts() -> None:
    P = Parallel(jobs.sleep_for, [0.6] * 2, ncpus=2, lbkwargs={"maxcpu": 1.0, "interval": 0.4})
    P.run()
    first, second = sorted(r.started for r in P.task_results)
    assert second - first >= 0.25


# -- times is a real mapping ---------------------------------------------------------------------


def test_times_copied_as_a_dict_has_every_value() -> None:
    P = Parallel(jobs.square, [1, 2, 3], ncpus=2).run()
    jobs_times = P.times["jobs"]
    assert len(jobs_times) == 3
    expected = {"started": P.times.started, "finished": P.times.finished,
                "elapsed": P.times.elapsed, "jobs": jobs_times}
    assert dict(P.times) == expected
    assert {**P.times} == expected
    assert P.times == expected
    assert expected == P.times
    assert list(P.times.keys()) == ["started", "finished", "elapsed", "jobs"]
    assert dict(P.times.items()) == expected
    assert list(P.times.values()) == list(expected.values())
    assert P.times.copy() == expected
    assert P.times.jobs == jobs_times
    assert pickle.loads(pickle.dumps(P.times)) == expected


def test_times_copied_before_jobs_is_read_has_jobs_too() -> None:
    # The case the lazy dict got wrong: nothing read jobs before the copy.
    P = Parallel(jobs.square, [1, 2, 3], ncpus=2).run()
    copied = dict(P.times)
    assert copied["jobs"] is not None
    assert len(copied["jobs"]) == 3
    P = Parallel(jobs.square, [1, 2, 3], ncpus=2).run()
    assert len({**P.times}["jobs"]) == 3


def test_times_without_records_has_no_jobs() -> None:
    P = Parallel(jobs.square, [1, 2], ncpus=2, keep_records=False).run()
    assert dict(P.times)["jobs"] is None
    assert P.times.elapsed > 0


# -- huge timeouts run (issue 11 item 13) --------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("parallelizer", ["multiprocess", "fast", "thread", "serial"])
@pytest.mark.parametrize("timeout", [math.inf, 1e12, 30 * 86400.0, 24 * 86400.0])
def test_a_huge_timeout_runs(parallelizer: str, timeout: float) -> None:
    # Tasks long enough that the run waits on busy workers with their deadline in view.
    assert parallelize(jobs.sleep_for, [0.2] * 4, ncpus=2, chunksize=1,
                       parallelizer=parallelizer, timeout=timeout) == [0.2] * 4


def test_disp_shows_a_markup_label_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    label = "[b]fit[/][1/3]:smile:"  # no space: the title may wrap at one
    Parallel(jobs.square, [1, 2], label=label, serial=True).run().disp()
    out = capsys.readouterr().out
    assert out.count(label) == 2  # the title, and the label row
    assert "😄" not in out


# -- options set after construction ----------------------------------------------------------


def test_an_option_set_after_construction_is_validated_and_used() -> None:
    P = Parallel(jobs.fail_on, range(5), parallelizer="serial")
    P.die = False
    P.ncpus = 0.5
    assert P.ncpus == max(1, math.ceil(pj.cpu_count() * 0.5))
    with pytest.raises(TypeError, match="die must be True or False, not 'no'"):
        P.die = "no"
    with pytest.raises(TypeError, match="ncpus must be a number, not str"):
        P.ncpus = "two"
    assert P.die is False  # a refused value leaves the option as it was
    with pytest.warns(RuntimeWarning, match="only 4 of 5"):
        P.run()
    assert isinstance(P.results[3], ValueError)


def test_an_option_set_after_construction_is_checked_with_the_others() -> None:
    P = Parallel(jobs.square, [1, 2], parallelizer="thread")
    with pytest.raises(ValueError, match="capture=True cannot be used with the 'thread'"):
        P.capture = True
    P.maxcpu = 80
    assert (P.maxcpu, P.lbkwargs.maxcpu) == (0.8, 80)
    P.parallelizer = "serial"
    assert P.method == "serial"
    assert P.run().results == [1, 4]


def test_option_names_are_the_options_of_parallel() -> None:
    names = [name for name in inspect.signature(Parallel).parameters
             if name not in ("func", "func_kwargs")]
    assert list(pj.config.OPTION_NAMES) == names
    parameters = inspect.signature(Parallel).parameters
    assert {name: parameters[name].default for name in pj.config.DEFAULTS} == pj.config.DEFAULTS
