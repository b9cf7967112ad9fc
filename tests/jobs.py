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


# -- fault tolerance (tests/test_faults.py, test_interrupt.py, test_leaks.py) --------------------


def die_on(
    x: int, bad: int = 3, how: str = "exit", marker: str | None = None, others: float = 0.0
) -> int:
    """Task ``bad`` ends its own worker: ``'exit'`` (os._exit(3)), ``'kill'`` (SIGKILL, as the
    out-of-memory killer sends) or ``'segv'`` (a real segmentation fault); the others sleep
    ``others`` seconds. ``marker``, if given, receives the time of death, so a test can measure
    how soon the parent reacts."""
    import ctypes
    import signal

    if x == bad:
        if marker is not None:
            with open(marker, "w") as fh:
                fh.write(repr(time.time()))
        if how == "exit":
            os._exit(3)
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if how == "segv":
            import faulthandler

            faulthandler.disable()  # pytest's handler, inherited by fork, would print a dump
            ctypes.string_at(0)
        msg = f"unknown way to die: {how!r}"
        raise ValueError(msg)
    time.sleep(others)
    return x * x


def sleep_if(x: int, slow: int = 2, seconds: float = 30.0, others: float = 0.0) -> int:
    """Task ``slow`` sleeps ``seconds``; the others sleep ``others``."""
    time.sleep(seconds if x == slow else others)
    return x


def fail_once(x: int, folder: str, how: str = "raise", bad: int = 3, always: bool = False) -> int:
    """Task ``bad`` fails on its first run only (or on every run with ``always``): it raises,
    kills its worker or hangs for 30 s, as ``how`` says. Each run of it appends a byte to
    ``folder/runs``, so a test can count the runs."""
    if x == bad:
        path = os.path.join(folder, "runs")
        with open(path, "a") as fh:
            fh.write("x")
        if always or os.path.getsize(path) == 1:
            if how == "raise":
                msg = f"task {x} fails on its first run"
                raise RuntimeError(msg)
            if how == "crash":
                os._exit(3)
            time.sleep(30)
    return x


class Unpicklable:
    """Refuses to be pickled, by pickle and dill alike."""

    def __reduce__(self) -> Any:
        msg = "Unpicklable refuses to be pickled"
        raise TypeError(msg)


def return_unpicklable(x: int, bad: int = 3) -> Any:
    return Unpicklable() if x == bad else x


class NeedsTwoArgs(Exception):
    """Pickles fine but cannot be re-created: unpickling calls it with one argument."""

    def __init__(self, first: Any, second: Any) -> None:
        super().__init__(f"got {first} and {second}")


class HoldsUnpicklable(Exception):
    """Cannot be pickled at all: one of its attributes refuses."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.thing = Unpicklable()


def raise_odd(x: int, bad: int = 3, kind: str = "needs-two") -> int:
    if x == bad:
        if kind == "needs-two":
            raise NeedsTwoArgs("left", "right")
        msg = "holding something unpicklable"
        raise HoldsUnpicklable(msg)
    return x


def touch(x: int, folder: str, extra: Any = None) -> int:
    """Leave a file named after the task in ``folder``, proof that it ran."""
    with open(os.path.join(folder, f"ran-{x}"), "w"):
        pass
    return x


FORK_WARNING = r"This process \(pid=\d+\) is multi-threaded, use of fork\(\) may lead to deadlocks"
"""What Python 3.12+ warns at every fork from a process with threads (NumPy's BLAS has some)."""


def record_warnings() -> Any:
    """``warnings.catch_warnings(record=True)`` for every warning but :data:`FORK_WARNING`."""
    import warnings

    class Recording(warnings.catch_warnings):
        def __enter__(self) -> Any:
            caught = super().__enter__()
            warnings.simplefilter("always")
            warnings.filterwarnings("ignore", message=FORK_WARNING, category=DeprecationWarning)
            return caught

    return Recording(record=True)


def nested_sum(x: int, parallelizer: str | None = None) -> tuple[int, list[str]]:
    """Run a parallel run inside a task; return its sum and the warnings it gave."""
    from parallel_jobs import parallelize

    with record_warnings() as caught:
        total = sum(parallelize(square, range(x + 1), ncpus=2, parallelizer=parallelizer))
    return total, [str(w.message) for w in caught]


def report_then_wait(x: int, folder: str, quick: int = 2, data: Any = None) -> int:
    """Tasks below ``quick`` return at once; the others write their pid into ``folder`` and
    then sleep for 30 s, so a test knows they are running and can interrupt them. ``data`` is
    ignored: it lets a test ship a large array to the workers."""
    if x >= quick:
        path = os.path.join(folder, f"running-{x}")
        with open(path + ".tmp", "w") as fh:
            fh.write(str(os.getpid()))
        os.replace(path + ".tmp", path)
        time.sleep(30)
    return x


def wait_for_event(x: int, event: Any, slow: int = 1, bad: int | None = None) -> int:
    """Task ``slow`` blocks until ``event`` is set (at most 30 s), task ``bad`` raises at once;
    for the thread backend, whose threads cannot be killed."""
    if x == bad:
        msg = f"task {x} fails at once"
        raise ValueError(msg)
    if x == slow:
        event.wait(30)
    return x


# -- visibility (tests/test_report.py) ----------------------------------------------------------


def allocate(megabytes: int) -> int:
    """Touch ``megabytes`` of fresh memory, then give it back to the system; return the size."""
    import mmap

    size = megabytes * 2**20
    if not size:
        return 0
    # Mapped directly, so malloc cannot keep the pages resident after the task, and written
    # page by page, so every page really is resident while it runs.
    with mmap.mmap(-1, size) as block:
        for offset in range(0, size, mmap.PAGESIZE):
            block[offset] = 1
    return megabytes


def spin_cpu(seconds: float) -> float:
    """Keep the CPU busy until this process has used ``seconds`` of CPU time; return them."""
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass
    return time.process_time() - start


class CodedError(Exception):
    """An exception whose ``__init__`` takes other parameters than it passes on: pickling it
    records ``CodedError(message)``, which fails to re-create it."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"error {code}: {reason}")
        self.code = code


def raise_coded(code: int) -> None:
    raise CodedError(code, "by design")


# -- chunking and shared memory (tests/test_chunking.py, tests/test_shm.py) ---------------------


def nothing(_: Any) -> None:
    return None


def shared_view(x: int, data: Any, owner: int) -> tuple[bool, bool, float, list[str]]:
    """How the shared array ``data`` reached this task: whether it is writeable, whether it is
    backed by a mapped file, the sum of row ``x``, and the shared-memory segments that process
    ``owner`` (the run's parent) holds right now."""
    import mmap

    base = data
    while getattr(base, "base", None) is not None:
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    segments = held_segments(owner)
    return bool(data.flags.writeable), isinstance(base, mmap.mmap), float(data[x].sum()), segments


def held_segments(pid: int) -> list[str]:
    """The shared-array segments that process ``pid`` holds open (its ``/memfd:`` files)."""
    found = []
    folder = f"/proc/{pid}/fd"
    for fd in os.listdir(folder):
        try:
            target = os.readlink(os.path.join(folder, fd))
        except OSError:
            continue  # closed meanwhile
        if target.startswith("/memfd:parallel_jobs"):
            found.append(f"{fd} -> {target}")
    return sorted(found)


def terminate_self(x: int) -> int:
    """Send this process SIGTERM, as a job scheduler would; return only if it survives."""
    import signal

    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
    return x


def use_data(x: int, data: Any, bad: int = 3, how: str = "raise") -> int:
    """Read the shared array ``data``; task ``bad`` then raises (``'raise'``) or ends its worker
    (``'exit'``)."""
    if x == bad:
        if how == "exit":
            os._exit(3)
        msg = f"task value {x} is bad"
        raise ValueError(msg)
    return x * x + int(data[0, 0])


def exit_on(x: int, bad: int = 1) -> int:
    """Call sys.exit in task ``bad``, as a script-turned-function might."""
    import sys

    if x == bad:
        sys.exit(3)
    return x


def start_child_then_hang(x: int, folder: str, slow: int = 1) -> int:
    """Task ``slow`` starts a child process of its own (a sleeping Python), writes its pid into
    ``folder/grandchild``, then hangs for 30 s: stopping the task must stop both."""
    if x == slow:
        import subprocess
        import sys

        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        path = os.path.join(folder, "grandchild")
        with open(path + ".tmp", "w") as fh:
            fh.write(str(child.pid))
        os.replace(path + ".tmp", path)
        time.sleep(30)
    return x


def draw_random(_: Any = None) -> float:
    """A number from NumPy's global RNG, as a simulation seeded by its caller would draw."""
    import numpy as np

    return float(np.random.random())


def announce_then_wait(x: int, folder: str) -> int:
    """Write ``folder/started-x``, then return ``x`` once ``folder/go`` exists (30 s at most)."""
    with open(os.path.join(folder, f"started-{x}"), "w"):
        pass
    return int(wait_for_path(x, os.path.join(folder, "go")))


def fail_after_worker_zero_exits(x: int, folder: str) -> int:
    """Task 0 notes its worker's pid and returns. Task 1 waits until that worker has exited
    (the run retires idle workers once nothing is left to hand out), then fails on its first
    run only, so that its retry needs a worker when none is idle."""
    pidfile = os.path.join(folder, "pid0")
    if x == 0:
        with open(pidfile + ".tmp", "w") as fh:
            fh.write(str(os.getpid()))
        os.replace(pidfile + ".tmp", pidfile)
        return 0
    failed = os.path.join(folder, "failed")
    if os.path.exists(failed):
        return x
    import psutil

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # polls another process's state, with a deadline
        if os.path.exists(pidfile):
            with open(pidfile) as fh:
                pid = int(fh.read())
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
        time.sleep(0.005)
    else:
        msg = "task 0's worker never exited"
        raise TimeoutError(msg)
    with open(failed, "w"):
        pass
    msg = f"task {x} fails on its first run"
    raise RuntimeError(msg)


# -- API surface (tests/test_api.py, tests/test_validation.py) ----------------------------------


def times_ncpu(x: int, ncpu: int) -> int:
    """Takes an argument named like the option ``ncpus``: it must reach the function."""
    return x * ncpu


def with_any_keywords(x: int, **kwargs: Any) -> tuple[int, list[tuple[str, Any]]]:
    """Takes any keyword: one named like an option must reach the function."""
    return x, sorted(kwargs.items())


def sleep_span(seconds: float) -> tuple[float, float]:
    """Sleep, then return when the task started and ended (``time.time()``), to see overlaps."""
    started = time.time()
    time.sleep(seconds)
    return started, time.time()


# -- failures: BaseExceptions, broken __str__, signals in serial tasks (issue 11 items 3, 4) --


class CustomBaseError(BaseException):
    """A BaseException of the user's own, as some libraries define for 'abort everything'."""


def raise_base(x: int, kind: str, bad: int = 2) -> int:
    """Task ``bad`` raises the BaseException (not an Exception) that ``kind`` names."""
    if x != bad:
        return x
    import asyncio
    import sys

    if kind == "SystemExit":
        sys.exit(3)
    errors: dict[str, BaseException] = {
        "KeyboardInterrupt": KeyboardInterrupt(f"task {x} pressed Ctrl-C itself"),
        "GeneratorExit": GeneratorExit(f"task {x} closed"),
        "CancelledError": asyncio.CancelledError(f"task {x} cancelled"),
        "custom": CustomBaseError(f"task {x} gives up"),
    }
    raise errors[kind]


class BrokenStrError(Exception):
    """An exception whose ``__str__`` raises, as a buggy library's may."""

    def __str__(self) -> str:
        msg = "__str__ of BrokenStrError is broken"
        raise RuntimeError(msg)


def raise_broken_str(x: int, bad: int = 2) -> int:
    if x == bad:
        raise BrokenStrError(x)
    return x


def signal_self_on(x: int, signum: int, bad: int = 1) -> int:
    """Task ``bad`` sends ``signum`` to its own thread (a real Ctrl-C when it runs in the
    caller's main thread); its handler acts before the task could return."""
    if x == bad:
        import signal

        signal.raise_signal(signum)
        time.sleep(5)  # not reached when the handler raised
    return x


# -- per-task copies (issue 10) -----------------------------------------------------------------


def write_and_read_back(x: int, data: Any) -> tuple[float, float]:
    """What ``data[0, 0]`` held when this task began, and after it wrote ``x`` there."""
    before = float(data[0, 0])
    data[0, 0] = x
    return before, float(data[0, 0])
# -- long runs: checkpoints and imap (tests/test_checkpoint.py, tests/test_imap.py) -------------


def logged_square(x: int, folder: str, seconds: float = 0.0, fail: int = -1) -> int:
    """Square ``x``, leaving one new file in ``folder`` per execution so that a test counts
    them; sleep ``seconds`` first; raise for ``x == fail``."""
    name = f"{x}-{os.getpid()}-{time.perf_counter_ns()}"
    with open(os.path.join(folder, name), "w"):
        pass
    if seconds:
        time.sleep(seconds)
    if x == fail:
        msg = f"task value {x} fails"
        raise ValueError(msg)
    return x * x


def executions(folder: str) -> dict[int, int]:
    """How many times :func:`logged_square` ran for each value, from its files in ``folder``."""
    counts: dict[int, int] = {}
    for name in os.listdir(folder):
        value = int(name.split("-")[0])
        counts[value] = counts.get(value, 0) + 1
    return counts


def noisy_square(x: int) -> int:
    """Print, then square ``x`` (for ``capture=True``)."""
    print(f"task {x}")
    return x * x


def generator_of(x: int) -> Any:
    """Return a generator, which no pickler can pickle (for 'thread' and 'serial' runs)."""
    return (i for i in range(x))


def wait_unless(x: int, path: str, free: int = 0) -> int:
    """Return task ``free``'s ``x`` at once; the others wait for ``path`` to exist."""
    return x if x == free else wait_for_path(x, path)




# -- process lifecycle (tests/test_interrupt.py, tests/test_kept_workers.py) --------------------


def note(folder: str, name: str, text: str) -> None:
    """Write ``text`` into ``folder/name`` atomically, so a reader never sees half of it."""
    path = os.path.join(folder, name)
    with open(path + ".tmp", "w") as fh:
        fh.write(text)
    os.replace(path + ".tmp", path)


def spin_noted(x: int, folder: str, globaldict: Any = None) -> int:
    """Write this worker's pid into ``folder/running-x``, then keep a CPU busy for 30 s
    (``globaldict`` lets a run share one, which starts a manager process)."""
    note(folder, f"running-{x}", str(os.getpid()))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pass
    return x


def start_helper_then_crash(x: int, folder: str, bad: int = 1) -> int:
    """Task ``bad`` starts a helper process (a sleeping Python), writes its pid into
    ``folder/helper``, then kills its own worker: the helper must not outlive the crash."""
    if x == bad:
        import signal
        import subprocess
        import sys

        helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        note(folder, "helper", str(helper.pid))
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def world_seen(_: Any = None) -> tuple[str, str | None, list[str], int]:
    """What a task sees of the world: cwd, $PARALLEL_JOBS_TEST_WORLD, sys.path, and its pid."""
    import sys

    return os.getcwd(), os.environ.get("PARALLEL_JOBS_TEST_WORLD"), list(sys.path), os.getpid()


# -- Worker health (issue 14): initializers, recycling, memory and thread limits -----------------


def remember_setup(tag: str) -> None:
    """An initializer: put ``tag`` and this process's pid in its worker state."""
    import parallel_jobs

    parallel_jobs.worker_state().update(tag=tag, pid=os.getpid())


def failing_setup() -> None:
    """An initializer that always fails."""
    msg = "no database here"
    raise ConnectionError(msg)


def state_and_pid(x: int) -> tuple[int, Any, int]:
    """``x``, the worker state's ``tag`` (None without one) and the pid that ran it."""
    import parallel_jobs

    state = parallel_jobs.worker_state()
    return x, (state.get("tag"), state.get("pid")), os.getpid()


def pid_of(x: int) -> int:
    """The pid of the process that ran task ``x``."""
    return os.getpid()


_LEAKED: list[bytes] = []


def leak(x: int, size: int) -> tuple[int, int]:
    """Keep ``size`` more bytes alive in this process for good (a leak), touched so they are
    resident; return the pid and the process's RSS after it."""
    from parallel_jobs.worker_health import current_rss

    _LEAKED.append(b"\1" * size)
    return os.getpid(), current_rss()


def hog(x: int, hog_at: int, step: int = 20_000_000, most: int = 4_000_000_000) -> int:
    """Task ``hog_at`` allocates ``step`` bytes at a time, up to ``most`` (a runaway); the
    others return ``x``."""
    if x != hog_at:
        return x
    held = []
    while sum(len(block) for block in held) < most:
        held.append(b"\1" * step)
    return -1


def thread_limits(x: int) -> list[int]:
    """The thread count of each BLAS/OpenMP library loaded in this worker (threadpoolctl)."""
    import numpy  # noqa: F401  (loads its BLAS)
    from threadpoolctl import threadpool_info

    return [info["num_threads"] for info in threadpool_info()]


def omp_variable(x: int) -> str | None:
    """This worker's OMP_NUM_THREADS."""
    return os.environ.get("OMP_NUM_THREADS")


def thread_names(x: int) -> list[str]:
    """The names of the threads running in this worker."""
    import threading

    return [thread.name for thread in threading.enumerate()]


def os_threads(x: int) -> int:
    """How many threads this process runs, native ones (a BLAS library's) included."""
    return len(os.listdir("/proc/self/task"))


def log_and_square(x: int) -> int:
    """Log a warning naming ``x`` (and an info line, below the default level), then square it."""
    import logging

    logger = logging.getLogger("tests.task")
    logger.warning("working on %d", x)
    logger.info("details of %d", x)
    return x * x


# -- checkpoint of a background run ---------------------------------------------------------


def square_or_wait(x: int, hold: int, path: str) -> int:
    """``x * x``; task ``hold`` first waits for ``path`` to exist."""
    if x == hold:
        wait_for_path(x, path)
    return x * x
