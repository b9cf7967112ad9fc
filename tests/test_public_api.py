"""The public API is pinned: a name added, removed or re-signed must be a deliberate change."""

from __future__ import annotations

import inspect

import pytest

import parallel_jobs as pj

# sciris 3.6's positional parameters, in order: its users pass them by position.
SCIRIS_PARALLEL = [
    "func", "iterarg", "iterkwargs", "args", "kwargs", "ncpus", "maxcpu", "maxmem", "interval",
    "parallelizer", "serial", "progress", "callback", "globaldict", "label", "capture", "die",
    "lbkwargs", "start_method",
]
SCIRIS_PARALLELIZE = [name for name in SCIRIS_PARALLEL if name != "label"]
SCIRIS_DEFAULTS = {
    "iterarg": None, "iterkwargs": None, "args": None, "kwargs": None, "ncpus": None,
    "maxcpu": None, "maxmem": None, "interval": None, "parallelizer": None, "serial": False,
    "progress": False, "callback": None, "globaldict": None, "label": None, "capture": False,
    "die": True, "lbkwargs": None, "start_method": None,
}
NEW_OPTIONS = {"timeout": None, "retries": 0, "chunksize": None, "checkpoint": None,
               "rerun_failed": True, "initializer": None, "initargs": (),
               "max_tasks_per_worker": None, "max_worker_memory": None,
               "task_memory_limit": None, "threads_per_worker": "auto"}


def test_all_is_pinned() -> None:
    assert sorted(pj.__all__) == sorted([
        "PARALLELIZERS", "CheckpointError", "InitializerError", "LoadMonitor", "LoadSample",
        "MemoryLimitError", "Parallel", "ParallelJobsError", "RemoteTaskError",
        "RemoteTraceback", "SerializationError", "Task", "TaskResult", "TaskTimeoutError",
        "UnknownParallelizerError", "WorkerCrashedError", "__version__", "cpu_count", "imap",
        "load_checkpoint", "parallelize", "release_workers", "worker_state",
    ])


def test_every_public_name_exists_and_is_documented() -> None:
    for name in pj.__all__:
        obj = getattr(pj, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{name} has no docstring"


def _split(func: object) -> tuple[list[inspect.Parameter], list[inspect.Parameter], list[str]]:
    params = list(inspect.signature(func).parameters.values())  # type: ignore[arg-type]
    positional = [p for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
    keyword_only = [p for p in params if p.kind is p.KEYWORD_ONLY]
    var_keyword = [p.name for p in params if p.kind is p.VAR_KEYWORD]
    return positional, keyword_only, var_keyword


def test_parallelize_signature_is_sciris_plus_keyword_only_options() -> None:
    positional, keyword_only, var_keyword = _split(pj.parallelize)
    assert [p.name for p in positional] == SCIRIS_PARALLELIZE
    assert {p.name: p.default for p in positional[1:]} == {
        name: SCIRIS_DEFAULTS[name] for name in SCIRIS_PARALLELIZE[1:]}
    # parallelize() returns only the results: it keeps no records unless asked.
    assert {p.name: p.default for p in keyword_only} == {**NEW_OPTIONS, "keep_records": False}
    assert var_keyword == ["func_kwargs"]


def test_parallel_signature_is_sciris_plus_keyword_only_options() -> None:
    positional, keyword_only, var_keyword = _split(pj.Parallel)
    assert [p.name for p in positional] == SCIRIS_PARALLEL
    assert {p.name: p.default for p in positional[1:]} == SCIRIS_DEFAULTS
    assert {p.name: p.default for p in keyword_only} == {**NEW_OPTIONS, "keep_records": True}
    assert var_keyword == ["func_kwargs"]


def test_parallelize_and_parallel_take_the_same_parameter_names() -> None:
    # sciris' own test compares them, leaving out the label that only Parallel takes (a label
    # given to parallelize() goes to the function, as in sciris).
    assert set(inspect.signature(pj.parallelize).parameters) == set(
        inspect.signature(pj.Parallel).parameters) - {"label"}


def test_positional_parameters_are_those_of_the_installed_sciris() -> None:
    sc = pytest.importorskip("sciris")
    for ours, theirs in ((pj.Parallel, sc.Parallel), (pj.parallelize, sc.parallelize)):
        mine = [p.name for p in _split(ours)[0]]
        sciris = [p.name for p in _split(theirs)[0]]
        assert mine == [name for name in sciris if name != "self"]


def test_a_new_option_is_keyword_only() -> None:
    positional = [None] * (len(SCIRIS_PARALLEL) - 1)
    with pytest.raises(TypeError, match="positional"):
        pj.Parallel(abs, [1], *positional[1:], 5.0)  # type: ignore[misc]
    with pytest.raises(TypeError, match="positional"):
        pj.parallelize(abs, [1], *positional[2:], 5.0)  # type: ignore[misc]


def test_unknown_parallelizer_error_is_a_key_error() -> None:
    assert issubclass(pj.UnknownParallelizerError, KeyError)
    assert issubclass(pj.UnknownParallelizerError, pj.ParallelJobsError)


def test_version_is_a_string() -> None:
    assert isinstance(pj.__version__, str)
    assert pj.__version__.count(".") >= 1
