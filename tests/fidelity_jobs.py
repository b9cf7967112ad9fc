"""Task functions for tests/test_fidelity.py: what each task sees and returns, as sciris users
rely on it (module level, so that every start method finds them by reference)."""

from __future__ import annotations

import os
import random
import sys
from typing import Any

from numpy.random import random as early_random  # bound early: seeding hooks cannot see it

SHARED_RESULT: dict[str, list[int]] = {"calls": []}


class Sim:
    """A stand-in for a downstream simulator: it refuses to run twice, as real ones do."""

    def __init__(self) -> None:
        self.pars = {"rand_seed": 0}
        self.results: list[int] | None = None

    def run(self) -> None:
        if self.results is not None:
            msg = "Sim has already been run"
            raise RuntimeError(msg)
        self.results = [self.pars["rand_seed"]]


def run_sim(ind: int, sim: Sim) -> Sim:
    """The simulator's idiom: mutate the sim it was handed, run it, return it."""
    sim.pars["rand_seed"] += ind
    sim.run()
    return sim


def append_and_count(x: int, log: list[int], data: Any = None) -> tuple[int, int, float]:
    """Mutate a shared list (and a shared array, if given) and say what this task found."""
    log.append(x)
    first = -1.0
    if data is not None:
        first = float(data[0])
        data[0] += 1
    return x, len(log), first


def mutate_item(item: dict[str, int]) -> int:
    """Mutate a per-task value, and return how many tasks mutated it before."""
    item["count"] = item.get("count", 0) + 1
    return item["count"]


def return_shared(_: int) -> dict[str, list[int]]:
    """Return the same module-level object from every task."""
    return SHARED_RESULT


class Counter:
    """A callable that carries state: sciris pickled it, so each task had its own copy."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, _: int) -> int:
        self.calls += 1
        return self.calls


def draws(_: Any = None) -> tuple[float, float, float]:
    """Draws from NumPy's global RNG (twice) and from Python's random."""
    np = sys.modules["numpy"]
    return float(np.random.random()), float(np.random.randn()), random.random()


def draws_numpy_only(_: Any = None) -> float:
    np = sys.modules["numpy"]
    return float(np.random.random())


def draws_early(_: Any = None) -> float:
    """Draws through a name bound at import time (``from numpy.random import random``)."""
    return float(early_random())


def draws_sometimes(x: int) -> float | None:
    """Draws only in every third task: the others must not shift anyone's numbers."""
    np = sys.modules["numpy"]
    return float(np.random.random()) if x % 3 == 0 else None


def say(x: int) -> int:
    """Print to stdout and stderr."""
    print(f"task {x} says hello")
    print(f"task {x} warns", file=sys.stderr)
    return x


def fail_noisily(x: int) -> int:
    print(f"about to fail {x}")
    msg = f"failing {x}"
    raise ValueError(msg)


class RefusedByOtherProcesses:
    """Pickles anywhere, but unpickles only in the process that made it: what the parent gets
    back from a worker when a result needs something only the worker has."""

    def __init__(self) -> None:
        self.maker = os.getpid()

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        return _rebuild_refused, (self.maker,)


def _rebuild_refused(maker: int) -> RefusedByOtherProcesses:
    if os.getpid() != maker:
        msg = f"made in process {maker}, cannot live in {os.getpid()}"
        raise RuntimeError(msg)
    return RefusedByOtherProcesses()


def refused_on(x: int, bad: int = 2) -> Any:
    """Return ``x``, or, for ``bad``, a value the parent cannot unpickle."""
    return RefusedByOtherProcesses() if x == bad else [x]
