"""Bad input fails at construction, before any process starts, with an error naming the argument.

Except the last tests: a task given an unexpected keyword fails when it runs, with the function's
own TypeError, and the error says which task it was.
"""

from __future__ import annotations

import math
import re
import sys

import numpy as np
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


# -- a misspelt option (issue 10) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("typo", "option"),
    [("iterargs", "iterarg"), ("ncpu", "ncpus"), ("timout", "timeout"),
     ("paralellizer", "parallelizer"), ("chunk_size", "chunksize"), ("retry", "retries"),
     ("lbkwarg", "lbkwargs"), ("keep_record", "keep_records")],
)
@pytest.mark.parametrize("make", [Parallel, parallelize])
def test_a_misspelt_option_the_function_cannot_take_fails_at_construction(
    typo: str, option: str, make: object,
) -> None:
    with pytest.raises(TypeError, match=rf"'{typo}'.*did you mean '{option}'\?") as info:
        make(jobs.square, [1, 2], ncpus=2, **{typo: 2})  # type: ignore[operator]
    # Raised here, not by a task: no worker traceback is attached.
    assert info.value.__cause__ is None
    assert "square" in str(info.value)


def test_a_keyword_the_function_names_is_passed_even_if_close_to_an_option() -> None:
    assert parallelize(jobs.times_ncpu, [1, 2], ncpus=2, ncpu=3) == [3, 6]


def test_a_keyword_a_function_with_var_keywords_takes_is_passed() -> None:
    assert parallelize(jobs.with_any_keywords, [1], timout=5, ncpus=1) == [(1, [("timout", 5)])]


def test_a_function_whose_signature_cannot_be_read_gets_the_keyword() -> None:
    # A builtin that says nothing of its parameters: it decides, when it runs.
    P = Parallel(max, [1, 2], ncpu=3, serial=True)
    assert P.kwargs == {"ncpu": 3}


# -- numbers that cannot be used (issue 11 item 13) ---------------------------------------------


@pytest.mark.parametrize("ncpus", [math.inf, math.nan, -math.inf])
def test_ncpus_infinite_or_nan_names_ncpus(ncpus: float) -> None:
    with pytest.raises(ValueError, match="ncpus"):
        Parallel(jobs.square, [1, 2], ncpus=ncpus)


@pytest.mark.parametrize("name", ["interval", "timeout", "maxcpu", "maxmem"])
def test_nan_is_refused_naming_the_argument(name: str) -> None:
    with pytest.raises(ValueError, match=rf"{name} must be a number, not NaN"):
        Parallel(jobs.square, [1, 2], **{name: math.nan})


@pytest.mark.parametrize("interval", [math.inf, float("1e400")])
def test_interval_must_be_finite(interval: float) -> None:
    with pytest.raises(ValueError, match="interval must be a finite number"):
        Parallel(jobs.square, [1, 2], interval=interval)


@pytest.mark.parametrize("timeout", [math.inf, 1e12, 30 * 86400, pj.config.LONGEST_TIMEOUT])
def test_a_timeout_too_long_to_wait_for_means_none(timeout: float) -> None:
    assert Parallel(jobs.square, [1, 2], timeout=timeout).timeout is None


def test_a_timeout_just_short_of_the_longest_is_kept() -> None:
    seconds = 24 * 86400
    assert Parallel(jobs.square, [1, 2], timeout=seconds).timeout == seconds


# -- yes/no arguments (issue 11 item 13) ---------------------------------------------------------

FLAGS = ["die", "serial", "progress", "capture", "keep_records"]


@pytest.mark.parametrize("name", FLAGS)
@pytest.mark.parametrize("value", ["False", "True", "", 2, -1, 0.5, [True]])
def test_a_flag_that_is_not_a_bool_is_a_type_error(name: str, value: object) -> None:
    expected = rf"{name} must be True or False, not {re.escape(repr(value))}"
    with pytest.raises(TypeError, match=expected):
        Parallel(jobs.square, [1, 2], **{name: value})


@pytest.mark.parametrize("name", FLAGS)
@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (False, False), (1, True), (0, False), (np.bool_(True), True),
     (np.bool_(False), False), (None, False)],
)
def test_a_flag_takes_bools_numpy_bools_zero_one_and_none(
    name: str, value: object, expected: bool,
) -> None:
    P = Parallel(jobs.square, [1, 2], **{name: value})
    assert getattr(P, name) is expected


# -- capture ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("parallelizer", ["thread", "threadpool", "thread-copy", "thread-async"])
def test_capture_with_threads_is_a_value_error(parallelizer: str) -> None:
    with pytest.raises(ValueError, match=r"capture=True.*'thread'.*share one stdout"):
        Parallel(jobs.square, [1, 2], parallelizer=parallelizer, capture=True)


@pytest.mark.parametrize("parallelizer", [None, "serial", "fast", "multiprocessing"])
def test_capture_is_accepted_elsewhere(parallelizer: str | None) -> None:
    assert Parallel(jobs.square, [1, 2], parallelizer=parallelizer, capture=True).capture


# -- lbkwargs --------------------------------------------------------------------------------------


def test_lbkwargs_must_be_a_dict() -> None:
    with pytest.raises(TypeError, match="lbkwargs must be a dict, not list"):
        Parallel(jobs.square, [1, 2], lbkwargs=[("maxcpu", 0.5)])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "hint"),
    [("maxcpus", "did you mean 'maxcpu'"), ("maxload", "did you mean 'maxcpu'"),
     ("colour", "known: maxcpu, maxmem, interval, cpu_interval")],
)
def test_lbkwargs_with_an_unknown_key_names_it(key: str, hint: str) -> None:
    with pytest.raises(TypeError, match=rf"lbkwargs has no option '{key}'.*{hint}"):
        Parallel(jobs.square, [1, 2], lbkwargs={key: 0.5})


def test_lbkwargs_values_are_validated_as_the_arguments_are() -> None:
    with pytest.raises(ValueError, match="maxcpu"):
        Parallel(jobs.square, [1, 2], lbkwargs={"maxcpu": 250})
    with pytest.raises(ValueError, match="interval must be a finite number"):
        Parallel(jobs.square, [1, 2], lbkwargs={"interval": math.inf})


LBKWARGS_CASES = [
    ({}, {}),
    ({"maxcpu": 0.5}, {}),
    ({"maxcpu": 0.5, "maxmem": 70, "interval": 0.2}, {}),
    ({"maxcpu": 0.5}, {"maxcpu": 0.7}),
    ({"maxcpu": 0.5, "interval": 0.3}, {"maxcpu": None, "interval": 0.1}),
    ({"maxcpu": 80, "cpu_interval": 0.2, "maxtime": 10, "label": "x", "verbose": True}, {}),
]


@pytest.mark.parametrize(("lbkwargs", "explicit"), LBKWARGS_CASES)
def test_lbkwargs_merge_as_in_sciris(lbkwargs: dict[str, object],
                                     explicit: dict[str, object]) -> None:
    P = Parallel(jobs.square, [1, 2], lbkwargs=lbkwargs, **explicit)
    given = {key: value for key, value in explicit.items() if value is not None}
    expected = {"maxcpu": None, "maxmem": None, "interval": None, **lbkwargs, **given}
    assert P.lbkwargs == expected
    fraction = {"maxcpu": P.maxcpu, "maxmem": P.maxmem}
    for name in ("maxcpu", "maxmem"):
        value = expected[name]
        assert fraction[name] == (None if value is None else pytest.approx(
            value / 100 if value > 1 else value))  # type: ignore[operator]
    assert P.interval == expected["interval"]


@pytest.mark.parametrize(("lbkwargs", "explicit"), LBKWARGS_CASES)
def test_lbkwargs_merge_gives_what_sciris_gives(lbkwargs: dict[str, object],
                                                explicit: dict[str, object]) -> None:
    sc = pytest.importorskip("sciris")
    theirs = sc.Parallel(jobs.square, [1, 2], lbkwargs=lbkwargs, serial=True, **explicit)
    ours = Parallel(jobs.square, [1, 2], lbkwargs=lbkwargs, serial=True, **explicit)
    assert ours.lbkwargs == dict(theirs.lbkwargs)
