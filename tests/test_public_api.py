"""The public API is pinned: a name added, removed or re-signed must be a deliberate change."""

from __future__ import annotations

import inspect

import parallel_jobs as pj

SCIRIS_PARAMETERS = [
    "func", "iterarg", "iterkwargs", "args", "kwargs", "ncpus", "maxcpu", "maxmem", "interval",
    "parallelizer", "serial", "progress", "callback", "globaldict", "die",
]
SCIRIS_DEFAULTS = {
    "iterarg": None, "iterkwargs": None, "args": None, "kwargs": None, "ncpus": None,
    "maxcpu": None, "maxmem": None, "interval": None, "parallelizer": None, "serial": False,
    "progress": False, "callback": None, "globaldict": None, "die": True,
}
NEW_OPTIONS = {"timeout": None, "retries": 0, "chunksize": None, "start_method": None}


def test_all_is_pinned() -> None:
    assert sorted(pj.__all__) == sorted([
        "PARALLELIZERS", "LoadMonitor", "LoadSample", "Parallel", "ParallelJobsError",
        "RemoteTaskError", "RemoteTraceback", "SerializationError", "Task", "TaskResult",
        "TaskTimeoutError", "UnknownParallelizerError", "WorkerCrashedError", "__version__",
        "cpu_count", "parallelize", "release_workers",
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
    assert [p.name for p in positional] == SCIRIS_PARAMETERS
    assert {p.name: p.default for p in positional[1:]} == SCIRIS_DEFAULTS
    assert {p.name: p.default for p in keyword_only} == {**NEW_OPTIONS, "label": None}
    assert var_keyword == ["func_kwargs"]


def test_parallel_signature_is_sciris_plus_label_plus_keyword_only_options() -> None:
    positional, keyword_only, var_keyword = _split(pj.Parallel)
    assert [p.name for p in positional] == [*SCIRIS_PARAMETERS, "label"]
    assert {p.name: p.default for p in positional[1:]} == {**SCIRIS_DEFAULTS, "label": None}
    # keep_records is the object's only: parallelize() returns only the results.
    assert {p.name: p.default for p in keyword_only} == {**NEW_OPTIONS, "keep_records": True}
    assert var_keyword == ["func_kwargs"]


def test_unknown_parallelizer_error_is_a_key_error() -> None:
    assert issubclass(pj.UnknownParallelizerError, KeyError)
    assert issubclass(pj.UnknownParallelizerError, pj.ParallelJobsError)


def test_version_is_a_string() -> None:
    assert isinstance(pj.__version__, str)
    assert pj.__version__.count(".") >= 1
