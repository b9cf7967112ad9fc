"""Per-task resources, the run summary and report, records, the timeline and the log: all from
real runs in real worker processes."""

from __future__ import annotations

import datetime
import io
import logging
import sys
import time

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
    # Lopsided bounds: CPU clocks tick in milliseconds, and a loaded machine stretches them;
    # a task that spun 0.2 s of CPU against one that slept 0.2 s is what tells them apart.
    assert busy.value / 2 <= busy.cpu_time <= busy.elapsed + 0.05
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
        {"index": 3, "type": "ValueError", "message": "task value 3 is bad", "attempts": 1,
         "arguments": "3"}
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
    by_index = {r.index: r for r in P.task_results}
    for row in slowest:
        assert row["cpu_time"] == by_index[row["index"]].cpu_time
        assert row["peak_rss"] == by_index[row["index"]].peak_rss > 0


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
                     "slowest tasks", "CPU time", "peak RSS", "failures", "ValueError",
                     "task value 3 is bad", "workers"):
        assert expected in text, expected
    for worker in mixed_run.summary()["workers"]:
        assert str(worker["pid"]) in text
    # Nothing crashed, so the worker table has no notes.
    assert "note" not in text
    # Microsecond tasks leave two workers mostly idle, but in a run this short that is start-up:
    # fewer, larger tasks would not help, and the report does not say they would.
    assert mixed_run.summary()["busy_efficiency"] < 0.5
    assert "larger tasks" not in text


def test_a_run_without_failures_reports_none() -> None:
    P = Parallel(jobs.square, range(3), parallelizer="serial").run()
    console = Console(file=io.StringIO(), width=120)
    P.report(console)
    file = console.file
    assert isinstance(file, io.StringIO)
    assert "failures" not in file.getvalue()


def rendered(P: Parallel) -> str:
    """The report of ``P`` as plain text, 120 columns wide."""
    console = Console(file=io.StringIO(), width=120)
    P.report(console)
    file = console.file
    assert isinstance(file, io.StringIO)
    return file.getvalue()


def test_the_failures_table_shows_each_failed_tasks_arguments_shortened() -> None:
    long = "a" * 200
    P = Parallel(jobs.fail_on, iterkwargs={"x": [long, 1], "bad": [long, 3]},
                 parallelizer="serial", die=False)
    with pytest.warns(RuntimeWarning, match="only 1 of 2"):
        P.run()
    (failure,) = P.summary()["failures"]
    assert failure["index"] == 0
    assert failure["arguments"].startswith("x='aaa")
    assert ", bad='aaa" in failure["arguments"]
    assert len(failure["arguments"]) <= 80
    text = rendered(P)
    start = text.index("failures")
    failures = text[start:text.index("workers", start)]
    assert "arguments" in failures
    assert "x='aaa" in failures


def test_the_report_advises_larger_tasks_when_workers_waited_between_them() -> None:
    # The parent takes 8 ms over each task's callback while a task takes microseconds: for
    # more than a second, the workers mostly wait for their next task.
    def slow_callback(data: dict[str, object]) -> None:
        time.sleep(0.008)

    P = Parallel(jobs.square, range(150), ncpus=2, chunksize=1, callback=slow_callback).run()
    info = P.summary()
    assert info["elapsed"] >= 1.2
    assert info["waiting_time"] / (info["elapsed"] * 2) >= 0.5
    text = rendered(P)
    assert "workers waited between their tasks for" in text
    assert "fewer, larger tasks" in text


def test_no_advice_when_the_idle_time_is_the_runs_tail() -> None:
    # One long task and six short ones on three workers: two workers idle for most of a run
    # longer than a second, but after their last task, which larger tasks would only lengthen.
    P = Parallel(jobs.sleep_for, [1.0] + [0.01] * 6, ncpus=3).run()
    info = P.summary()
    assert info["elapsed"] >= 1.0
    assert info["busy_efficiency"] < 0.5
    assert "larger tasks" not in rendered(P)


def notes_by_pid(P: Parallel) -> dict[int, str]:
    """Each worker's note, after checking that every note tells the truth of the records: a
    worker said to end was one whose last task crashed or timed out, each ended worker is
    replaced at most once, and only processes beyond the pool's size are replacements."""
    workers = P.summary()["workers"]
    notes = {w["pid"]: w["note"] for w in workers}
    last = {}
    for r in sorted(P.task_results, key=lambda r: r.started):
        last[r.pid] = r
    named = [note.split("replaced pid ")[1].split(";")[0] for note in notes.values()
             if "replaced pid " in note]
    assert len(named) == len(set(named))
    for pid in named:
        assert f"task {last[int(pid)].index} " in notes[int(pid)] + " "
    replacements = [pid for pid, note in notes.items() if "replaced" in note]
    assert len(replacements) == len(workers) - P.ncpus
    assert set(replacements) == {w["pid"] for w in workers[P.ncpus:]}
    return notes


def test_the_worker_table_says_which_worker_crashed_and_which_replaced_it() -> None:
    # Task 1 kills its worker early; the 38 tasks after it (20 ms each) keep a replacement busy.
    P = Parallel(jobs.die_on, range(40), bad=1, others=0.02, ncpus=2, chunksize=1, die=False)
    with pytest.warns(RuntimeWarning, match="only 39 of 40"):
        P.run()
    notes = notes_by_pid(P)
    dead = P.task_results[1].pid
    assert notes[dead] == "crashed in task 1"
    assert list(notes.values()).count(f"replaced pid {dead}") == 1
    assert sorted(notes.values()).count("") == 1
    text = rendered(P)
    assert "note" in text
    assert "crashed in task 1" in text
    assert f"replaced pid {dead}" in text


def test_the_worker_table_says_which_worker_was_stopped_for_a_timeout() -> None:
    P = Parallel(jobs.sleep_if, range(40), slow=1, seconds=30, others=0.05, ncpus=2,
                 chunksize=1, timeout=0.3, die=False)
    with pytest.warns(RuntimeWarning, match="only 39 of 40"):
        P.run()
    notes = notes_by_pid(P)
    stopped = P.task_results[1].pid
    assert notes[stopped] == "stopped: task 1 overran its timeout"
    assert list(notes.values()).count(f"replaced pid {stopped}") == 1


def test_a_crash_that_a_retry_hides_names_no_worker() -> None:
    # Task 20 kills its worker on both attempts. The first crash leaves no record (the retry's
    # replaces it), so the worker it killed, which ran earlier tasks, seems to have ended
    # quietly, and whichever process took its place can only say it replaced "an earlier worker".
    P = Parallel(jobs.die_on, range(40), bad=20, others=0.02, ncpus=2, chunksize=1, retries=1,
                 die=False)
    with pytest.warns(RuntimeWarning, match="only 39 of 40"):
        P.run()
    notes = notes_by_pid(P)
    assert notes[P.task_results[20].pid].endswith("crashed in task 20")
    assert "replaced an earlier worker" in " ".join(notes.values())


def test_a_thread_that_overran_its_timeout_is_not_said_to_be_stopped(tmp_path) -> None:
    # The last task (one thread runs them in order) hangs until the test creates ``go``; a
    # thread cannot be stopped, only abandoned, and every task ran in this very process, so no
    # note may say otherwise.
    here, go = tmp_path / "here", tmp_path / "go"
    here.touch()
    P = Parallel(jobs.wait_for_path, iterkwargs={"x": [0, 1, 2], "path": [here, here, go]},
                 parallelizer="thread", ncpus=1, timeout=0.1, die=False)
    try:
        with pytest.warns(RuntimeWarning, match="only 2 of 3"):
            P.run()
    finally:
        go.touch()
    assert [w["note"] for w in P.summary()["workers"]] == [""]
    assert "stopped: task" not in rendered(P)


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


def test_a_label_is_shown_as_written_never_read_as_markup() -> None:
    import io

    from rich.console import Console

    label = "fit [/] [bold]x [1/3]"
    P = Parallel(abs, [-1, 2], parallelizer="serial", label=label).run()
    console = Console(file=io.StringIO(), width=120)
    P.report(console)
    assert label in console.file.getvalue()  # type: ignore[attr-defined]
