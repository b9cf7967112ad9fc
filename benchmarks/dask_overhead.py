"""What parallel_jobs costs on top of dask itself, on one LocalCluster.

Usage::

    python benchmarks/dask_overhead.py            # 5 repeats, full sizes (about a minute)
    python benchmarks/dask_overhead.py --quick    # 3 repeats, small sizes (about 15 s)

For each workload it times ``parallelize(f, range(N), parallelizer=client)`` and the plain dask
way to do the same, ``client.gather(client.map(f, range(N), pure=False))``, on the same cluster
(2 worker processes, one thread each, on 127.0.0.1). The two alternate, and which goes first
alternates at each repeat, so a noisy neighbour slows both alike. It prints the median wall time
per task of each and their ratio, parallel_jobs / dask: 1.0 means no overhead, the target is at
most 1.2, and below 1 parallel_jobs is faster (it sends tiny tasks in chunks, dask one by one).

It reports and never asserts; it exits non-zero only if a result is wrong.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from workloads import burn, calibrate_burn, square

TARGET = 1.2


def burn_then_return(x: int, n: int) -> int:
    """Task ``x`` keeps a CPU busy for ``burn(n)``, then returns ``x``."""
    burn(n)
    return x


Way = Callable[[Any, Callable[..., Any], int, dict[str, Any]], list[Any]]


def run_parallel_jobs(client: Any, func: Callable[..., Any], count: int,
                      kwargs: dict[str, Any]) -> list[Any]:
    from parallel_jobs import parallelize

    return parallelize(func, range(count), kwargs=kwargs, parallelizer=client)


def run_dask(client: Any, func: Callable[..., Any], count: int,
             kwargs: dict[str, Any]) -> list[Any]:
    return list(client.gather(client.map(func, range(count), pure=False, **kwargs)))


def measure(client: Any, func: Callable[..., Any], count: int, repeats: int,
            kwargs: dict[str, Any]) -> dict[str, float]:
    """Median seconds per task of each way, after one warm-up call of each."""
    ways: dict[str, Way] = {"parallel_jobs": run_parallel_jobs, "dask": run_dask}
    expected = [func(x, **kwargs) for x in range(count)]
    for way in ways.values():
        way(client, func, count, kwargs)
    times: dict[str, list[float]] = {name: [] for name in ways}
    for repeat in range(repeats):
        order = list(ways) if repeat % 2 == 0 else list(reversed(ways))
        for name in order:
            t0 = time.perf_counter()
            results = ways[name](client, func, count, kwargs)
            times[name].append((time.perf_counter() - t0) / count)
            if results != expected:
                sys.exit(f"{name} returned wrong results for {func.__name__}")
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 3 repeats")
    args = parser.parse_args(argv)
    from distributed import Client, LocalCluster

    repeats = 3 if args.quick else 5
    burn_5ms = calibrate_burn(0.005)
    workloads: list[tuple[str, Callable[..., Any], int, dict[str, Any]]] = [
        ("tiny tasks (x*x)", square, 500 if args.quick else 2000, {}),
        ("5 ms tasks (pure Python)", burn_then_return, 100 if args.quick else 400,
         {"n": burn_5ms}),
    ]
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address="127.0.0.1:0",
                           worker_dashboard_address="127.0.0.1:0")
    client = Client(cluster, set_as_default=False)
    try:
        print(f"{'workload':<26} {'N':>5} {'parallel_jobs':>14} {'dask map':>12} {'ratio':>7}")
        for label, func, count, kwargs in workloads:
            medians = measure(client, func, count, repeats, kwargs)
            ratio = medians["parallel_jobs"] / medians["dask"]
            verdict = "ok" if ratio <= TARGET else f"above the {TARGET} target"
            print(f"{label:<26} {count:>5} {medians['parallel_jobs'] * 1e3:>11.3f} ms "
                  f"{medians['dask'] * 1e3:>9.3f} ms {ratio:>7.2f}  {verdict}")
    finally:
        client.close()
        cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
