"""Functions that tasks run in the tests. They live in a module (not in test functions) so that
every start method and every pickler can find them."""

from __future__ import annotations

import os
import time
from typing import Any


def square(x: float) -> float:
    return x * x


def multiply(x: float, y: float) -> float:
    return x * y


def repeat(x: Any, y: int) -> list[Any]:
    return [x] * y


def add_all(*args: float, **kwargs: float) -> float:
    return sum(args) + sum(kwargs.values())


def fail_on(x: int, bad: int = 3) -> int:
    if x == bad:
        msg = f"task value {x} is bad"
        raise ValueError(msg)
    return x


def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def pid(_: Any = None) -> int:
    return os.getpid()


def count_in_globaldict(x: int, globaldict: Any) -> int:
    globaldict[x] = x * 10
    return len(globaldict)


def fail_first_else_sleep(x: int) -> int:
    """Task 0 fails at once; every other task would sleep for 30 s, so a run that waits for
    them is easy to tell from one that stopped at the failure."""
    if x == 0:
        msg = "task 0 fails at once"
        raise KeyError(msg)
    time.sleep(30)
    return x


def wait_for_path(x: Any, path: str) -> Any:
    """Return ``x`` once ``path`` exists (or fail after 30 s, so a broken test cannot hang)."""
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            msg = f"{path} never appeared"
            raise TimeoutError(msg)
        time.sleep(0.005)
    return x


def value_and_pid(x: Any) -> tuple[Any, int]:
    return x, os.getpid()


def no_args() -> int:
    return 42
