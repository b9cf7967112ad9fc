"""Large NumPy arrays that all tasks share go through shared memory once, arrive as each task's
own writable copy-on-write view, and leave no segment open however the run ends."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from parallel_jobs import Parallel, WorkerCrashedError, parallelize
from parallel_jobs.protocol.shm import MIN_SHARED_BYTES, SharedArrays, loads_payload, shm_available
from tests import jobs
from tests.conftest import run_script

np = pytest.importorskip("numpy")
pytestmark = pytest.mark.skipif(not shm_available(), reason="needs memfd_create and /proc")

PICKLED = ("spawn", "forkserver")


def segments() -> list[str]:
    """The segments this test process holds now."""
    return jobs.held_segments(os.getpid())


@pytest.fixture
def big() -> object:
    """A 4 MB array of 8 rows, well above the sharing threshold."""
    data = np.arange(8 * 65536, dtype=np.float64).reshape(8, 65536)
    assert data.nbytes >= 4 * MIN_SHARED_BYTES
    return data


@pytest.fixture(autouse=True)
def no_segment_left() -> object:
    assert segments() == []
    yield
    assert segments() == []


@pytest.mark.parametrize("start_method", PICKLED)
def test_a_large_shared_array_arrives_as_a_private_view_of_shared_memory(
    start_method: str, big: object
) -> None:
    P = Parallel(jobs.shared_view, range(8), ncpus=2, start_method=start_method, data=big,
                 owner=os.getpid())
    P.run()
    assert P.results is not None
    for row, (writeable, mapped, total, live) in enumerate(P.results):
        assert writeable  # each task's own copy-on-write mapping, as a pickled copy would be
        assert mapped
        assert total == pytest.approx(float(big[row].sum()))  # type: ignore[index]
        assert len(live) == 1  # one segment, shared by every task and both workers
    assert segments() == []


def test_a_forked_worker_inherits_a_large_array_instead_of_a_copy(big: object) -> None:
    P = Parallel(jobs.shared_view, range(8), ncpus=2, start_method="fork", data=big,
                 owner=os.getpid())
    P.run()
    assert P.results is not None
    for row, (writeable, _, total, live) in enumerate(P.results):
        assert writeable
        assert total == pytest.approx(float(big[row].sum()))  # type: ignore[index]
        assert live == []  # no segment: nothing was copied


def test_a_forked_worker_whose_task_wrote_to_an_inherited_array_retires(big: object) -> None:
    # Every task writes: each must still find the pristine array, so each worker retires after
    # one task and a fresh fork runs the next; none is lost or run twice.
    P = Parallel(jobs.write_and_read_back, range(8), ncpus=2, start_method="fork", data=big,
                 chunksize=4)
    P.run()
    assert P.results == [(0.0, float(x)) for x in range(8)]
    assert len(set(P.task_results[i].pid for i in range(8))) == 8
    assert big[0, 0] == 0.0  # type: ignore[index]


def test_arrays_are_shared_wherever_they_sit_in_the_arguments(big: object) -> None:
    owner = SharedArrays()
    try:
        blob = owner.dumps({"args": (big,), "nested": {"deep": [big]}, "small": np.ones(3)})
        assert len(blob) < 4096  # the 4 MB travel by name only
        assert len(owner.fds) == 2
        loaded = loads_payload(blob)
        again = loads_payload(blob)
    finally:
        owner.close()
    assert np.array_equal(loaded["nested"]["deep"][0], big)
    assert loaded["small"].flags.writeable
    # Each load is a private copy-on-write view: writes stay in it.
    loaded["args"][0][0, 0] = -1.0
    assert again["args"][0][0, 0] == 0.0
    assert big[0, 0] == 0.0


def test_dtypes_and_layouts_survive_the_trip() -> None:
    arrays = [
        np.asfortranarray(np.arange(300_000, dtype=np.float64).reshape(600, 500)),
        np.arange(600_000, dtype=np.int64)[::2],
        np.zeros(200_000, dtype=[("a", "i4"), ("b", "f8")]),
        np.arange(300_000).astype("datetime64[s]"),
    ]
    owner = SharedArrays()
    try:
        loaded = loads_payload(owner.dumps(arrays))
        assert len(owner.fds) == len(arrays)
    finally:
        owner.close()
    for before, after in zip(arrays, loaded, strict=True):
        assert after.dtype == before.dtype
        assert after.shape == before.shape
        assert np.array_equal(after, before)


def test_close_lets_go_and_may_be_called_twice(big: object) -> None:
    owner = SharedArrays()
    owner.dumps(big)
    assert len(segments()) == 1
    owner.close()
    owner.close()
    assert segments() == []


@pytest.mark.parametrize("start_method", PICKLED)
def test_no_segment_is_left_after_a_failing_task_with_die(
    start_method: str, big: object
) -> None:
    with pytest.raises(ValueError, match="task value 3 is bad"):
        parallelize(jobs.use_data, range(8), ncpus=2, start_method=start_method, data=big)


@pytest.mark.parametrize("start_method", PICKLED)
def test_no_segment_is_left_after_a_worker_crash(start_method: str, big: object) -> None:
    P = Parallel(jobs.use_data, range(6), ncpus=2, start_method=start_method, die=False,
                 data=big, how="exit")
    with pytest.warns(RuntimeWarning, match="5 of 6"):
        P.run()
    assert P.results is not None
    assert P.exceptions is not None
    assert isinstance(P.exceptions[3], WorkerCrashedError)
    assert [r for i, r in enumerate(P.results) if i != 3] == [0, 1, 4, 16, 25]


NOT_DUMPABLE = """
import ctypes
import mmap

import numpy as np

import parallel_jobs as pj


def view(x, data):
    base = data
    while getattr(base, "base", None) is not None:
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return bool(data.flags.writeable), isinstance(base, mmap.mmap), float(data[x].sum())


if __name__ == "__main__":
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: /proc/<pid>/fd is closed to others
    data = np.arange(8 * 65536, dtype=np.float64).reshape(8, 65536)
    results = pj.parallelize(view, range(2), ncpus=2, start_method="spawn", data=data)
    print([(writeable, mapped, total == float(data[x].sum()))
           for x, (writeable, mapped, total) in enumerate(results)])
"""


@pytest.mark.timeout(60)
def test_a_process_that_is_not_dumpable_pickles_its_arrays_instead(tmp_path: Path) -> None:
    # Workers could not open its descriptors through /proc: sharing would fail in each of them.
    assert run_script(tmp_path, NOT_DUMPABLE) == ["[(True, False, True), (True, False, True)]"]
