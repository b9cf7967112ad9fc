"""Bad input fails at construction, before any process starts, with an error naming the argument.

Except the last tests: a task given an unexpected keyword fails when it runs, with the function's
own TypeError, and the error says which task it was.
"""

from __future__ import annotations

import sys

import pytest

import parallel_jobs as pj
from parallel_jobs import Parallel, UnknownParallelizerError, parallelize
from tests import jobs


@pytest.mark.parametrize(
    ("iterarg", "iterkwargs"),
    [(None, None), ([], None), ((), None), (range(0), None), (0, None), (-3, None),
     (None, {}), (None, []), (None, {"x": []}), ([], {"x": []})],
)
def test_nothing_to_run_is_a_value_error(iterarg: object, iterkwargs: object) -> None:
    with pytest.raises(ValueError, match="iterarg"):
        Parallel(jobs.square, iterarg=iterarg, iterkwargs=iterkwargs)


def test_iterkwargs_of_unequal_lengths() -> None:
    with pytest.raises(ValueError, match=r"iterkwargs.*same length.*'x': 2.*'y': 3"):
        Parallel(jobs.multiply, iterkwargs={"x": [1, 2], "y": [1, 2, 3]})


@pytest.mark.parametrize("iterkwargs", [{"y": [1, 2]}, [{"y": 1}, {"y": 2}]])
def test_iterkwargs_disagreeing_with_iterarg(iterkwargs: object) -> None:
    with pytest.raises(ValueError, match=r"iterarg and iterkwargs.*3 and 2"):
        Parallel(jobs.multiply, iterarg=[1, 2, 3], iterkwargs=iterkwargs)


@pytest.mark.parametrize(
    ("iterkwargs", "named"),
    [
        (5, "iterkwargs must be"),
        ("xy", "iterkwargs must be"),
        ({"x": 5}, r"iterkwargs\['x'\]"),
        ({"x": "abc"}, r"iterkwargs\['x'\]"),
        ([{"x": 1}, 2], r"iterkwargs\[1\]"),
        ({1: [1, 2]}, "iterkwargs keys"),
    ],
)
def test_iterkwargs_of_the_wrong_type(iterkwargs: object, named: str) -> None:
    with pytest.raises(TypeError, match=named):
        Parallel(jobs.multiply, iterkwargs=iterkwargs)


def test_iterarg_of_the_wrong_type() -> None:
    with pytest.raises(TypeError, match="iterarg"):
        Parallel(jobs.square, iterarg=3.5)


@pytest.mark.parametrize("ncpus", [0, -1, -0.5])
def test_ncpus_not_positive(ncpus: float) -> None:
    with pytest.raises(ValueError, match="ncpus"):
        Parallel(jobs.square, [1, 2], ncpus=ncpus)


def test_ncpus_not_a_number() -> None:
    with pytest.raises(TypeError, match="ncpus"):
        Parallel(jobs.square, [1, 2], ncpus="2")


@pytest.mark.parametrize("name", ["maxcpu", "maxmem"])
@pytest.mark.parametrize("value", [0, -0.1, -50, 100.5, 250])
def test_load_limits_out_of_range(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=name):
        Parallel(jobs.square, [1, 2], **{name: value})


@pytest.mark.parametrize("name", ["maxcpu", "maxmem"])
def test_load_limits_not_numbers(name: str) -> None:
    with pytest.raises(TypeError, match=name):
        Parallel(jobs.square, [1, 2], **{name: "80%"})


@pytest.mark.parametrize(
    ("name", "value", "fraction"),
    [("maxcpu", 0.8, 0.8), ("maxcpu", 80, 0.8), ("maxmem", 1, 1.0), ("maxmem", 100, 1.0),
     ("maxmem", 0.05, 0.05)],
)
def test_load_limits_as_fraction_or_percentage(name: str, value: float, fraction: float) -> None:
    assert getattr(Parallel(jobs.square, [1, 2], **{name: value}), name) == pytest.approx(fraction)


@pytest.mark.parametrize("interval", [0, -1])
def test_interval_not_positive(interval: float) -> None:
    with pytest.raises(ValueError, match="interval"):
        Parallel(jobs.square, [1, 2], interval=interval)


def test_unknown_parallelizer_lists_the_valid_names() -> None:
    with pytest.raises(UnknownParallelizerError) as info:
        Parallel(jobs.square, [1, 2], parallelizer="turbo")
    assert isinstance(info.value, KeyError)
    message = str(info.value)
    assert "'turbo'" in message
    for name in ("default", "multiprocess", "multiprocessing", "fast", "serial", "thread"):
        assert repr(name) in message
    assert info.value.valid == (*pj.PARALLELIZERS, "<name>-copy", "<name>-async")


def test_unknown_suffix_is_an_unknown_parallelizer() -> None:
    with pytest.raises(UnknownParallelizerError):
        parallelize(jobs.square, [1, 2], parallelizer="multiprocess-turbo")


@pytest.mark.parametrize("parallelizer", ["serial-async", "serial-copy-async"])
def test_async_with_a_parallelizer_that_cannot(parallelizer: str) -> None:
    with pytest.raises(ValueError, match=r"-async.*serial"):
        Parallel(jobs.square, [1, 2], parallelizer=parallelizer)


def test_parallelizer_neither_name_nor_callable() -> None:
    with pytest.raises(TypeError, match="parallelizer"):
        Parallel(jobs.square, [1, 2], parallelizer=3)


@pytest.mark.parametrize("func", [None, 3, "square"])
def test_func_not_callable(func: object) -> None:
    with pytest.raises(TypeError, match="func must be callable"):
        Parallel(func, [1, 2])  # type: ignore[arg-type]


def test_callback_not_callable() -> None:
    with pytest.raises(TypeError, match="callback"):
        Parallel(jobs.square, [1, 2], callback=5)  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "value"), [("kwargs", [1]), ("globaldict", [1])])
def test_dict_arguments_of_the_wrong_type(name: str, value: object) -> None:
    with pytest.raises(TypeError, match=name):
        Parallel(jobs.square, [1, 2], **{name: value})


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [("timeout", 0, ValueError), ("timeout", "1", TypeError), ("retries", -1, ValueError),
     ("retries", 1.5, ValueError), ("chunksize", 0, ValueError), ("chunksize", 2.5, TypeError),
     ("start_method", "teleport", ValueError)],
)
def test_new_options_validated(option: str, value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=option):
        Parallel(jobs.square, [1, 2], **{option: value})


def test_new_options_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        Parallel(jobs.square, [1, 2], None, None, None, None, None, None, None, None, False,
                 False, None, None, True, "label", 5)  # type: ignore[misc]


def _check_names_task(error: BaseException, index: int) -> None:
    cause = error.__cause__
    assert isinstance(cause, pj.RemoteTraceback)
    assert f"Task {index} raised this" in str(cause)
    assert "unexpected keyword argument 'z'" in str(cause)
    if sys.version_info >= (3, 11):
        assert any(f"task {index}" in note for note in error.__notes__)


def test_unexpected_keyword_is_the_functions_own_type_error() -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'z'") as info:
        parallelize(jobs.square, [1, 2], ncpus=1, z=3)
    assert type(info.value) is TypeError
    _check_names_task(info.value, 0)


def test_unexpected_per_task_keyword_names_its_task() -> None:
    iterkwargs = [{"x": 1}, {"x": 2}, {"x": 3, "z": 0}]
    with pytest.raises(TypeError, match="unexpected keyword argument 'z'") as info:
        parallelize(jobs.square, iterkwargs=iterkwargs, ncpus=1)
    assert type(info.value) is TypeError
    _check_names_task(info.value, 2)
