"""imap: results while the run goes on, from inputs that may never end."""

from __future__ import annotations

import inspect
import io
import itertools
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import parallel_jobs as pj
from parallel_jobs.engine.progress import ProgressReporter
from parallel_jobs.engine.stream import held_limit
from tests.conftest import run_script
from tests.jobs import (
    die_on,
    executions,
    fail_on,
    fail_once,
    held_segments,
    logged_square,
    multiply,
    noisy_square,
    sleep_if,
    square,
    wait_unless,
)

pytestmark = pytest.mark.filterwarnings("ignore:only .* tasks succeeded:RuntimeWarning")


class Counted:
    """An endless input that counts how many items were read from it."""

    def __init__(self) -> None:
        self.read = 0

    def __iter__(self) -> Iterator[int]:
        for value in itertools.count():
            self.read = value + 1
            yield value


@pytest.mark.parametrize("parallelizer", ["serial", "thread", None, "fast"])
def test_ordered_results_are_those_of_run(parallelizer: Any) -> None:
    expected = pj.parallelize(multiply, range(50), kwargs={"y": 3}, parallelizer=parallelizer)
    assert list(pj.imap(multiply, range(50), kwargs={"y": 3}, ncpus=2,
                        parallelizer=parallelizer)) == expected
    assert list(pj.Parallel(multiply, range(50), kwargs={"y": 3}, ncpus=2,
                            parallelizer=parallelizer).imap()) == expected
    unordered = list(pj.imap(multiply, iter(range(50)), kwargs={"y": 3}, ncpus=2,
                             parallelizer=parallelizer, ordered=False))
    assert sorted(unordered) == expected


def test_iterkwargs_streams_as_dicts_or_as_columns() -> None:
    expected = [x * y for x, y in zip(range(20), range(20, 40), strict=True)]
    dicts = ({"x": x, "y": y} for x, y in zip(range(20), range(20, 40), strict=True))
    assert list(pj.imap(multiply, iterkwargs=dicts, ncpus=2)) == expected
    columns = {"x": iter(range(20)), "y": iter(range(20, 40))}
    assert list(pj.imap(multiply, iterkwargs=columns, parallelizer="serial")) == expected
    both = pj.imap(multiply, iter(range(20)), iterkwargs=({"y": y} for y in range(20, 40)),
                   parallelizer="thread")
    assert list(both) == expected
    with pytest.raises(TypeError, match=r"iterkwargs\[1\] must be a dict"):
        list(pj.imap(multiply, iterkwargs=iter([{"x": 1, "y": 2}, 3]), parallelizer="serial"))
    with pytest.raises(TypeError, match="iterarg must be an iterable"):
        pj.imap(square, 2.5)


def test_a_count_runs_the_function_that_many_times() -> None:
    assert list(pj.imap(os.getpid, 3, parallelizer="serial")) == [os.getpid()] * 3


@pytest.mark.timeout(60)
def test_the_first_result_comes_before_the_last_task_ends(tmp_path: Path) -> None:
    # Every task but the first waits for a file that the caller writes only once it has the
    # first result: a run that yielded nothing before its end would never end.
    release = str(tmp_path / "release")
    got = []
    for result in pj.imap(wait_unless, range(6), kwargs={"path": release}, ncpus=2,
                          chunksize=1):
        got.append(result)
        Path(release).touch()
    assert got == list(range(6))


@pytest.mark.timeout(60)
def test_unordered_yields_in_completion_order(tmp_path: Path) -> None:
    # Only task 3 runs at once; the others wait for a file the caller writes once it has a
    # result, so the first yielded is 3.
    release = str(tmp_path / "release")
    seen = []
    for record in pj.imap(wait_unless, range(4), kwargs={"path": release, "free": 3}, ncpus=4,
                          chunksize=1, ordered=False, records=True):
        seen.append(record.index)
        Path(release).touch()
    assert seen[0] == 3
    assert sorted(seen) == [0, 1, 2, 3]


def test_records_are_task_results() -> None:
    records = list(pj.imap(noisy_square, range(3), ncpus=2, capture=True, records=True))
    assert [(r.index, r.value, r.success, r.attempts) for r in records] == [
        (0, 0, True, 1), (1, 1, True, 1), (2, 4, True, 1)]
    assert [r.stdout for r in records] == [f"task {i}\n" for i in range(3)]
    assert all(r.pid != os.getpid() and r.finished >= r.started > 0 for r in records)


@pytest.mark.timeout(60)
def test_an_endless_input_is_read_only_as_tasks_are_sent() -> None:
    source = Counted()
    results = pj.imap(square, source, ncpus=2)
    taken = [next(results) for _ in range(30_000)]
    assert taken == [x * x for x in range(30_000)]
    # Never more than the held limit beyond what was taken, and one item read ahead.
    assert source.read <= 30_000 + held_limit(2) + 1
    results.close()
    read = source.read
    assert read < 10**8


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["break", "close"])
def test_stopping_early_stops_the_run_and_leaves_nothing(how: str) -> None:
    threads = threading.active_count()
    started = time.monotonic()
    # Task 2 sleeps 30 s: stopping must not wait for it.
    results = pj.imap(sleep_if, iter(range(100)), kwargs={"slow": 2}, ncpus=2, chunksize=1)
    if how == "break":
        for value in results:
            if value == 1:
                break
        del results  # the loop's generator is closed when nothing refers to it any more
    else:
        assert [next(results), next(results)] == [0, 1]
        results.close()
    assert time.monotonic() - started < 15
    assert threading.active_count() == threads
    assert held_segments(os.getpid()) == []
    # the autouse fixture checks that no worker process is left


@pytest.mark.timeout(60)
def test_die_raises_from_the_generator_and_die_false_yields_the_exception() -> None:
    with pytest.raises(ValueError, match="task value 3 is bad"):
        list(pj.imap(fail_on, iter(range(10)), ncpus=2))
    results = list(pj.imap(fail_on, iter(range(6)), ncpus=2, die=False))
    assert isinstance(results[3], ValueError)
    assert [r for i, r in enumerate(results) if i != 3] == [0, 1, 2, 4, 5]


@pytest.mark.timeout(60)
def test_timeouts_crashes_and_retries_work_as_in_run(tmp_path: Path) -> None:
    timed = list(pj.imap(sleep_if, iter(range(4)), kwargs={"slow": 1}, timeout=0.5, ncpus=2,
                         die=False))
    assert isinstance(timed[1], pj.TaskTimeoutError)
    assert [timed[i] for i in (0, 2, 3)] == [0, 2, 3]
    crashed = list(pj.imap(die_on, iter(range(5)), kwargs={"bad": 2}, ncpus=2, die=False))
    assert isinstance(crashed[2], pj.WorkerCrashedError)
    assert [crashed[i] for i in (0, 1, 3, 4)] == [0, 1, 9, 16]
    retried = list(pj.imap(fail_once, iter(range(5)), kwargs={"folder": str(tmp_path)},
                           retries=1, ncpus=2, records=True))
    assert [r.value for r in retried] == list(range(5))
    assert retried[3].attempts == 2


def test_the_callback_sees_each_task_and_may_stop_the_stream() -> None:
    seen: list[tuple[int, Any]] = []

    def callback(data: dict[str, Any]) -> None:
        seen.append((data["index"], data["njobs"]))
        data["stop"] = data["index"] >= 9

    results = list(pj.imap(square, itertools.count(), parallelizer="serial",
                           callback=callback))
    assert results == [x * x for x in range(10)]
    assert seen == [(i, None) for i in range(10)]


def test_progress_of_a_stream_shows_a_count_without_a_total() -> None:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=120)
    reporter = ProgressReporter("stream", console=console, clock=lambda: 2.0)
    reporter.start(None)
    reporter.update(7, 1)
    reporter.stop()
    line = console.file.getvalue()
    assert line.startswith("stream: 7 • 1 failed")
    assert "eta" not in line
    assert list(pj.imap(square, iter(range(5)), progress=True, ncpus=2)) == [0, 1, 4, 9, 16]


def test_a_checkpointed_stream_resumes_with_only_the_rest(tmp_path: Path) -> None:
    runs, db = str(tmp_path), str(tmp_path / "stream.sqlite")
    os.mkdir(os.path.join(runs, "runs"))
    runs = os.path.join(runs, "runs")
    first = pj.imap(logged_square, itertools.count(), kwargs={"folder": runs}, ncpus=2,
                    checkpoint=db, chunksize=1)
    assert [next(first) for _ in range(5)] == [0, 1, 4, 9, 16]
    first.close()
    done = {r.index for r in pj.load_checkpoint(db)}
    assert set(range(5)) <= done
    before = executions(runs)
    again = pj.imap(logged_square, iter(range(40)), kwargs={"folder": runs}, ncpus=2,
                    checkpoint=db)
    assert list(again) == [x * x for x in range(40)]
    after = executions(runs)
    assert {x: after[x] - before.get(x, 0) for x in range(40)} == {
        x: 0 if x in done else 1 for x in range(40)}


def test_imap_keeps_no_results_and_refuses_to_run_twice_at_once() -> None:
    parallel = pj.Parallel(square, range(4), parallelizer="serial")
    results = parallel.imap()
    assert next(results) == 0
    assert parallel.status == "running"
    with pytest.raises(RuntimeError, match="already running"):
        parallel.imap()
    assert list(results) == [1, 4, 9]
    assert parallel.status == "done"
    assert parallel.results is None
    assert parallel.times["elapsed"] > 0
    with pytest.raises(TypeError, match="ordered must be True or False"):
        parallel.imap(ordered="no")  # type: ignore[arg-type]


_MEMORY = """
import itertools, resource, sys
import parallel_jobs as pj
from tests.jobs import square

n = int(sys.argv[1]) if len(sys.argv) > 1 else {n}
count = 0
for value in pj.imap(square, itertools.islice(itertools.count(), n), ncpus=2):
    count += 1
assert count == n
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.timeout(180)
def test_parent_memory_stays_flat_however_long_the_stream(tmp_path: Path) -> None:
    small = int(run_script(tmp_path, _MEMORY.format(n=10_000), timeout=120)[-1])
    large = int(run_script(tmp_path, _MEMORY.format(n=300_000), timeout=170)[-1])
    assert large - small < 10 * 1024, (small, large)  # ru_maxrss is in KiB on Linux


_PARALLELIZE = inspect.signature(pj.parallelize).parameters


@pytest.mark.parametrize("option", sorted(set(_PARALLELIZE) - {"func", "iterarg", "iterkwargs",
                                                               "func_kwargs"}))
def test_imap_takes_every_option_of_parallelize(option: str) -> None:
    # An option that imap did not forward as one would reach square() as a keyword argument
    # and fail every task.
    options = {"parallelizer": "serial", option: _PARALLELIZE[option].default}
    if option == "parallelizer":
        options[option] = "serial"
    assert list(pj.imap(square, range(2), **options)) == [0, 1]


def test_imap_refuses_a_misspelt_option_before_running() -> None:
    with pytest.raises(TypeError, match="did you mean 'ncpus'"):
        pj.imap(square, range(2), ncpu=2)
