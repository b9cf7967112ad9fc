"""Command line: ``python -m parallel_jobs demo`` runs a real parallel job and reports on it.

This module owns the ``parallel-jobs`` script: its options, their checks and the demo job. It
reports through :mod:`parallel_jobs.report` and runs through :class:`~parallel_jobs.Parallel`,
like any other caller.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

from . import __version__
from .api import Parallel
from .report import require_matplotlib

DESCRIPTION = (
    "Run a demonstration of parallel_jobs: CPU-bound simulations on every CPU with a live "
    "progress bar, then a report of where the time and memory went."
)


def simulate(seed: int, steps: int = 400_000) -> float:
    """A small CPU-bound 'simulation': a deterministic random walk, returns its final position.

    Every fourth seed keeps its whole path in memory, so the report has memory to show.
    """
    state, position = seed * 2654435761 % 2**32 or 1, 0.0
    path: list[float] | None = [] if seed % 4 == 3 else None
    for _ in range(steps):
        state = (1103515245 * state + 12345) % 2**31
        position += math.sin(state)
        if path is not None:
            path.append(position)
    return position


def demo(njobs: int, steps: int, timeline: str | None = None) -> int:
    """Run ``njobs`` simulations of varied length in parallel with a progress bar, then report
    where the time and memory went (and save a timeline picture if asked)."""
    from rich.console import Console

    console = Console()
    console.print(f"[bold]parallel_jobs {__version__}[/bold]: {njobs} simulations of up to "
                  f"{steps:,} steps")
    # Lengths vary from a quarter to all of ``steps``, so some tasks are visibly slower.
    lengths = [steps * (1 + (seed * 7) % 4) // 4 for seed in range(njobs)]
    P = Parallel(simulate, iterkwargs={"seed": range(njobs), "steps": lengths}, progress=True,
                 label="demo")
    P.run()
    P.report(console)
    if timeline:
        P.plot_timeline(timeline)
        console.print(f"timeline saved to {timeline}")
    return 0 if all(P.success or []) else 1


def _positive(text: str) -> int:
    """argparse type of a count that must be at least 1 (argparse names the option)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        msg = f"must be a positive integer, not {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m parallel_jobs`` and the ``parallel-jobs`` script."""
    parser = argparse.ArgumentParser(prog="parallel-jobs", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"parallel-jobs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("demo", help="run a real parallel job with a progress bar and a report",
                         description=DESCRIPTION)
    run.add_argument("--jobs", type=_positive, default=16, help="number of tasks (default 16)")
    run.add_argument("--steps", type=_positive, default=3_000_000,
                     help="work of the longest task (default 3,000,000)")
    run.add_argument("--timeline", metavar="PNG",
                     help="also save a timeline of the run (needs matplotlib)")
    args = parser.parse_args(argv)
    if args.timeline:
        # Checked before the run, not after minutes of work.
        try:
            require_matplotlib()
        except ImportError as exc:
            run.error(f"--timeline: {exc}")
    return demo(args.jobs, args.steps, args.timeline)


if __name__ == "__main__":
    sys.exit(main())
