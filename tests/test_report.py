"""Per-task resources, the run summary and report, records, the timeline and the log: all from
real runs in real worker processes."""

from __future__ import annotations

import datetime
import io
import logging
import sys

import pytest
from rich.console import Console

from parallel_jobs import Parallel
from tests import jobs

MiB = 2**20


@pytest.fixture(scope="module")
def mixed_run() -> Parallel:
    """Eight tasks on two workers; task 3 fails."""
    P = Parallel(jobs.fail_on, range(8), ncpus=2, die=False, label="mixed")
    with pytest.warns(RuntimeWarning, match="only 7 of 8"):
        P.run()
    return P


def test_a_task_that_allocates_shows_it_and_its_neighbours_do_not(start_method: str) -> None:
    P = Parallel(jobs.allocate, [0, 0, 30, 0, 0], ncpus=1, start_method=start_method).run()
    peaks = [r.peak_rss for r in P.task_results]
    assert len({r.pid for r in P.task_results}) == 1
    base = peaks[1]
    assert base > 0
    assert peaks[2] >= base + 25 * MiB
    # The worker's high-water mark was reset after task 2, so later tasks show their own peak.
    assert peaks[3] <= base + 5 * MiB
    assert peaks[4] <= base + 5 * MiB


def test_cpu_time_is_the_tasks_own() -> None:
    busy = Parallel(jobs.spin_cpu, [0.2], ncpus=1).run().task_results[0]
    assert busy.value >= 0.2
    assert busy.value - 0.02 <= busy.cpu_time <= busy.elapsed + 0.02
    idle = Parallel(jobs.sleep_for, [0.2], ncpus=1).run().task_results[0]
    assert idle.elapsed >= 0.2
    assert idle.cpu_time < 0.05


def test_every_task_result_carries_its_times_process_and_attempts() -> None:
    before = datetime.datetime.now().timestamp()
    P = Parallel(jobs.sleep_for, [0.01] * 4, ncpus=2).run()
    after = datetime.datetime.now().timestamp()
    for r in P.task_results:
        assert before <= r.started < r.finished <= after
        assert r.finished - r.started == pytest.approx(r.elapsed, abs=1e-5)
        assert r.elapsed >= 0.01
        assert r.pid not in (0, jobs.pid())
        assert r.attempts == 1
        assert r.peak_rss > 0


def test_summary_counts_times_and_failures(mixed_run: Parallel) -> None:
    P = mixed_run
    info = P.summary()
    assert info["label"] == "mixed"
    assert info["method"] == "multiprocess"
    assert (info["njobs"], info["ncpus"]) == (8, 2)
    assert (info["succeeded"], info["failed"], info["not_run"]) == (7, 1, 0)
    assert info["elapsed"] == P.times["elapsed"]
    results = P.task_results
    assert info["busy_time"] == pytest.approx(sum(r.elapsed for r in results))
    assert info["cpu_time"] == pytest.approx(sum(r.cpu_time for r in results))
    assert info["busy_efficiency"] == pytest.approx(info["busy_time"] / (info["elapsed"] * 2))
    assert info["cpu_efficiency"] == pytest.approx(info["cpu_time"] / (info["elapsed"] * 2))
    assert info["peak_rss"] == max(r.peak_rss for r in results)
    assert info["peak_cpu"] == max(s.cpu for s in P.load_samples)
    assert info["peak_memory"] == max(s.memory for s in P.load_samples)
    assert info["failures"] == [
        {"index": 3, "type": "ValueError", "message": "task value 3 is bad", "attempts": 1}
    ]


def test_summary_gives_each_workers_busy_time(mixed_run: Parallel) -> None:
    info = mixed_run.summary()
    results = mixed_run.task_results
    assert {w["pid"] for w in info["workers"]} == {r.pid for r in results}
    assert sum(w["tasks"] for w in info["workers"]) == 8
    for worker in info["workers"]:
        own = [r for r in results if r.pid == worker["pid"]]
        assert worker["busy"] == pytest.approx(sum(r.elapsed for r in own))
        assert worker["cpu_time"] == pytest.approx(sum(r.cpu_time for r in own))
        assert worker["busy_fraction"] == pytest.approx(worker["busy"] / info["elapsed"])


def test_summary_lists_the_slowest_tasks_with_their_arguments() -> None:
    P = Parallel(jobs.sleep_for, [0.01, 0.15, 0.05, 0.001], ncpus=2,
                 parallelizer="thread").run()
    slowest = P.summary(slowest=3)["slowest"]
    assert [row["index"] for row in slowest] == [1, 2, 0]
    assert [row["arguments"] for row in slowest] == ["0.15", "0.05", "0.01"]
    assert slowest[0]["elapsed"] >= 0.15


def test_slowest_tasks_show_keyword_arguments_shortened() -> None:
    P = Parallel(jobs.repeat, iterkwargs={"x": ["a" * 200], "y": [2]},
                 parallelizer="serial").run()
    arguments = P.summary()["slowest"][0]["arguments"]
    assert arguments.startswith("x='aaa")
    assert arguments.endswith(", y=2")
    assert len(arguments) < 100


def test_report_prints_the_tables(mixed_run: Parallel) -> None:
    console = Console(file=io.StringIO(), width=120)
    mixed_run.report(console)
    file = console.file
    assert isinstance(file, io.StringIO)
    text = file.getvalue()
    for expected in ("mixed: 8 tasks on 2 workers", "7 of 8", "busy efficiency",
                     "slowest tasks", "failures", "ValueError", "task value 3 is bad",
                     "workers"):
        assert expected in text, expected
    for worker in mixed_run.summary()["workers"]:
        assert str(worker["pid"]) in text
    # Microsecond tasks keep two workers mostly idle, and the report says so.
    assert "workers were busy only" in text


def test_a_run_without_failures_reports_none() -> None:
    P = Parallel(jobs.square, range(3), parallelizer="serial").run()
    console = Console(file=io.StringIO(), width=120)
    P.report(console)
    file = console.file
    assert isinstance(file, io.StringIO)
    assert "failures" not in file.getvalue()


def test_reports_need_a_finished_run() -> None:
    P = Parallel(jobs.square, range(3), parallelizer="serial")
    for method in (P.summary, P.report, P.to_records, P.plot_timeline):
        with pytest.raises(RuntimeError, match="call run"):
            method()


def test_records_hold_one_row_per_task_for_pandas() -> None:
    pandas = pytest.importorskip("pandas")
    P = Parallel(jobs.fail_on, range(6), parallelizer="serial", chunksize=1)
    with pytest.raises(ValueError, match="task value 3 is bad"):
        P.run()
    records = P.to_records()
    assert [r["status"] for r in records] == ["succeeded"] * 3 + ["failed"] + ["not run"] * 2
    assert [r["value"] for r in records] == [0, 1, 2, None, None, None]
    assert records[3]["error"] == "ValueError"
    assert records[3]["message"] == "task value 3 is bad"
    assert isinstance(records[0]["started"], datetime.datetime)
    assert records[0]["finished"] >= records[0]["started"]
    assert records[5]["started"] is None
    assert records[5]["attempts"] == 0
    frame = pandas.DataFrame(records)
    assert len(frame) == 6
    assert list(frame.columns) == [
        "index", "status", "value", "error", "message", "started", "finished", "elapsed",
        "cpu_time", "peak_rss", "pid", "attempts",
    ]
    assert frame["elapsed"].dtype == float


def test_timeline_draws_each_worker_and_marks_failures(mixed_run: Parallel, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    path = tmp_path / "timeline.png"
    figure = mixed_run.plot_timeline(path)
    assert isinstance(figure, Figure)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tasks_ax, load_ax = figure.axes[:2]
    pids = {w["pid"] for w in mixed_run.summary()["workers"]}
    assert {t.get_text() for t in tasks_ax.get_yticklabels()} == {f"pid {p}" for p in pids}
    hatched = [c for c in tasks_ax.collections if c.get_hatch()]
    assert len(hatched) == 1  # the one lane holding the failed task
    assert len(tasks_ax.collections) == len(pids) + 1
    assert sum(len(c.get_paths()) for c in tasks_ax.collections) == 8  # one bar per task
    cpu_line, _ = load_ax.get_lines()
    assert len(cpu_line.get_xdata()) == len(mixed_run.load_samples)
    assert max(cpu_line.get_ydata()) == pytest.approx(100 * mixed_run.summary()["peak_cpu"])


def test_timeline_joins_bars_too_many_to_tell_apart() -> None:
    pytest.importorskip("matplotlib")
    P = Parallel(jobs.square, range(5000), parallelizer="serial").run()
    tasks_ax = P.plot_timeline().axes[0]
    bars = sum(len(c.get_paths()) for c in tasks_ax.collections)
    assert 0 < bars <= 2000


def test_timeline_without_a_path_saves_nothing(mixed_run: Parallel, tmp_path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    mixed_run.plot_timeline()
    assert list(tmp_path.iterdir()) == []


def test_timeline_without_matplotlib_says_how_to_install_it(
    mixed_run: Parallel, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in sys.modules if n.split(".")[0] == "matplotlib"] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match="needs matplotlib") as caught:
        mixed_run.plot_timeline()
    # The package is not published: the hint must name what pip can find.
    assert "pip install matplotlib" in str(caught.value)
    assert 'pip install ".[plot]"' in str(caught.value)
    assert "parallel-jobs[plot]" not in str(caught.value)


def test_the_log_tells_of_workers_started_replaced_and_stopped_and_of_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="parallel_jobs")
    P = Parallel(jobs.die_on, range(4), ncpus=2, retries=1, die=False)
    with pytest.warns(RuntimeWarning, match="only 3 of 4"):
        P.run()
    messages = [r.getMessage() for r in caplog.records if r.name == "parallel_jobs"]
    started = sum(m.startswith("started worker") for m in messages)
    died = sum("died" in m and "task 3" in m and "replacing it" in m for m in messages)
    stopped = sum(m.startswith("stopped worker") for m in messages)
    assert died == 2  # both runs of task 3 killed their worker
    assert any(m.startswith("task 3 failed (attempt 1); retrying") for m in messages)
    # Two workers at the start, and a new one whenever a task needs a dead one's place; each
    # ends in the log as dead or as stopped.
    assert started >= 2
    assert started == died + stopped


def test_the_log_tells_of_the_concurrent_futures_pool(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="parallel_jobs")
    Parallel(jobs.square, range(3), ncpus=2, parallelizer="fast").run()
    messages = [r.getMessage() for r in caplog.records if r.name == "parallel_jobs"]
    assert "started a concurrent.futures pool of 2 processes" in messages
    assert messages[-1] == "stopped the concurrent.futures pool"
