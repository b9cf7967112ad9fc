"""Command line: ``python -m parallel_jobs demo`` runs a real parallel job and reports on it."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

from . import __version__
from .parallel import Parallel


def simulate(seed: int, steps: int = 400_000) -> float:
    """A small CPU-bound 'simulation': a deterministic random walk, returns its final position."""
    state, position = seed * 2654435761 % 2**32 or 1, 0.0
    for _ in range(steps):
        state = (1103515245 * state + 12345) % 2**31
        position += math.sin(state)
    return position


def demo(njobs: int, steps: int) -> int:
    """Run ``njobs`` simulations in parallel with a progress bar, then show per-task timings."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]parallel_jobs {__version__}[/bold]: {njobs} simulations of {steps:,} steps")
    P = Parallel(simulate, iterarg=range(njobs), progress=True, label="demo", steps=steps)
    P.run()
    table = Table(title=f"per-task timings ({P.ncpus} workers, {P.times['elapsed']:.2f} s in all)")
    for column in ("task", "result", "seconds", "cpu s", "peak MiB", "pid"):
        table.add_column(column, justify="right")
    for r in P.task_results:
        table.add_row(str(r.index), f"{r.value:.3f}", f"{r.elapsed:.3f}", f"{r.cpu_time:.3f}",
                      f"{r.peak_rss / 2**20:.1f}", str(r.pid))
    console.print(table)
    return 0 if all(P.success or []) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m parallel_jobs`` and the ``parallel-jobs`` script."""
    parser = argparse.ArgumentParser(prog="parallel-jobs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("demo", help="run a real parallel job with a progress bar and a report")
    run.add_argument("--jobs", type=int, default=16, help="number of tasks (default 16)")
    run.add_argument("--steps", type=int, default=2_000_000, help="work per task (default 2,000,000)")
    args = parser.parse_args(argv)
    return demo(args.jobs, args.steps)


if __name__ == "__main__":
    sys.exit(main())
