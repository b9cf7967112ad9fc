"""What a task sees and returns is what sciris 3.6 gives it: its own pristine copy of what tasks
share, the same seeded numbers, failures as results, captured output and a prompt stop.

Every process backend is tried under every start method, with chunks of one task and chunks of
several (the tasks of one chunk run in one worker, one after the other: where sharing would
show)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from parallel_jobs import Parallel, parallelize
from parallel_jobs.protocol.shm import MIN_SHARED_BYTES
from tests import fidelity_jobs as fj
from tests import jobs

np = pytest.importorskip("numpy")

PROCESS_BACKENDS = ["multiprocess", "multiprocessing", "fast"]
START_METHODS = ["fork", "spawn", "forkserver"]
CHUNKS = [1, 4]


@pytest.fixture(params=START_METHODS)
def method(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- a fresh copy per task ----------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("parallelizer", PROCESS_BACKENDS)
@pytest.mark.parametrize("chunksize", CHUNKS)
def test_a_simulator_that_mutates_the_shared_sim_gets_a_fresh_one_each_task(
    parallelizer: str, method: str, chunksize: int
) -> None:
    sim = fj.Sim()
    sims = parallelize(fj.run_sim, iterkwargs={"ind": range(8)}, kwargs={"sim": sim}, ncpus=2,
                       parallelizer=parallelizer, start_method=method, chunksize=chunksize)
    assert [s.pars["rand_seed"] for s in sims] == list(range(8))
    assert [s.results for s in sims] == [[i] for i in range(8)]
    assert len({id(s) for s in sims}) == 8
    assert sim.results is None
    assert sim.pars["rand_seed"] == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("parallelizer", PROCESS_BACKENDS)
@pytest.mark.parametrize("size", ["small", "large"])
def test_each_task_may_write_to_its_own_view_of_a_shared_array(
    parallelizer: str, method: str, size: str
) -> None:
    # The same task must behave the same whatever the array's size and the start method:
    # writable, and its writes its own (a large one is a copy-on-write mapping, not a copy).
    n = 16 if size == "small" else 2 * MIN_SHARED_BYTES // 8
    data = np.zeros(n)
    log: list[int] = []
    results = parallelize(fj.append_and_count, range(6), args=(log,), kwargs={"data": data},
                          ncpus=2, parallelizer=parallelizer, start_method=method, chunksize=3)
    assert results == [(x, 1, 0.0) for x in range(6)]
    assert log == []
    assert data[0] == 0.0


@pytest.mark.timeout(30)
@pytest.mark.parametrize("parallelizer", PROCESS_BACKENDS)
def test_a_callable_that_carries_state_is_copied_for_each_task(parallelizer: str) -> None:
    counter = fj.Counter()
    assert parallelize(counter, range(6), ncpus=2, parallelizer=parallelizer,
                       chunksize=3) == [1] * 6
    assert counter.calls == 0


@pytest.mark.timeout(30)
@pytest.mark.parametrize("parallelizer", PROCESS_BACKENDS)
def test_tasks_handed_one_object_each_get_their_own(parallelizer: str) -> None:
    item: dict[str, int] = {}
    assert parallelize(fj.mutate_item, [item] * 6, ncpus=2, parallelizer=parallelizer,
                       chunksize=3) == [1] * 6
    same = [{"item": item}] * 6
    assert parallelize(fj.mutate_item, iterkwargs=same, ncpus=2, parallelizer=parallelizer,
                       chunksize=3) == [1] * 6
    assert item == {}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("parallelizer", PROCESS_BACKENDS)
def test_results_that_are_one_object_come_back_as_separate_objects(parallelizer: str) -> None:
    results = parallelize(fj.return_shared, range(6), ncpus=2, parallelizer=parallelizer,
                          chunksize=3)
    assert len({id(r) for r in results}) == 6
    results[0]["calls"].append(1)
    assert results[1] == {"calls": []}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("parallelizer", ["serial", "thread"])
def test_serial_and_thread_share_the_objects_as_sciris_does(parallelizer: str) -> None:
    # sciris pickles nothing here (its '-copy' variants deep-copy): mutations are seen.
    log: list[int] = []
    results = parallelize(fj.append_and_count, range(3), args=(log,), ncpus=1,
                          parallelizer=parallelizer)
    assert [count for _, count, _ in results] == [1, 2, 3]
    assert log == [0, 1, 2]


# -- failures as results -------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("parallelizer", [*PROCESS_BACKENDS, "serial", "thread"])
def test_with_die_false_a_failed_tasks_result_is_its_exception(parallelizer: str) -> None:
    with pytest.warns(RuntimeWarning, match="2 of 3"):
        P = Parallel(_fail_on_one, [0, 1, 2], die=False, ncpus=2,
                     parallelizer=parallelizer).run()
    assert P.results is not None
    assert P.exceptions is not None
    assert P.success is not None
    assert isinstance(P.results[1], ValueError)
    assert P.results[1] is P.exceptions[1]
    assert P.success == [True, False, True]
    assert (P.results[0], P.results[2]) == (0, 2)


def _fail_on_one(x: int) -> int:
    if x == 1:
        msg = "one is bad"
        raise ValueError(msg)
    return x


# -- seeded reproducibility ----------------------------------------------------------------------


def sciris_numbers(func: Any, n: int, seed: int) -> list[Any]:
    """What sciris 3.6 gives ``func`` in task i after ``np.random.seed(seed)``: one draw of
    entropy from the parent's RNG, then NumPy's global RNG seeded per task from
    ``SeedSequence(entropy).spawn(n)``; Python's random gets the same seed from parallel_jobs."""
    import random

    np.random.seed(seed)
    entropy = np.random.randint(2**63, dtype=np.int64)
    out = []
    for sequence in np.random.SeedSequence(entropy).spawn(n):
        task_seed = int(sequence.generate_state(1)[0])
        np.random.seed(task_seed)
        random.seed(task_seed)
        out.append(func(None))
    return out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("parallelizer", PROCESS_BACKENDS)
@pytest.mark.parametrize("chunksize", [None, 1, 5])
def test_a_seeded_caller_gets_the_numbers_sciris_gives(
    parallelizer: str, method: str, chunksize: int | None
) -> None:
    expected = sciris_numbers(fj.draws, 12, seed=1)
    np.random.seed(1)
    got = parallelize(fj.draws, 12, ncpus=2, parallelizer=parallelizer, start_method=method,
                      chunksize=chunksize)
    assert got == expected


def test_the_numbers_are_those_of_sciris_itself() -> None:
    sc = pytest.importorskip("sciris")
    np.random.seed(7)
    theirs = sc.parallelize(fj.draws_numpy_only, 6, ncpus=2)
    np.random.seed(7)
    assert parallelize(fj.draws_numpy_only, 6, ncpus=2) == theirs
    # And the caller's own RNG is left where sciris leaves it: one draw further on.
    np.random.seed(7)
    sc.parallelize(fj.draws_numpy_only, 2, ncpus=2)
    after_theirs = np.random.random()
    np.random.seed(7)
    parallelize(fj.draws_numpy_only, 2, ncpus=2)
    assert np.random.random() == after_theirs


@pytest.mark.timeout(60)
def test_seeds_do_not_depend_on_ncpus_retries_or_kept_workers(tmp_path: Any) -> None:
    expected = sciris_numbers(fj.draws, 9, seed=3)
    for ncpus in (1, 2):
        for method in ("fork", "spawn"):
            np.random.seed(3)  # spawn's second pass reuses the kept workers of the first
            assert parallelize(fj.draws, 9, ncpus=ncpus, start_method=method) == expected
    np.random.seed(3)
    assert parallelize(fj.draws, 9, ncpus=2, retries=2, chunksize=2) == expected


@pytest.mark.timeout(30)
def test_tasks_that_do_not_draw_shift_no_one_elses_numbers() -> None:
    expected = [v if x % 3 == 0 else None for x, v in
                enumerate(sciris_numbers(fj.draws_numpy_only, 9, seed=5))]
    np.random.seed(5)
    assert parallelize(fj.draws_sometimes, range(9), ncpus=2, chunksize=9) == expected


@pytest.mark.timeout(30)
def test_a_random_function_bound_under_another_name_is_seeded_too() -> None:
    expected = sciris_numbers(fj.draws_numpy_only, 6, seed=2)
    np.random.seed(2)
    assert parallelize(fj.draws_early, 6, ncpus=2, chunksize=3) == expected


@pytest.mark.timeout(30)
def test_unseeded_runs_differ_and_tasks_differ() -> None:
    first = parallelize(fj.draws, 6, ncpus=2)
    second = parallelize(fj.draws, 6, ncpus=2)
    assert first != second
    assert len(set(first)) == 6


@pytest.mark.timeout(30)
@pytest.mark.parametrize("parallelizer", ["serial", "thread"])
def test_serial_and_thread_share_the_callers_generator_as_sciris_does(parallelizer: str) -> None:
    np.random.seed(4)
    expected = [float(np.random.random()) for _ in range(3)]
    np.random.seed(4)
    assert parallelize(fj.draws_numpy_only, 3, ncpus=1, parallelizer=parallelizer) == expected


def test_the_workers_seeding_hooks_are_gone_after_a_run() -> None:
    import random

    before = (np.random.random, random.random)
    parallelize(fj.draws, 2, ncpus=1, parallelizer="serial")
    parallelize(fj.draws, 4, ncpus=2)
    assert (np.random.random, random.random) == before


# -- a prompt stop -------------------------------------------------------------------------------


def _stop_at(index: int, stamps: list[float]) -> Any:
    def callback(data: dict[str, Any]) -> None:
        if data["index"] == index:
            stamps.append(time.time())
            data["stop"] = True

    return callback


@pytest.mark.timeout(60)
def test_a_callback_stop_skips_every_task_after_it_in_a_serial_run() -> None:
    stamps: list[float] = []
    P = Parallel(abs, range(10_000), parallelizer="serial", callback=_stop_at(50, stamps)).run()
    assert P.skipped is not None
    assert P.results is not None
    assert sum(P.skipped) == 9_949
    assert P.results[:51] == list(range(51))
    assert P.results[51:] == [None] * 9_949


@pytest.mark.timeout(60)
@pytest.mark.parametrize("parallelizer", ["multiprocess", "thread"])
def test_no_task_starts_after_a_callback_stops_the_run(parallelizer: str) -> None:
    stamps: list[float] = []

    def stop_then_stamp(data: dict[str, Any]) -> None:
        if data["index"] == 50:
            P.stop()  # sets the workers' stop flags before it returns
            stamps.append(time.time())

    P = Parallel(abs, range(20_000), ncpus=2, parallelizer=parallelizer,
                 callback=stop_then_stamp)
    P.run()
    assert P.skipped is not None
    assert len(stamps) == 1
    ran = [r for r in P.task_results if not P.skipped[r.index]]
    assert sum(P.skipped) > 10_000
    assert max(r.started for r in ran) <= stamps[0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("parallelizer", ["multiprocess", "thread"])
def test_a_callbacks_stop_reaches_workers_between_tasks(parallelizer: str) -> None:
    # data['stop'] takes effect once the callback returns: by then each worker may have begun
    # one more task, never more (tasks of 2 ms against the microseconds that takes).
    stamps: list[float] = []
    P = Parallel(jobs.sleep_for, [0.002] * 400, ncpus=2, parallelizer=parallelizer,
                 chunksize=50, callback=_stop_at(10, stamps)).run()
    assert P.skipped is not None
    assert len(stamps) == 1
    late = [r for r in P.task_results if not P.skipped[r.index] and r.started > stamps[0]]
    assert len(late) <= 2
    assert sum(P.skipped) > 200  # most of the run never started


# -- captured output -----------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("parallelizer", ["multiprocess", "fast", "serial"])
def test_capture_keeps_what_each_task_printed(
    parallelizer: str, capsys: pytest.CaptureFixture[str]
) -> None:
    P = Parallel(fj.say, range(4), ncpus=2, parallelizer=parallelizer, capture=True,
                 chunksize=2).run()
    assert P.stdout == [f"task {x} says hello\n" for x in range(4)]
    assert [r.stderr for r in P.task_results] == [f"task {x} warns\n" for x in range(4)]
    assert [r.stdout for r in P.task_results] == P.stdout
    if parallelizer == "serial":
        assert capsys.readouterr().out == ""


@pytest.mark.timeout(30)
def test_capture_keeps_the_output_of_a_task_that_failed() -> None:
    with pytest.warns(RuntimeWarning):
        P = Parallel(fj.fail_noisily, range(2), ncpus=2, capture=True, die=False).run()
    assert P.stdout == ["about to fail 0\n", "about to fail 1\n"]


def test_without_capture_stdout_is_empty_for_each_task_as_in_sciris() -> None:
    P = Parallel(abs, range(2), parallelizer="serial").run()
    assert P.stdout == ["", ""]


# -- small things sciris code relies on -----------------------------------------------------------


def test_lbkwargs_read_as_attributes_as_sciris_objdict() -> None:
    assert Parallel(abs, 10, lbkwargs={"maxcpu": 0.7}).lbkwargs.maxcpu == 0.7


def test_a_label_given_to_parallelize_goes_to_the_function_as_in_sciris() -> None:
    def labelled(x: int, label: str) -> str:
        return f"{label}{x}"

    assert parallelize(labelled, [1, 2], parallelizer="serial", label="run") == ["run1", "run2"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("parallelizer", PROCESS_BACKENDS)
def test_a_result_the_parent_cannot_unpickle_fails_its_own_task_only(parallelizer: str) -> None:
    from parallel_jobs import SerializationError

    with pytest.warns(RuntimeWarning, match="5 of 6"):
        P = Parallel(fj.refused_on, range(6), ncpus=2, parallelizer=parallelizer, chunksize=3,
                     die=False).run()
    assert P.success == [True, True, False, True, True, True]
    assert P.exceptions is not None
    error = P.exceptions[2]
    assert isinstance(error, SerializationError)
    assert "task 2" in str(error)
    assert "cannot live in" in str(error)
    assert P.results is not None
    assert [P.results[i] for i in (0, 1, 3, 4, 5)] == [[0], [1], [3], [4], [5]]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("parallelizer", ["multiprocess", "fast"])
def test_with_a_progress_bar_what_workers_print_comes_out_prefixed_with_its_task(
    parallelizer: str, capfd: pytest.CaptureFixture[str]
) -> None:
    P = Parallel(fj.say, range(3), ncpus=2, parallelizer=parallelizer, progress=True).run()
    out, err = capfd.readouterr()
    assert sorted(out.splitlines()) == [f"[task {x}] task {x} says hello" for x in range(3)]
    assert all(f"[task {x}] task {x} warns" in err for x in range(3))
    assert P.stdout == ["", "", ""]  # shown, not kept: that is capture's job


@pytest.mark.timeout(60)
def test_without_a_progress_bar_workers_print_as_they_go(
    capfd: pytest.CaptureFixture[str]
) -> None:
    parallelize(fj.say, range(2), ncpus=2)
    out, _ = capfd.readouterr()
    assert sorted(out.splitlines()) == ["task 0 says hello", "task 1 says hello"]
