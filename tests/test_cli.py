"""The ``parallel-jobs`` command line, run for real as ``python -m parallel_jobs`` in a fresh
interpreter: its help, its version, its usage errors and the demo itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from parallel_jobs import __version__

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, pythonpath: Path | None = None, timeout: float = 50.0,
        ) -> subprocess.CompletedProcess[str]:
    """Run ``python -m parallel_jobs ARGS`` from the checkout, ``pythonpath`` first on the path."""
    paths = [str(ROOT)] if pythonpath is None else [str(pythonpath), str(ROOT)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "COLUMNS": "120"}
    return subprocess.run([sys.executable, "-m", "parallel_jobs", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=env, check=False)


def test_help_is_plain_text() -> None:
    done = cli("--help")
    assert done.returncode == 0, done.stderr
    assert "``" not in done.stdout
    assert "Run a demonstration of parallel_jobs" in done.stdout
    assert "--version" in done.stdout


def test_demo_help_names_its_options_and_their_defaults() -> None:
    done = cli("demo", "--help")
    assert done.returncode == 0, done.stderr
    assert "``" not in done.stdout
    for expected in ("--jobs", "default 16", "--steps", "default 3,000,000", "--timeline"):
        assert expected in done.stdout, expected


def test_version_prints_the_package_version() -> None:
    done = cli("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"parallel-jobs {__version__}\n"


@pytest.mark.parametrize(("option", "value"),
                         [("--jobs", "0"), ("--jobs", "-3"), ("--steps", "0"), ("--jobs", "many")])
def test_a_count_below_one_is_a_usage_error_naming_the_option(option: str, value: str) -> None:
    done = cli("demo", option, value)
    assert done.returncode == 2
    assert f"argument {option}: must be a positive integer, not '{value}'" in done.stderr
    assert "usage: parallel-jobs demo" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


@pytest.mark.timeout(60)
def test_timeline_without_matplotlib_is_a_usage_error_before_anything_runs(
    tmp_path: Path,
) -> None:
    # A matplotlib that cannot be imported, first on the path, as if it were not installed.
    fake = tmp_path / "no_matplotlib" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("matplotlib is not installed here")\n')
    picture = tmp_path / "timeline.png"
    # A billion steps would run for hours: only a check before the run returns in time.
    done = cli("demo", "--jobs", "2", "--steps", "1000000000", "--timeline", str(picture),
               pythonpath=fake.parent, timeout=30)
    assert done.returncode == 2
    assert "--timeline: plot_timeline needs matplotlib: pip install matplotlib" in done.stderr
    assert 'pip install ".[plot]"' in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    assert not picture.exists()


@pytest.mark.timeout(120)
def test_the_demo_runs_and_reports_each_slow_tasks_cpu_time_and_memory() -> None:
    done = cli("demo", "--jobs", "4", "--steps", "200000", timeout=100)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "4 simulations of up to 200,000 steps" in out
    for expected in ("4 of 4", "slowest tasks", "CPU time", "peak RSS", "seed=", "workers"):
        assert expected in out, expected
    assert "Traceback" not in done.stderr


@pytest.mark.timeout(120)
def test_the_demo_saves_a_timeline(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    picture = tmp_path / "timeline.png"
    done = cli("demo", "--jobs", "2", "--steps", "20000", "--timeline", str(picture), timeout=100)
    assert done.returncode == 0, done.stderr
    assert f"timeline saved to {picture}" in done.stdout.replace("\n", "")
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
