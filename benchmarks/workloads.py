"""The task functions and sizes of the benchmark workloads (see ``docs/performance.md``).

The functions live in their own module, not in ``run.py``, so that every start method and every
pickler finds them by reference, as users' functions usually are.
"""

from __future__ import annotations

import time
from typing import Any

import attrs


def square(x: int) -> int:
    return x * x


def burn(n: int) -> int:
    """Pure-Python work: no I/O, no GIL release, so only processes can run it in parallel."""
    total = 0
    for i in range(n):
        total += i % 7
    return total


def slice_sum(i: int, data: Any, parts: int) -> float:
    """Sum part ``i`` of ``parts`` of the shared array ``data``."""
    step = len(data) // parts
    return float(data[i * step : (i + 1) * step].sum())


def solve(seed: int, n: int) -> float:
    """Solve one random ``n`` x ``n`` linear system with NumPy: BLAS/LAPACK work, which uses as
    many threads as its library is allowed (the workload of the threads row)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    a = rng.random((n, n)) + n * np.eye(n)
    b = rng.random(n)
    return float(np.linalg.solve(a, b).sum())


def calibrate_burn(seconds: float) -> int:
    """The ``burn`` argument that keeps a CPU busy for about ``seconds``.

    Measured in CPU time, so that a neighbour's load while calibrating does not shrink the tasks.
    """
    n = 200_000
    while True:
        t0 = time.process_time()
        burn(n)
        took = time.process_time() - t0
        if took > 0.05:
            return int(n * seconds / took)
        n *= 4


@attrs.frozen
class Sizes:
    """How big each workload is."""

    tiny: int
    scale: int
    cpu_tasks: int
    cpu_seconds: float
    bigdata_bytes: int
    bigdata_parts: int
    blas_tasks: int = 16
    blas_n: int = 1500


FULL = Sizes(tiny=5_000, scale=200_000, cpu_tasks=8, cpu_seconds=0.5,
             bigdata_bytes=200 * 2**20, bigdata_parts=20)
QUICK = Sizes(tiny=5_000, scale=20_000, cpu_tasks=8, cpu_seconds=0.05,
              bigdata_bytes=20 * 2**20, bigdata_parts=20, blas_n=500)
