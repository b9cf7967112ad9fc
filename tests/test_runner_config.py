"""A Runner built from a RunConfig: the parts it builds for itself and the outcome it hands back."""

from __future__ import annotations

import pytest

from parallel_jobs.config import RunConfig, make_payload
from parallel_jobs.engine.monitor import LoadGate, LoadMonitor, NullMonitor
from parallel_jobs.engine.plan import RunPlan
from parallel_jobs.engine.runner import Runner
from parallel_jobs.engine.store import ResultStore
from tests import jobs


def _runner(njobs: int, globaldict: dict[str, int] | None = None, **options: object) -> Runner:
    config = RunConfig.create(njobs, globaldict is not None, **options)
    payload = make_payload(jobs.count_in_globaldict if globaldict is not None else jobs.square,
                           None, None, globaldict, {})
    plan = RunPlan(njobs, list(range(njobs)), None, payload, globaldict)
    store = ResultStore(njobs, config.retries, config.keep_records, config.capture)
    return Runner.from_config(config, plan, store)


def test_a_runner_hands_back_its_outcome_once_it_has_ended() -> None:
    runner = _runner(3, {}, parallelizer="thread", ncpus=2)
    assert runner.outcome is None
    runner.run()
    assert runner.outcome is not None
    assert runner.outcome.globaldict == {0: 0, 1: 10, 2: 20}
    assert runner.outcome.load_samples  # keep_records (the default) samples the load
    assert (runner.outcome.workers_replaced, runner.outcome.memory_limits_hit) == ([], 0)
    assert list(runner.store.values) == [1, 2, 3]


@pytest.mark.parametrize(("options", "monitor", "gated"), [
    ({"keep_records": False}, NullMonitor, False),
    ({"keep_records": False, "progress": True}, LoadMonitor, False),
    ({"keep_records": False, "maxcpu": 0.99}, LoadMonitor, True),
])
def test_a_runner_builds_only_the_parts_its_config_asks_for(
        options: dict[str, object], monitor: type, gated: bool) -> None:
    runner = _runner(2, parallelizer="serial", **options)
    assert type(runner.monitor) is monitor
    assert isinstance(runner.gate, LoadGate) is gated
    runner.run()
    assert runner.outcome is not None
    assert runner.outcome.load_samples == [] or monitor is LoadMonitor
