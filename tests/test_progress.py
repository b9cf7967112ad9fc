"""The progress bar: rendered into an in-memory console with an injected clock, so every redraw
can be counted; plus real runs that draw on stderr."""

from __future__ import annotations

import importlib.util
import io

import pytest
from rich.console import Console

from parallel_jobs import Parallel
from parallel_jobs.engine.monitor import LoadSample
from parallel_jobs.engine.progress import NullReporter, ProgressReporter, make_reporter
from tests import jobs


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def terminal() -> Console:
    return Console(file=io.StringIO(), force_terminal=True, width=100)


def plain() -> Console:
    return Console(file=io.StringIO(), width=100)


def output(console: Console) -> str:
    file = console.file
    assert isinstance(file, io.StringIO)
    return file.getvalue()


def test_a_terminal_redraws_at_most_ten_times_a_second_whatever_the_task_rate() -> None:
    clock, console = Clock(), terminal()
    reporter = make_reporter(True, "fast run", console=console, clock=clock)
    assert isinstance(reporter, ProgressReporter)
    assert reporter.live
    reporter.start(10_000)
    start = clock.now
    for done in range(1, 10_001):
        clock.now = start + done / 10_000
        reporter.update(done, done // 1000, LoadSample(0.0, 0.5, 0.25, 0))
    reporter.stop()
    # A first frame at the start, ten in the simulated second, and the final one.
    assert 10 <= reporter.draws <= 12
    text = output(console)
    assert text.count("fast run") <= reporter.draws + 2
    final = text.rsplit("fast run", 1)[1]
    for field in ("10000/10000", "10 failed", "10,000.0 tasks/s", "elapsed 00:01", "eta 00:00",
                  "cpu 50% mem 25%"):
        assert field in final, field


def test_the_bar_shows_eta_and_rate_while_running() -> None:
    clock, console = Clock(), terminal()
    reporter = make_reporter(True, "half", console=console, clock=clock)
    reporter.start(100)
    clock.now += 10
    reporter.update(50, 0)
    last = output(console).rsplit("half", 1)[1]
    assert "50/100" in last
    assert "5.0 tasks/s" in last
    assert "elapsed 00:10" in last
    assert "eta 00:10" in last
    assert "cpu" not in last  # no load known yet
    reporter.stop()


def test_slow_tasks_show_seconds_per_task() -> None:
    clock, console = Clock(), terminal()
    reporter = make_reporter(True, "slow", console=console, clock=clock)
    reporter.start(10)
    clock.now += 30
    reporter.update(2, 0)
    reporter.stop()
    assert "15.0 s/task" in output(console)


def test_a_label_with_brackets_is_shown_as_written() -> None:
    clock, console = Clock(), terminal()
    reporter = make_reporter(True, "[red]sweep[/red]", console=console, clock=clock)
    reporter.start(1)
    reporter.update(1, 0)
    reporter.stop()
    assert "[red]sweep[/red]" in output(console)


def test_plain_output_prints_a_line_every_few_seconds_and_a_final_one() -> None:
    clock, console = Clock(), plain()
    reporter = make_reporter(True, "batch", console=console, clock=clock)
    assert isinstance(reporter, ProgressReporter)
    assert not reporter.live
    reporter.start(120)
    start = clock.now
    for done in range(1, 121):
        clock.now = start + done * 0.1  # 12 simulated seconds
        reporter.update(done - 1, 0)
    assert reporter.wake_in() == pytest.approx(10.0 + 5.0 - 12.0)
    reporter.update(120, 1)
    reporter.stop()
    lines = output(console).splitlines()
    # A line 5 s in, another at 10 s, and the final one.
    assert len(lines) == 3
    assert all(line.startswith("batch: ") for line in lines)
    assert "\x1b" not in output(console)
    assert lines[0].startswith("batch: 49/120")
    assert lines[1].startswith("batch: 99/120")
    assert lines[-1].startswith("batch: 120/120 • 1 failed")


def test_plain_output_does_not_repeat_the_final_line() -> None:
    clock, console = Clock(), plain()
    reporter = make_reporter(True, "short", console=console, clock=clock)
    reporter.start(2)
    clock.now += 0.5
    reporter.update(2, 0)
    reporter.stop()
    assert output(console).splitlines() == [
        "short: 2/2 • 0 failed • 4.0 tasks/s • elapsed 00:00 • eta 00:00"
    ]


def test_a_notebook_console_does_not_break_the_reporter() -> None:
    console = Console(file=io.StringIO(), force_jupyter=True, width=100)
    reporter = make_reporter(True, "notebook", console=console, clock=Clock())
    assert isinstance(reporter, ProgressReporter)
    # rich redraws a cell through ipywidgets; without it, plain lines are the safe choice.
    assert reporter.live == (importlib.util.find_spec("ipywidgets") is not None)
    reporter.start(3)
    reporter.update(3, 0)
    reporter.stop()
    assert reporter.draws >= 1


def test_no_progress_means_a_reporter_that_draws_nothing() -> None:
    reporter = make_reporter(False, "quiet")
    assert type(reporter) is NullReporter
    assert reporter.wake_in() is None


def test_progress_false_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    Parallel(jobs.square, range(4), ncpus=2, progress=False, label="quiet").run()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ""


def test_progress_true_reports_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    P = Parallel(jobs.fail_on, range(5), ncpus=2, progress=True, label="loud", die=False)
    with pytest.warns(RuntimeWarning, match="only 4 of 5"):
        P.run()
    captured = capsys.readouterr()
    assert captured.out == ""
    last = captured.err.splitlines()[-1]
    assert last.startswith("loud: 5/5 • 1 failed")
    assert "cpu " in last
    assert "mem " in last


def test_monitor_shows_the_bar_of_a_background_run(capsys: pytest.CaptureFixture[str]) -> None:
    P = Parallel(jobs.sleep_for, [0.05] * 4, ncpus=2, parallelizer="thread-async", label="bg")
    P.run_async()
    P.monitor()
    P.finalize()
    assert P.results == [0.05] * 4
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("bg: 4/4 • 0 failed")
    assert "cpu " in last


def test_monitor_adds_no_second_bar_when_the_run_draws_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    P = Parallel(jobs.square, range(4), ncpus=2, parallelizer="thread-async", progress=True,
                 label="once")
    P.run_async()
    P.monitor()
    P.finalize()
    final_lines = [line for line in capsys.readouterr().err.splitlines() if "4/4" in line]
    assert len(final_lines) == 1


def test_monitor_after_the_run_ended_shows_it_done(capsys: pytest.CaptureFixture[str]) -> None:
    P = Parallel(jobs.square, range(3), ncpus=2, parallelizer="thread-async", label="late")
    P.run_async()
    assert P._background is not None
    P._background.thread.join()
    P.monitor()
    P.finalize()
    assert capsys.readouterr().err.splitlines()[-1].startswith("late: 3/3 • 0 failed")


def test_a_run_shorter_than_a_redraw_prints_one_final_frame_without_a_live_display() -> None:
    clock, console = Clock(), terminal()
    reporter = make_reporter(True, "quick [run]", console=console, clock=clock)
    reporter.start(5)
    clock.now += 0.05  # half a redraw interval: no live frame is due yet
    reporter.update(5, 1)
    reporter.stop()
    text = output(console)
    assert reporter.draws == 1
    assert text.count("quick [run]") == 1
    assert "5/5" in text
    assert "1 failed" in text
    assert "\x1b[?25l" not in text  # a live display would have hidden the cursor


# -- a label is text, never markup (issue 11 item 14) -------------------------------------------

MARKUP_LABELS = ["fit [1/3]", "[bold]fit[/bold] [/]", "a [/] b [1/3] :smile: \\[x]"]


@pytest.mark.parametrize("label", MARKUP_LABELS)
@pytest.mark.parametrize("console", [terminal, plain], ids=["terminal", "plain"])
@pytest.mark.parametrize("redraws", [0, 3], ids=["final-frame-only", "live-redraws"])
def test_a_label_is_never_read_as_markup(label: str, console: object, redraws: int) -> None:
    clock, out = Clock(), console()  # type: ignore[operator]
    reporter = make_reporter(True, label, console=out, clock=clock)
    reporter.start(4)
    for done in range(1, redraws + 1):
        clock.now += 6.0  # past both redraw intervals: a live frame or a plain line each time
        reporter.update(done, 0)
    reporter.update(4, 0)
    reporter.stop()
    text = output(out)
    assert label in text
    assert "😄" not in text  # nor is :smile: read as an emoji code
    if console is plain:
        lines = text.splitlines()
        assert len(lines) == 1 + redraws
        assert all(line.startswith(f"{label}: ") for line in lines)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("label", MARKUP_LABELS)
def test_a_run_with_a_markup_label_keeps_its_results(
    label: str, capsys: pytest.CaptureFixture[str],
) -> None:
    # stderr is captured, so not a terminal: the plain lines, where the label was read as markup.
    P = Parallel(jobs.square, range(6), ncpus=2, progress=True, label=label).run()
    assert P.results == [0, 1, 4, 9, 16, 25]
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"{label}: 6/6")
