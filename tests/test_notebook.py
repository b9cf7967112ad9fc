"""Code from a notebook's ``__main__``, which has no file, under every start method.

A spawned or fork-server worker cannot import such a ``__main__``: what it defines (functions,
classes, constants) must travel by value, and instances of its classes must come back as
instances of the caller's own classes. Each test runs its "notebook" with ``python -c`` in a
fresh interpreter, so that ``__main__`` is file-less as in Jupyter.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import ROOT


def run_main(source: str, *argv: str, timeout: float = 100.0) -> Any:
    """Run ``source`` as ``python -c`` from the checkout and return the JSON it printed last."""
    done = subprocess.run([sys.executable, "-c", source, *argv], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


CELLS = """
import json, sys
import parallel_jobs as pj

OFFSET = 100

def helper(x):
    return 2 * x

class Rect:
    def __init__(self, w, h):
        self.w, self.h = w, h

    def area(self):
        return self.w * self.h

class Oops(ValueError):
    pass

def uses_helper(x):
    return helper(x) + OFFSET

def uses_class(x):
    return Rect(x, x + 1).area()

def measure(rect, other=None):
    return [isinstance(rect, Rect), rect.area(), None if other is None else other.area()]

def make(x):
    return Rect(x, helper(x))

def fail(x):
    raise Oops(x)

parallelizer, method = sys.argv[1], sys.argv[2]

def run(func, **kwargs):
    return pj.Parallel(func, ncpus=2, parallelizer=parallelizer, start_method=method,
                       **kwargs).run()

made = run(make, iterarg=[1, 2, 3]).results
failed = run(fail, iterarg=[7], die=False).exceptions[0]
print(json.dumps({
    "helper": run(uses_helper, iterarg=[1, 2, 3]).results,
    "class": run(uses_class, iterarg=[1, 2]).results,
    "iterarg": run(measure, iterarg=[Rect(2, 3), Rect(4, 5)]).results,
    "iterkwargs": run(measure, iterkwargs=[{"rect": Rect(1, 2), "other": Rect(3, 3)}]).results,
    "returned": [[type(r) is Rect, r.w, r.h] for r in made],
    "lambda": run(lambda x: helper(x) + OFFSET + 1, iterarg=[5]).results,
    "exception": [type(failed) is Oops, failed.args[0]],
}))
"""

EXPECTED = {
    "helper": [102, 104, 106],
    "class": [2, 6],
    "iterarg": [[True, 6, None], [True, 20, None]],
    "iterkwargs": [[True, 2, 9]],
    "returned": [[True, 1, 2], [True, 2, 4], [True, 3, 6]],
    "lambda": [111],
    "exception": [True, 7],
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("parallelizer", "method"), [
    ("multiprocess", "spawn"),
    ("multiprocess", "forkserver"),
    ("multiprocess", "fork"),
    ("multiprocessing", "spawn"),
    ("multiprocessing", "fork"),
    ("fast", "spawn"),
    ("fast", "fork"),
])
def test_notebook_cells_run_in_workers(parallelizer: str, method: str) -> None:
    """Helpers, classes and constants of __main__, its instances as per-task values, return
    values and exceptions, and a lambda: the same results under every start method."""
    assert run_main(CELLS, parallelizer, method) == EXPECTED


RERUN = """
import json, os
import parallel_jobs as pj

SCALE = 3

class Box:
    def size(self):
        return SCALE

def size(box):
    return [box.size(), os.getpid()]

def run():
    return pj.parallelize(size, iterarg=[Box()], ncpus=1, start_method="spawn")[0]

first = run()
SCALE = 4
second = run()

class Box:
    def size(self):
        return -SCALE

third = run()
print(json.dumps([first, second, third]))
"""


@pytest.mark.timeout(120)
def test_kept_worker_sees_the_cells_run_since() -> None:
    """A notebook changes a constant, then redefines a class, between runs: the kept worker
    that serves each run sees the current ones, not those of the run before."""
    first, second, third = run_main(RERUN)
    assert [first[0], second[0], third[0]] == [3, 4, -4]
    assert first[1] == second[1] == third[1]  # one kept worker served all three runs


PICKLING = """
import json, pickle, sys
from parallel_jobs.protocol.pickling import dumps, dumps_for_spawned
from parallel_jobs.records import Chunk

class Rect:
    def __init__(self, w):
        self.w = w

def chunk(n):
    return Chunk(range(n), itervals=list(range(n)))

big = chunk(4096)
plain = pickle.dumps(big, protocol=pickle.HIGHEST_PROTOCOL)
by_name = pickle.dumps(Rect(1), protocol=pickle.HIGHEST_PROTOCOL)
fork_side = [dumps(big) == plain, dumps(Rect(1)) == by_name, "dill" in sys.modules]

from parallel_jobs.protocol.dilled import SpawnPickler
calls = []
override = SpawnPickler.reducer_override
def counting(self, obj):
    calls.append(type(obj).__name__)
    return override(self, obj)
SpawnPickler.reducer_override = counting

spawned = dumps_for_spawned(big)
calls_big = len(calls)
calls.clear()
dumps_for_spawned(chunk(1))
print(json.dumps({"fork": fork_side, "spawn_bytes": spawned == plain,
                  "calls": [calls_big, len(calls)],
                  "rect": pickle.loads(dumps_for_spawned(Rect(2))).w}))
"""


def test_plain_values_keep_the_c_pickler() -> None:
    """Under fork nothing changes (same bytes, by reference, dill not even imported); for a
    spawned worker, a chunk of ints is the C pickler's own bytes, and the override is called a
    fixed number of times (for the chunk's record, not per task)."""
    found = run_main(PICKLING)
    assert found["fork"] == [True, True, False]
    assert found["spawn_bytes"] is True
    calls_big, calls_small = found["calls"]
    assert calls_big == calls_small < 10
    assert found["rect"] == 2
