"""parallel_jobs against its peers, side by side in one process run.

Usage::

    python benchmarks/run.py              # every workload, 5 repeats, medians (a few minutes)
    python benchmarks/run.py --quick      # small sizes, 1 repeat, no sciris (under a minute; CI)
    python benchmarks/run.py --skip-slow  # full sizes without sciris
    python benchmarks/run.py --json results.json

Every figure that matters is a ratio: a peer's median time divided by parallel_jobs' median time
in the same run (above 1: parallel_jobs is faster). Contenders are interleaved, and their order
rotates at each repeat, so a noisy neighbour on a shared machine slows everyone alike.

A contender's first call of each workload is a warm-up (imports, caches, and pools that some
peers keep alive between calls) and is not counted, unless it took a second or more, in which
case it counts; one that took ``SLOW_SECONDS`` or more is not called again. First calls are
printed too, since joblib's reused workers make its warm calls cheaper than any cold start.
Workloads that take milliseconds (startup, tiny, progress) are repeated ``CHEAP_FACTOR`` times
as often: their noise is larger than their cost. The scale workload also runs each contender once in a child process of its
own, to read that process's peak RSS (three times, interleaved, and the median kept); sciris
runs scale only there (once: it takes over a minute).

This script reports; it never asserts a target, so it exits 0 whatever the figures say. It
fails only when a contender returns wrong results.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import math
import multiprocessing
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from contenders import CONTENDERS, SUBJECT, Contender  # noqa: E402
from workloads import (  # noqa: E402
    FULL,
    QUICK,
    Sizes,
    burn,
    calibrate_burn,
    slice_sum,
    solve,
    square,
)

SLOW_SECONDS = 5.0
RSS_ROUNDS = 3
WARM_SECONDS = 1.0
CHEAP_FACTOR = 4
START_METHODS = [m for m in ("fork", "spawn", "forkserver")
                 if m in multiprocessing.get_all_start_methods()]
# The guide leaves these out of scale: 200,000 futures (ProcessPoolExecutor and sciris' 'fast')
# take minutes and prove nothing more than tiny does.
NOT_AT_SCALE = ("ProcessPoolExecutor", "sciris-fast", "sciris")


@attrs.frozen
class Workload:
    """One row of the table."""

    name: str
    func: Callable[..., Any]
    items: Sequence[Any]
    kwargs: dict[str, Any]
    start_method: str | None
    contenders: list[Contender]
    cheap: bool = False


def _same(got: Sequence[Any], expected: Sequence[Any]) -> bool:
    if len(got) != len(expected):
        return False
    return all(g == e or (isinstance(e, float) and math.isclose(g, e, rel_tol=1e-9))
               for g, e in zip(got, expected, strict=True))


def _time(contender: Contender, work: Workload, expected: Sequence[Any]) -> float:
    t0 = time.perf_counter()
    got = contender.run(work.func, work.items, work.kwargs, work.start_method)
    seconds = time.perf_counter() - t0
    if not _same(got, expected):
        msg = f"{contender.name} returned wrong results on {work.name}"
        raise AssertionError(msg)
    return seconds


def measure(work: Workload, repeats: int, firsts: dict[str, float]) -> dict[str, list[float]]:
    """Median-ready samples of every contender of ``work``, interleaved; ``firsts`` receives
    each contender's first call."""
    expected = [work.func(item, **work.kwargs) for item in work.items]
    samples: dict[str, list[float]] = {c.name: [] for c in work.contenders}
    wanted: dict[str, int] = {}
    if work.cheap:
        repeats *= CHEAP_FACTOR
    for contender in work.contenders:
        first = firsts[contender.name] = _time(contender, work, expected)
        if first >= WARM_SECONDS:
            samples[contender.name].append(first)
        wanted[contender.name] = 1 if first >= SLOW_SECONDS else repeats
    order = list(work.contenders)
    for repeat in range(repeats):
        rotated = order[repeat % len(order):] + order[: repeat % len(order)]
        for contender in rotated:
            if len(samples[contender.name]) < wanted[contender.name]:
                samples[contender.name].append(_time(contender, work, expected))
    return samples


class _FakeTerminal(io.StringIO):
    """A terminal as far as rich can tell, so the live bar is drawn (into memory)."""

    def isatty(self) -> bool:
        return True


PROGRESS_MODES = {"off": (False, io.StringIO), "on": (True, _FakeTerminal),
                  "on, plain": (True, io.StringIO)}


def measure_progress(n: int, repeats: int) -> dict[str, list[float]]:
    """parallel_jobs on ``tiny`` with the progress bar off, on (a live bar, as on a terminal) and
    on as plain lines (as in a log), interleaved."""
    import parallel_jobs

    expected = [square(x) for x in range(n)]
    samples: dict[str, list[float]] = {mode: [] for mode in PROGRESS_MODES}
    modes = list(PROGRESS_MODES.items())
    for repeat in range(CHEAP_FACTOR * repeats + 1):
        for mode, (progress, stderr) in modes[repeat % 3:] + modes[: repeat % 3]:
            saved, sys.stderr = sys.stderr, stderr()
            try:
                t0 = time.perf_counter()
                got = parallel_jobs.parallelize(square, range(n), ncpus=2, progress=progress)
                seconds = time.perf_counter() - t0
            finally:
                sys.stderr = saved
            if got != expected:
                msg = f"parallel_jobs returned wrong results with progress {mode}"
                raise AssertionError(msg)
            if repeat:  # the first round is a warm-up
                samples[mode].append(seconds)
    return samples


def measure_checkpoint(tiny: int, burn_n: int, cpu_tasks: int,
                       repeats: int) -> dict[str, dict[str, list[float]]]:
    """parallel_jobs on ``tiny`` and ``cpu`` without and with ``checkpoint=`` (a new file in the
    system's temporary folder each call, as a first run makes), interleaved."""
    import tempfile

    import parallel_jobs

    cases = {
        "tiny": (square, list(range(tiny)), [square(x) for x in range(tiny)],
                 CHEAP_FACTOR * repeats),
        "cpu": (burn, [burn_n] * cpu_tasks, [burn(burn_n)] * cpu_tasks, repeats),
    }
    samples: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for row, (func, inputs, expected, rounds) in cases.items():
            samples[row] = {"off": [], "on": []}
            for repeat in range(rounds + 1):
                for mode in (("off", "on") if repeat % 2 else ("on", "off")):
                    path = os.path.join(folder, f"{row}-{repeat}.sqlite") if mode == "on" else None
                    t0 = time.perf_counter()
                    got = parallel_jobs.parallelize(func, inputs, ncpus=2, checkpoint=path)
                    seconds = time.perf_counter() - t0
                    if got != expected:
                        msg = f"parallel_jobs returned wrong results on {row} (checkpoint {mode})"
                        raise AssertionError(msg)
                    if repeat:  # the first round is a warm-up
                        samples[row][mode].append(seconds)
    return samples


STREAM_SIZES = (10_000, 1_000_000)


def stream_child(n: int) -> int:
    """Stream ``n`` tiny tasks through ``imap`` and print the time and this process's peak RSS."""
    import itertools

    import parallel_jobs

    t0 = time.perf_counter()
    count = 0
    for value in parallel_jobs.imap(square, itertools.islice(itertools.count(), n), ncpus=2):
        if value != count * count:
            print("imap returned a wrong result", file=sys.stderr)
            return 1
        count += 1
    if count != n:
        print(f"imap returned {count} results for {n} tasks", file=sys.stderr)
        return 1
    print(json.dumps({"seconds": time.perf_counter() - t0, "peak_rss": _peak_rss()}))
    return 0


def measure_stream(rounds: int = RSS_ROUNDS) -> dict[int, dict[str, float]]:
    """Each stream size in a fresh process, ``rounds`` times (interleaved): median seconds and
    median peak RSS in bytes."""
    runs: dict[int, list[dict[str, float]]] = {n: [] for n in STREAM_SIZES}
    for _ in range(rounds):
        for n in STREAM_SIZES:
            done = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--stream-child", str(n)],
                capture_output=True, text=True, timeout=900, check=True,
            )
            runs[n].append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {n: {key: statistics.median(r[key] for r in rs) for key in ("seconds", "peak_rss")}
            for n, rs in runs.items()}


def rss_child(name: str, n: int) -> int:
    """Run scale once with one contender and print its time and this process's peak RSS."""
    contender = CONTENDERS[name]
    t0 = time.perf_counter()
    got = contender.run(square, range(n), {}, None)
    seconds = time.perf_counter() - t0
    # Checked item by item: a list of the expected values would raise the peak being measured.
    if len(got) != n or any(value != x * x for x, value in enumerate(got)):
        print(f"{name} returned wrong results", file=sys.stderr)
        return 1
    print(json.dumps({"seconds": seconds, "peak_rss": _peak_rss()}))
    return 0


def _peak_rss() -> int:
    """This process's peak RSS in bytes.

    On Linux, ``ru_maxrss`` survives ``exec``, so a child would report its parent's peak when that
    is higher; ``VmHWM`` belongs to the process's own memory map, made new by ``exec``.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def measure_rss(contenders: Sequence[Contender], n: int,
                rounds: int = RSS_ROUNDS) -> dict[str, dict[str, float]]:
    """Each contender's scale run in a fresh process, ``rounds`` times (interleaved; slow
    contenders once): the median seconds and median parent peak RSS in bytes."""
    runs: dict[str, list[dict[str, float]]] = {c.name: [] for c in contenders}
    for round_ in range(rounds):
        for contender in contenders:
            if round_ and contender.slow:
                continue
            done = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--rss-child", contender.name,
                 "--size", str(n)],
                capture_output=True, text=True, timeout=900, check=True,
            )
            runs[contender.name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {name: {key: statistics.median(r[key] for r in rs) for key in ("seconds", "peak_rss")}
            for name, rs in runs.items()}


def compile_subject() -> None:
    """Byte-compile parallel_jobs, as pip does for the peers it installs.

    An editable install leaves that to the first import, and where the environment sets
    PYTHONDONTWRITEBYTECODE every fresh process (each RSS child) would compile the package
    again, a cost that no installed copy pays.
    """
    import compileall

    import parallel_jobs

    compileall.compile_dir(os.path.dirname(parallel_jobs.__file__), quiet=1)


def machine() -> dict[str, Any]:
    model = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "platform": platform.platform()}


def _fmt(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds:.3g}" if seconds < 100 else f"{seconds:.0f}"


def table(rows: dict[str, dict[str, float]], columns: list[str], fmt: Callable[[Any], str],
          title: str) -> str:
    lines = [f"| {title} | " + " | ".join(columns) + " |",
             "| --- |" + " --- |" * len(columns)]
    for row, cells in rows.items():
        lines.append(f"| {row} | " + " | ".join(fmt(cells.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def _peers(cells: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in cells.items() if k not in (SUBJECT.name, "serial")}


def targets(medians: dict[str, dict[str, float]], rss: dict[str, dict[str, float]],
            progress: dict[str, float], checkpoint: dict[str, dict[str, float]] | None = None,
            stream: dict[int, dict[str, float]] | None = None) -> dict[str, bool | None]:
    """Whether each target of the guide is met in this run (None: not measured)."""
    me = SUBJECT.name
    out: dict[str, bool | None] = {}

    def faster_than_peers(row: str) -> bool | None:
        cells = medians.get(row, {})
        peers = _peers(cells)
        return None if me not in cells or not peers else cells[me] < min(peers.values())

    def versus(row: str, peer: str, factor: float) -> bool | None:
        cells = medians.get(row, {})
        return None if me not in cells or peer not in cells else cells[peer] / cells[me] >= factor

    out["tiny faster than the fastest peer"] = faster_than_peers("tiny")
    out["scale faster than the fastest peer"] = faster_than_peers("scale")
    out["tiny >= 30x faster than sciris"] = versus("tiny", "sciris", 30)
    out["scale >= 100x faster than sciris"] = versus("scale", "sciris", 100)
    peaks = {k: v["peak_rss"] for k, v in rss.items()}
    lean = _peers(peaks)
    out["scale peak RSS <= the leanest peer's"] = (
        None if me not in peaks or not lean else peaks[me] <= min(lean.values()))
    for method in START_METHODS:
        out[f"bigdata ({method}) faster than the fastest peer"] = faster_than_peers(
            f"bigdata-{method}")
    cpu = medians.get("cpu", {})
    out["cpu >= 95% parallel efficiency"] = (
        None if me not in cpu or "serial" not in cpu else cpu[me] <= 1.05 * cpu["serial"] / 2)
    startup = medians.get("startup", {})
    out["startup no slower than ProcessPoolExecutor"] = (
        None if "ProcessPoolExecutor" not in startup
        else startup[me] <= startup["ProcessPoolExecutor"])
    out["progress costs <= 10% on tiny"] = (
        None if not progress else progress["on"] <= 1.10 * progress["off"])
    for row, limit in (("tiny", 1.25), ("cpu", 1.03)):
        cells = (checkpoint or {}).get(row)
        out[f"checkpoint costs <= {limit - 1:.0%} on {row}"] = (
            None if not cells else cells["on"] <= limit * cells["off"])
    small, large = STREAM_SIZES
    out["imap of 10^6 peaks within 10 MB of 10^4"] = (
        None if not stream else stream[large]["peak_rss"] - stream[small]["peak_rss"] <= 10 * 2**20)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repeat, no sciris")
    parser.add_argument("--skip-slow", action="store_true", help="leave sciris out")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per contender")
    parser.add_argument("--only", nargs="*", help="run only these workloads")
    parser.add_argument("--json", metavar="PATH", help="write every sample and median here")
    parser.add_argument("--rss-child", metavar="CONTENDER", help=argparse.SUPPRESS)
    parser.add_argument("--stream-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child:
        return rss_child(args.rss_child, args.size)
    if args.stream_child:
        return stream_child(args.stream_child)

    sizes: Sizes = QUICK if args.quick else FULL
    repeats = 1 if args.quick else args.repeats
    skip_slow = args.quick or args.skip_slow
    everyone = [c for c in CONTENDERS.values() if not (c.slow and skip_slow)]
    wanted = set(args.only or ["startup", "tiny", "scale", "cpu", "bigdata", "progress",
                               "checkpoint", "stream", "blas"])
    began = time.perf_counter()
    compile_subject()
    print(f"# parallel_jobs benchmarks, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
          flush=True)
    print(f"{machine()}; repeats={repeats}; sizes={attrs.asdict(sizes)}", flush=True)

    works: list[Workload] = []
    if "startup" in wanted:
        works.append(Workload("startup", square, range(2), {}, None, everyone, cheap=True))
    if "tiny" in wanted:
        works.append(Workload("tiny", square, range(sizes.tiny), {}, None, everyone, cheap=True))
    if "scale" in wanted:
        at_scale = [c for c in everyone if c.name not in NOT_AT_SCALE]
        works.append(Workload("scale", square, range(sizes.scale), {}, None, at_scale))
    burn_n = 0
    if "cpu" in wanted or "checkpoint" in wanted:
        burn_n = calibrate_burn(sizes.cpu_seconds)
    if "cpu" in wanted:
        n = burn_n
        works.append(Workload("cpu", burn, [n] * sizes.cpu_tasks, {}, None, everyone))
    if "bigdata" in wanted:
        import numpy as np

        data = np.random.default_rng(0).random(sizes.bigdata_bytes // 8)
        for method in START_METHODS:
            kwargs = {"data": data, "parts": sizes.bigdata_parts}
            works.append(Workload(f"bigdata-{method}", slice_sum, range(sizes.bigdata_parts),
                                  kwargs, method, everyone))

    if "blas" in wanted:
        # NumPy in the parent, as in a real sweep: forked workers inherit its BLAS and its
        # thread pool. joblib limits each worker's threads, multiprocess.Pool does not.
        import numpy  # noqa: F401

        peers = [c for c in everyone if c.name in ("parallel_jobs", "joblib", "multiprocess.Pool")]
        works.append(Workload("blas", solve, range(sizes.blas_tasks), {"n": sizes.blas_n},
                              None, peers))

    samples: dict[str, dict[str, list[float]]] = {}
    firsts: dict[str, dict[str, float]] = {}
    for work in works:
        t0 = time.perf_counter()
        firsts[work.name] = {}
        samples[work.name] = measure(work, repeats, firsts[work.name])
        print(f"  {work.name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)

    rss: dict[str, dict[str, float]] = {}
    if "scale" in wanted:
        in_rss = [c for c in everyone if c.name not in NOT_AT_SCALE or c.name == "sciris"]
        rss = measure_rss(in_rss, sizes.scale)
        if "sciris" in rss:
            samples["scale"]["sciris"] = [rss["sciris"]["seconds"]]
    progress_samples: dict[str, list[float]] = {}
    if "progress" in wanted:
        progress_samples = measure_progress(sizes.tiny, repeats)
    checkpoint_samples: dict[str, dict[str, list[float]]] = {}
    if "checkpoint" in wanted:
        checkpoint_samples = measure_checkpoint(sizes.tiny, burn_n, sizes.cpu_tasks, repeats)
    stream: dict[int, dict[str, float]] = {}
    if "stream" in wanted:
        stream = measure_stream(1 if args.quick else RSS_ROUNDS)

    medians = {w: {c: statistics.median(s) for c, s in row.items() if s}
               for w, row in samples.items()}
    ratios = {w: {c: v / row[SUBJECT.name] for c, v in row.items() if c != SUBJECT.name}
              for w, row in medians.items() if row.get(SUBJECT.name)}
    progress = {k: statistics.median(v) for k, v in progress_samples.items() if v}
    columns = [c.name for c in everyone]
    peers = [c for c in columns if c != SUBJECT.name]

    print()
    print(table(medians, columns, _fmt, "median seconds"))
    print()
    print(table(ratios, peers, lambda r: "—" if r is None else f"{r:.2f}",
                "peer / parallel_jobs"))
    print()
    print(table(firsts, columns, _fmt, "first call (cold), s"))
    if rss:
        print()
        mb = {"scale peak RSS (MB)": {k: v["peak_rss"] / 2**20 for k, v in rss.items()}}
        print(table(mb, [c for c in columns if c in rss],
                    lambda v: "—" if v is None else f"{v:.1f}", "parent"))
    if progress:
        print("\nprogress on tiny: " + ", ".join(
            f"{mode} {seconds:.4f} s ({seconds / progress['off'] - 1:+.1%})"
            for mode, seconds in progress.items()))
    checkpoint = {row: {mode: statistics.median(v) for mode, v in cells.items() if v}
                  for row, cells in checkpoint_samples.items()}
    for row, cells in checkpoint.items():
        print(f"\ncheckpoint on {row}: off {cells['off']:.4f} s, on {cells['on']:.4f} s "
              f"({cells['on'] / cells['off'] - 1:+.1%})", end="")
    if checkpoint:
        print()
    if stream:
        print("\nimap of tiny tasks, parent peak RSS: " + ", ".join(
            f"{n:,} tasks {v['peak_rss'] / 2**20:.1f} MB in {v['seconds']:.2f} s"
            for n, v in stream.items()))
    met = targets(medians, rss, progress, checkpoint, stream)
    if args.quick:
        # Tasks a tenth of their full size make fixed costs (forking workers) loom ten times
        # larger, and one repeat is all noise: these lines only show that nothing is broken.
        print("\ntargets at --quick sizes, 1 repeat (a smoke test, not a verdict; run without "
              "--quick to judge them):")
    else:
        print("\ntargets (reported, never asserted):")
    for what, ok in met.items():
        mark = "n/a " if ok is None else ("met " if ok else "MISS")
        print(f"  [{mark}] {what}")
    print(f"\ntotal {time.perf_counter() - began:.0f} s")

    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                       "machine": machine(), "quick": args.quick, "repeats": repeats,
                       "sizes": attrs.asdict(sizes), "samples": samples, "first_calls": firsts,
                       "medians": medians,
                       "ratios": ratios, "scale_rss": rss, "progress": progress_samples,
                       "checkpoint": checkpoint_samples, "stream": stream,
                       "targets": met}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
