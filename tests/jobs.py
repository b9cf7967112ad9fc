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
