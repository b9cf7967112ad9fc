"""Under fork, the default parallelizer starts its workers with the standard library, so that a
run never imports dill (40 ms, 3 MB) unless something needs it; when something does, dill
still steps in, and objects of ``multiprocess`` inherited by the workers still work."""

from __future__ import annotations

import sys
from pathlib import Path

import multiprocess
import pytest

from parallel_jobs import parallelize
from tests import jobs
from tests.conftest import run_script

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="fork is the default on Linux")

SCRIPT = """
import sys

import parallel_jobs as pj


def square(x):
    return x * x


def adder(n):
    return lambda x: x + n


if __name__ == "__main__":
    assert pj.parallelize(square, range(100), ncpus=2) == [x * x for x in range(100)]
    print("plain run imported dill:", "dill" in sys.modules)
    # Lambdas as arguments (sent in chunks) and as results need dill: it comes in by itself.
    out = pj.parallelize(lambda f: f(3), [lambda x: x + 1, lambda x: x * 2], ncpus=2)
    print("lambda arguments:", out, "dill" in sys.modules)
    adders = pj.parallelize(adder, [10, 20], ncpus=2)
    print("lambda results:", [f(1) for f in adders])
"""


@pytest.mark.timeout(60)
def test_dill_is_imported_only_when_the_c_pickler_refuses_something(tmp_path: Path) -> None:
    assert run_script(tmp_path, SCRIPT) == [
        "plain run imported dill: False",
        "lambda arguments: [4, 6] True",
        "lambda results: [11, 21]",
    ]


@pytest.mark.timeout(60)
def test_a_multiprocess_manager_dict_among_the_shared_arguments_works_in_forked_workers() -> None:
    with multiprocess.Manager() as manager:
        shared = manager.dict()
        # The parent's proxy now holds a connection to the manager, which the forked workers
        # inherit; unless multiprocess's after-fork hooks run in them, they would all talk over
        # that one socket at once.
        shared[-1] = -10
        counts = parallelize(jobs.count_in_globaldict, range(40), kwargs={"globaldict": shared},
                             ncpus=2, chunksize=1, start_method="fork")
        assert dict(shared) == {x: x * 10 for x in range(-1, 40)}
    # Each task saw the dict at least as big as it made it, and no bigger than all of it.
    assert len(counts) == 40
    assert all(2 <= count <= 41 for count in counts)
