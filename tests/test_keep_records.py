"""``keep_records``: a ``Parallel`` keeps per-task records and load samples by default;
without them it keeps only what its lists need, and ``parallelize()``, which returns only the
results, keeps none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from parallel_jobs import Parallel, parallelize
from parallel_jobs.engine.runner import MONITOR_DELAY
from tests import jobs
from tests.conftest import returned, run_script


@pytest.mark.timeout(60)
def test_a_run_without_records_still_has_its_lists() -> None:
    P = Parallel(jobs.fail_on, range(6), ncpus=2, die=False, keep_records=False)
    with pytest.warns(RuntimeWarning, match="only 5 of 6"):
        P.run()
    assert returned(P) == [0, 1, 2, None, 4, 5]
    assert P.success == [True, True, True, False, True, True]
    assert P.skipped == [False] * 6
    assert P.exceptions is not None
    assert isinstance(P.exceptions[3], ValueError)
    assert P.times["elapsed"] > 0
    assert P.times["jobs"] is None
    assert P.load_samples == []


@pytest.mark.timeout(60)
def test_the_record_views_say_why_they_are_empty() -> None:
    P = Parallel(jobs.square, range(4), ncpus=2, keep_records=False).run()
    for view in (lambda: P.task_results, P.summary, P.to_records, P.report):
        with pytest.raises(RuntimeError, match="keep_records=True"):
            view()


@pytest.mark.timeout(60)
def test_a_progress_bar_still_gets_its_load_samples() -> None:
    # The bar shows CPU and memory once a run has lasted MONITOR_DELAY: without records, the
    # load is still sampled for it. These tasks alone outlast the delay.
    assert MONITOR_DELAY < 0.2
    P = Parallel(jobs.sleep_for, [0.2, 0.2], ncpus=2, keep_records=False, progress=True).run()
    assert P.results == [0.2, 0.2]
    assert P.load_samples, "the progress bar's load samples are kept"


@pytest.mark.timeout(60)
def test_retries_work_without_records(tmp_path: Path) -> None:
    P = Parallel(jobs.fail_once, range(4), folder=str(tmp_path), bad=2, retries=1, ncpus=2,
                 chunksize=1, keep_records=False).run()
    assert P.results == [0, 1, 2, 3]
    assert (tmp_path / "runs").read_text() == "xx"


@pytest.mark.timeout(60)
def test_the_callback_still_gets_each_tasks_time() -> None:
    seen: list[float] = []

    def callback(data: dict[str, Any]) -> None:
        seen.append(data["outdict"]["elapsed"])

    assert parallelize(jobs.sleep_for, [0.01, 0.02], ncpus=2, callback=callback) == [0.01, 0.02]
    assert len(seen) == 2
    assert all(elapsed >= 0.01 for elapsed in seen)


@pytest.mark.timeout(60)
def test_keep_records_is_an_option_of_parallelize_too() -> None:
    # As in sciris, parallelize() takes the options of Parallel; a function's own keep_records
    # argument goes in kwargs.
    assert parallelize(jobs.add_all, [1, 2], ncpus=2, keep_records=True) == [1, 2]
    assert parallelize(jobs.add_all, [1, 2], kwargs={"keep_records": 10}, ncpus=2) == [11, 12]


SCRIPT = """
import sys

import parallel_jobs as pj


def square(x):
    return x * x


if __name__ == "__main__":
    assert pj.parallelize(square, range(1000), ncpus=2) == [x * x for x in range(1000)]
    print("parallelize imported psutil:", "psutil" in sys.modules)
    pj.Parallel(square, range(10), ncpus=2).run()
    print("Parallel imported psutil:", "psutil" in sys.modules)
"""


@pytest.mark.timeout(60)
def test_parallelize_samples_no_load_that_nobody_would_see(tmp_path: Path) -> None:
    assert run_script(tmp_path, SCRIPT) == [
        "parallelize imported psutil: False",
        "Parallel imported psutil: True",
    ]
