"""Machine load: the ``LoadMonitor`` thread and the admission gate behind ``maxcpu``/``maxmem``.

The monitor samples CPU and memory with psutil into :class:`LoadSample` records every
``interval`` seconds, on a thread that sleeps on an event and stops the moment it is told. The
:class:`LoadGate` lets the Runner (the parent, never a worker) decide whether another task may
start. Both take an injected sampler and clock, so tests are exact.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import attrs

__all__ = ["LoadGate", "LoadMonitor", "LoadSample", "NullMonitor", "psutil_sampler"]


@attrs.frozen(slots=True)
class LoadSample:
    """The machine's load at one moment.

    Attributes:
        time: wall-clock time of the sample (``time.time()`` seconds).
        cpu: fraction of all CPUs busy since the previous sample, 0 to 1.
        memory: fraction of memory in use, 0 to 1.
        available: bytes of memory available to new allocations.
    """

    time: float
    cpu: float
    memory: float
    available: int


Sampler = Callable[[], tuple[float, float, int]]


def _cpu_counters() -> tuple[float, float]:
    """Total and idle CPU seconds of all CPUs since boot."""
    import psutil

    times = psutil.cpu_times()
    # On Linux, guest time is already counted in user time.
    total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    return total, times.idle + getattr(times, "iowait", 0.0)


def psutil_sampler() -> Sampler:
    """A sampler reading psutil: returns ``(cpu, memory, available)``.

    CPU load is measured from this sampler's own previous reading (the first one is taken here),
    not with ``psutil.cpu_percent``, whose baseline belongs to the calling thread and to anyone
    else in the process who calls it.
    """
    import psutil

    last = _cpu_counters()
    busy = 0.0

    def sample() -> tuple[float, float, int]:
        nonlocal last, busy
        now = _cpu_counters()
        total, idle = now[0] - last[0], now[1] - last[1]
        if total > 0:
            # Counters tick in hundredths of a second: a shorter window keeps the last value.
            busy, last = min(max(1.0 - idle / total, 0.0), 1.0), now
        vm = psutil.virtual_memory()
        return busy, vm.percent / 100.0, int(vm.available)

    return sample


class LoadMonitor:
    """Samples machine load on a background thread.

    Args:
        interval: seconds between samples.
        sampler: returns ``(cpu, memory, available)``; psutil by default.
        clock: wall-clock time source for the samples.
        eager: sample when the run starts (:meth:`start`). A monitor that is not eager reads
            nothing until its thread starts (:meth:`follow`), so a run over before then takes
            no sample and never imports psutil: what a progress bar alone needs.

    Examples:
        >>> monitor = LoadMonitor(interval=60, sampler=lambda: (0.5, 0.25, 1024), clock=lambda: 0.0)
        >>> monitor.sample()
        LoadSample(time=0.0, cpu=0.5, memory=0.25, available=1024)
    """

    def __init__(
        self,
        interval: float = 1.0,
        sampler: Sampler | None = None,
        clock: Callable[[], float] = time.time,
        eager: bool = True,
    ) -> None:
        self.interval = interval
        self.eager = eager
        # psutil measures CPU load since its previous reading: an eager monitor takes that
        # first reading now, so its first sample covers the time until the run starts rather
        # than a few microseconds; a lazy one when its thread starts.
        self._sampler = sampler if sampler is not None or not eager else psutil_sampler()
        self._clock = clock
        self.samples: list[LoadSample] = []
        self._stop = threading.Event()
        self._stop.set()  # cleared by start(); stop() before start() does nothing
        self._thread: threading.Thread | None = None
        self._followed = False

    @property
    def latest(self) -> LoadSample | None:
        """The most recent sample, or None before the first."""
        return self.samples[-1] if self.samples else None

    def sample(self) -> LoadSample:
        """Take one sample now and keep it."""
        if self._sampler is None:
            self._sampler = psutil_sampler()
        cpu, memory, available = self._sampler()
        reading = LoadSample(self._clock(), cpu, memory, available)
        self.samples.append(reading)
        return reading

    def start(self, background: bool = True) -> None:
        """Take a first sample (if eager) and, with ``background``, start sampling every
        ``interval`` seconds (see :meth:`follow`)."""
        if self.eager:
            self.sample()
        self._stop.clear()
        if background:
            self.follow()

    @property
    def following(self) -> bool:
        """Whether the sampling thread runs."""
        return self._thread is not None

    def follow(self) -> None:
        """Start the sampling thread (once)."""
        if self._thread is not None:
            return
        if self._sampler is None:
            self._sampler = psutil_sampler()  # a lazy monitor's baseline reading
        self._followed = True
        self._thread = threading.Thread(target=self._loop, name="parallel_jobs-monitor",
                                        daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        """Stop the thread at once and take a final sample (once, after :meth:`start`; a lazy
        monitor only if its thread ran)."""
        if self._thread is None and self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.samples or self._followed:
            self.sample()


class NullMonitor(LoadMonitor):
    """The monitor of a run whose load nobody will see (no progress bar, no load limits, no
    records kept): it takes no sample, starts no thread and never imports psutil.

    Examples:
        >>> monitor = NullMonitor()
        >>> monitor.start()
        >>> monitor.stop()
        >>> monitor.samples, monitor.latest
        ([], None)
    """

    def __init__(self) -> None:
        super().__init__(sampler=_never_sampled)

    def start(self, background: bool = True) -> None:
        """Do nothing."""

    def follow(self) -> None:
        """Do nothing."""

    def stop(self) -> None:
        """Do nothing."""


def _never_sampled() -> tuple[float, float, int]:  # pragma: no cover - never called
    msg = "a NullMonitor takes no samples"
    raise AssertionError(msg)


class LoadGate:
    """Decides whether another task may start, given ``maxcpu`` and ``maxmem``.

    A task is admitted while the latest sample is under both limits; when it is not, the gate is
    checked again ``interval`` seconds later, and the monitor is made to sample at least that
    often. It never starves a run: with none of the run's tasks running, the next one starts
    whatever the load.

    Examples:
        >>> monitor = LoadMonitor(sampler=lambda: (0.95, 0.5, 0), clock=lambda: 0.0)
        >>> gate = LoadGate(monitor, maxcpu=0.8, maxmem=None, interval=0.5, clock=lambda: 10.0)
        >>> _ = monitor.sample()
        >>> gate.admits(running=1), gate.next_check
        (False, 10.5)
        >>> gate.admits(running=0)
        True
    """

    def __init__(
        self,
        monitor: LoadMonitor,
        maxcpu: float | None,
        maxmem: float | None,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.monitor = monitor
        # A check against a sample older than the previous check would admit on stale news.
        monitor.interval = min(monitor.interval, interval)
        self.maxcpu = maxcpu
        self.maxmem = maxmem
        self.interval = interval
        self._clock = clock
        self.next_check = 0.0
        self.refusals = 0

    def admits(self, running: int) -> bool:
        """Whether a task may start now, with ``running`` of the run's tasks running.

        Checks are spaced ``interval`` seconds apart, so admitted tasks start staggered.
        """
        now = self._clock()
        if running == 0:
            self.next_check = now + self.interval
            return True
        if now < self.next_check:
            return False
        self.next_check = now + self.interval
        sample = self.monitor.latest
        if sample is None or self._under_limits(sample):
            return True
        self.refusals += 1
        return False

    def _under_limits(self, sample: LoadSample) -> bool:
        if self.maxcpu is not None and sample.cpu > self.maxcpu:
            return False
        return not (self.maxmem is not None and sample.memory > self.maxmem)
