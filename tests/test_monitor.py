"""The LoadMonitor thread and the maxcpu/maxmem admission gate: exact with an injected sampler and
clock, plus real psutil runs."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from parallel_jobs import Parallel
from parallel_jobs.backends import resolve
from parallel_jobs.backends.base import BackendOptions
from parallel_jobs.engine.monitor import LoadGate, LoadMonitor, LoadSample, psutil_sampler
from parallel_jobs.engine.plan import RunPlan
from parallel_jobs.engine.runner import Runner
from parallel_jobs.engine.store import ResultStore
from parallel_jobs.records import Payload
from tests import jobs


class Clock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Load:
    """A sampler whose readings the test sets."""

    def __init__(self, cpu: float = 0.1, memory: float = 0.1) -> None:
        self.cpu, self.memory, self.calls = cpu, memory, 0

    def __call__(self) -> tuple[float, float, int]:
        self.calls += 1
        return self.cpu, self.memory, 1000


def make_gate(maxcpu: float | None = 0.8, maxmem: float | None = None,
              interval: float = 0.5) -> tuple[LoadGate, Load, Clock]:
    load, clock = Load(), Clock(100.0)
    monitor = LoadMonitor(interval=10.0, sampler=load, clock=clock)
    return LoadGate(monitor, maxcpu, maxmem, interval, clock=clock), load, clock


def test_monitor_keeps_samples_from_its_sampler_and_clock() -> None:
    load, clock = Load(cpu=0.25, memory=0.5), Clock(7.0)
    monitor = LoadMonitor(interval=60, sampler=load, clock=clock)
    assert monitor.latest is None
    first = monitor.sample()
    clock.now, load.cpu = 8.0, 0.75
    second = monitor.sample()
    assert first == LoadSample(7.0, 0.25, 0.5, 1000)
    assert second == LoadSample(8.0, 0.75, 0.5, 1000)
    assert monitor.samples == [first, second]
    assert monitor.latest is second


def test_monitor_thread_samples_at_start_and_stop_and_stops_at_once() -> None:
    load = Load()
    monitor = LoadMonitor(interval=3600, sampler=load, clock=Clock())
    monitor.start()
    assert load.calls == 1
    started = time.monotonic()
    monitor.stop()
    # An hour-long interval did not delay the stop: the thread waits on an event.
    assert time.monotonic() - started < 5
    assert load.calls == 2
    assert len(monitor.samples) == 2
    assert not [t for t in threading.enumerate() if t.name == "parallel_jobs-monitor"]
    monitor.stop()  # stopping twice is harmless
    assert load.calls == 2


def test_a_lazy_monitor_samples_nothing_until_its_thread_starts() -> None:
    # A progress bar alone needs no sample of a run that ends before the thread starts.
    load = Load()
    short = LoadMonitor(interval=3600, sampler=load, clock=Clock(), eager=False)
    short.start(background=False)
    short.stop()
    assert load.calls == 0
    assert short.samples == []

    longer = LoadMonitor(interval=3600, sampler=load, clock=Clock(), eager=False)
    longer.start(background=False)
    assert load.calls == 0
    longer.follow()  # the run has lasted long enough
    longer.stop()
    assert load.calls == 1  # the final sample, over the time since the thread started
    assert len(longer.samples) == 1
    assert not [t for t in threading.enumerate() if t.name == "parallel_jobs-monitor"]


def test_monitor_thread_samples_every_interval() -> None:
    class Counting(Load):
        def __init__(self) -> None:
            super().__init__()
            self.third = threading.Event()

        def __call__(self) -> tuple[float, float, int]:
            reading = super().__call__()
            if self.calls >= 3:
                self.third.set()
            return reading

    load = Counting()
    monitor = LoadMonitor(interval=0.001, sampler=load, clock=Clock())
    monitor.start()
    try:
        assert load.third.wait(30), "the thread never sampled twice"
    finally:
        monitor.stop()
    assert len(monitor.samples) >= 4


def test_gate_admits_under_the_limits() -> None:
    gate, _, _ = make_gate(maxcpu=0.8, maxmem=0.9)
    gate.monitor.sample()
    assert gate.admits(running=1)
    assert gate.next_check == 100.5
    assert gate.refusals == 0


@pytest.mark.parametrize(("cpu", "memory"), [(0.95, 0.1), (0.1, 0.95), (0.95, 0.95)])
def test_gate_refuses_over_either_limit(cpu: float, memory: float) -> None:
    gate, load, _ = make_gate(maxcpu=0.8, maxmem=0.9)
    load.cpu, load.memory = cpu, memory
    gate.monitor.sample()
    assert not gate.admits(running=1)
    assert gate.refusals == 1


def test_gate_ignores_a_limit_that_is_not_set() -> None:
    gate, load, _ = make_gate(maxcpu=None, maxmem=0.5)
    load.cpu = 1.0
    gate.monitor.sample()
    assert gate.admits(running=1)


def test_gate_spaces_its_checks_by_interval() -> None:
    gate, _, clock = make_gate(interval=0.5)
    gate.monitor.sample()
    assert gate.admits(running=1)
    clock.now = 100.49
    assert not gate.admits(running=1)
    assert gate.refusals == 0  # too early is not a refusal: the load was not even looked at
    clock.now = 100.5
    assert gate.admits(running=2)
    assert gate.next_check == 101.0


def test_gate_checks_the_latest_sample() -> None:
    gate, load, clock = make_gate()
    load.cpu = 0.95
    gate.monitor.sample()
    assert not gate.admits(running=1)
    load.cpu = 0.5
    gate.monitor.sample()
    clock.now += 0.5
    assert gate.admits(running=1)


def test_gate_never_starves_a_run() -> None:
    gate, load, clock = make_gate()
    load.cpu, load.memory = 1.0, 1.0
    gate.monitor.sample()
    assert gate.admits(running=0)
    clock.now += 0.1
    assert gate.admits(running=0)
    assert gate.refusals == 0


def test_gate_admits_before_any_sample() -> None:
    gate, _, _ = make_gate()
    assert gate.admits(running=1)


def test_gate_makes_the_monitor_sample_as_often_as_it_checks() -> None:
    gate, _, _ = make_gate(interval=0.25)
    assert gate.monitor.interval == 0.25


def _run_gated(load: Load) -> tuple[ResultStore, LoadGate]:
    """Run four 20 ms tasks on two threads behind a gate fed by ``load``."""
    plan = RunPlan(4, [0.02] * 4, None, Payload(jobs.sleep_for))
    backend = resolve("thread").build(BackendOptions(ncpus=2))
    monitor = LoadMonitor(interval=3600, sampler=load)
    gate = LoadGate(monitor, maxcpu=0.8, maxmem=None, interval=0.001)
    store = ResultStore(4)
    Runner(plan, backend, store, monitor=monitor, gate=gate, ncpus=2).run()
    return store, gate


def test_runner_starts_one_task_at_a_time_while_the_machine_is_busy() -> None:
    store, gate = _run_gated(Load(cpu=0.99))
    assert list(store.values) == [0.02] * 4
    assert gate.refusals > 0
    spans = sorted((store.started[i], store.started[i] + store.elapsed[i]) for i in range(4))
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, "a task started while another ran, over the CPU limit"


def test_runner_is_not_held_back_under_the_limits() -> None:
    store, gate = _run_gated(Load(cpu=0.1))
    assert list(store.values) == [0.02] * 4
    assert gate.refusals == 0


def test_psutil_sampler_reads_the_machine() -> None:
    sample = psutil_sampler()
    cpu, memory, available = sample()
    assert 0.0 <= cpu <= 1.0
    assert 0.0 < memory < 1.0
    assert available > 0


def test_psutil_sampler_keeps_its_baseline_across_threads() -> None:
    # psutil.cpu_percent() keeps one baseline per thread, so its first reading in a new thread
    # is 0.0; the monitor thread must not see that.
    sample = psutil_sampler()
    spent = time.process_time() + 0.1
    while time.process_time() < spent:
        pass
    readings: list[float] = []
    thread = threading.Thread(target=lambda: readings.append(sample()[0]))
    thread.start()
    thread.join()
    assert readings[0] > 0.0


def test_a_real_run_with_limits_finishes_and_records_the_load() -> None:
    P = Parallel(jobs.square, range(6), ncpus=2, maxcpu=0.999, maxmem=0.999, interval=0.01)
    P.run()
    assert P.results == [x * x for x in range(6)]
    assert len(P.load_samples) >= 2
    for sample in P.load_samples:
        assert 0.0 <= sample.cpu <= 1.0
        assert 0.0 < sample.memory < 1.0
    times = [s.time for s in P.load_samples]
    assert times == sorted(times)
    assert P.times["started"].timestamp() - 1 <= times[0] <= times[-1] <= time.time()


def test_a_run_without_limits_still_samples_the_load() -> None:
    P = Parallel(jobs.square, range(3), ncpus=2).run()
    assert len(P.load_samples) >= 2
