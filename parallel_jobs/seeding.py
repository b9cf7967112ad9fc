"""Each task's own seed: the numbers sciris gives, paid for only by the tasks that draw.

The parent draws a run's entropy from the caller's NumPy RNG (:func:`draw_entropy`), as sciris
does for its process parallelizers; a worker's :class:`TaskSeeder` derives each task's seed from
it and seeds NumPy's and Python's global generators at the task's first draw. The parent calls
:func:`prepare_seeding` and :func:`binds_random_early` before workers start; the worker loop
(:mod:`parallel_jobs.worker`) uses the seeder. This module imports nothing of the package.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["TaskSeeder", "binds_random_early", "draw_entropy", "prepare_seeding"]


def draw_entropy() -> int | None:
    """One draw from the caller's NumPy global RNG, exactly as sciris makes it for its process
    parallelizers, from which every task's seed is derived; None when the caller has not
    imported NumPy (then nothing is drawn and nothing is reseeded)."""
    np = sys.modules.get("numpy")
    if np is None:
        return None
    return int(np.random.randint(2**63, dtype=np.int64))


def binds_random_early(func: Any) -> bool:
    """Whether ``func``'s module (or ``__main__``) holds a function of NumPy's or Python's
    global RNG under a name of its own (``from numpy.random import rand``): calls through it
    bypass the lazy seeding hooks, so such a run seeds before every task instead."""
    import inspect

    targets = {id(real) for _, _, real in _rng_functions()}
    spaces = [vars(sys.modules["__main__"])] if "__main__" in sys.modules else []
    try:
        spaces.append(inspect.unwrap(func).__globals__)
    except AttributeError:
        module = sys.modules.get(getattr(func, "__module__", None) or "")
        if module is not None:
            spaces.append(vars(module))
    return any(id(value) in targets for space in spaces for value in list(space.values()))


def _rng_functions() -> list[tuple[Any, str, Any]]:
    """(module, name, function) for each module-level function of NumPy's global RandomState
    and of Python's ``random`` module: what draws from the generators a task inherits.

    Found once per process and generator (0.3 ms: a forked worker's first task would wait
    for it), and first in the parent, whose forked workers inherit the list.
    """
    import random

    np = sys.modules.get("numpy")
    # The hidden generators behind the module-level functions have only private names; their
    # functions' __self__ is no way to them once hooks replaced those functions. Without them
    # no task is seeded: tests/test_fidelity.py::test_a_seeded_caller_gets_the_numbers_sciris_gives
    # fails.
    legacy = None if np is None else np.random.mtrand._rand
    key = (id(random._inst), id(legacy))
    if _RNG_FUNCTIONS and _RNG_FUNCTIONS[0] == key:
        return _RNG_FUNCTIONS[1]
    found = [(random, name, value) for name, value in vars(random).items()
             if getattr(value, "__self__", None) is random._inst]
    if np is not None:
        for module in (np.random, np.random.mtrand):
            found += [(module, name, value) for name, value in vars(module).items()
                      if getattr(value, "__self__", None) is legacy]
    _RNG_FUNCTIONS[:] = [key, found]
    return found


_RNG_FUNCTIONS: list[Any] = []


_MASK = 0xFFFFFFFF
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R = 0xCA01F9DD, 0x4973F715


def _hashmix(value: int, const: list[int]) -> int:
    value ^= const[0]
    const[0] = (const[0] * _MULT_A) & _MASK
    value = (value * const[0]) & _MASK
    return value ^ (value >> 16)


def _mix(x: int, y: int) -> int:
    result = (_MIX_L * x - _MIX_R * y) & _MASK
    return result ^ (result >> 16)


class TaskSeeder:
    """Gives every task the seed sciris gives it, paying only in the tasks that draw.

    sciris 3.4+ seeds NumPy's global RNG before each task of a process parallelizer with
    ``SeedSequence(entropy).spawn(njobs)[index].generate_state(1)[0]``. Seeding costs about
    7 us (NumPy's and Python's generators), more than a tiny task takes, so it happens at a
    task's first draw instead: the module-level functions of both generators (``np.random.rand``,
    ``random.random``, ...) are replaced by hooks that seed both generators for the running
    task, put the real functions back and make the call. A task that never draws costs nothing;
    the next task re-arms the hooks if they fired. Python's ``random`` gets the same seed
    (sciris leaves it to the operating system's entropy).

    The seed of task ``index`` is computed from the entropy and the index with the arithmetic
    of NumPy's ``SeedSequence`` for one spawn key word (1.5 us instead of 18 us).
    """

    _current: TaskSeeder | None = None

    def __init__(self, entropy: int, eager: bool) -> None:
        self.entropy = entropy
        self.eager = eager
        # The entropy's 63 bits as 32-bit words, padded to the pool size as SeedSequence pads
        # them when a spawn key follows; the pool depends on the entropy alone, so it is mixed once.
        words = [entropy & _MASK, (entropy >> 32) & _MASK, 0, 0]
        const = [_INIT_A]
        mixer = [_hashmix(word, const) for word in words]
        for src in range(4):
            for dst in range(4):
                if src != dst:
                    mixer[dst] = _mix(mixer[dst], _hashmix(mixer[src], const))
        self._pool0, self._const = mixer[0], const[0]
        self.index = 0
        self.armed = False
        self._hooks: list[tuple[Any, str, Any, Any]] = [] if eager else _hooks()

    @classmethod
    def for_run(cls, entropy: int | None, eager: bool) -> TaskSeeder | None:
        """This process's seeder for a run drawn with ``entropy`` (made once, then reused by
        each chunk), or None when the run reseeds nothing."""
        if entropy is None:
            return None
        current = cls._current
        if current is None or current.entropy != entropy or current.eager != eager:
            if current is not None:
                current.end()
            if "numpy" not in sys.modules:
                import numpy  # noqa: F401  (the caller had it: a task may draw from it)
            current = cls._current = cls(entropy, eager)
        return current

    def seed_of(self, index: int) -> int:
        """The seed sciris gives task ``index`` of a run drawn with this entropy.

        Examples:
            >>> import numpy as np
            >>> spawned = np.random.SeedSequence(12345).spawn(3)[2]
            >>> TaskSeeder(12345, eager=True).seed_of(2) == int(spawned.generate_state(1)[0])
            True
        """
        if index > _MASK:
            import numpy as np

            sequence = np.random.SeedSequence(self.entropy, spawn_key=(index,))
            return int(sequence.generate_state(1)[0])
        # The spawn key is the last entropy word: SeedSequence mixes it into each pool word,
        # and the first output word reads pool word 0 only.
        value = (index ^ self._const) * ((self._const * _MULT_A) & _MASK) & _MASK
        value ^= value >> 16
        data = (_mix(self._pool0, value) ^ _INIT_B) * ((_INIT_B * _MULT_B) & _MASK) & _MASK
        return data ^ (data >> 16)

    def begin(self, index: int) -> None:
        """Task ``index`` starts: seed now (eager), or arm the hooks for its first draw."""
        self.index = index
        if self.eager:
            self.seed()
        elif not self.armed:
            for module, name, _, hook in self._hooks:
                setattr(module, name, hook)
            self.armed = True

    def end(self) -> None:
        """Put the real functions back (at a first draw, and after each chunk)."""
        if self.armed:
            for module, name, real, _ in self._hooks:
                setattr(module, name, real)
            self.armed = False

    def seed(self) -> None:
        """Seed NumPy's and Python's global generators for the running task."""
        import random

        seed = self.seed_of(self.index)
        np = sys.modules.get("numpy")
        if np is not None:
            np.random.seed(seed)
        random.seed(seed)



def _hooks() -> list[tuple[Any, str, Any, Any]]:
    """(module, name, real function, hook) for each function of :func:`_rng_functions`; made
    once per process, like that list, and in the parent first, so that forked workers inherit
    them instead of spending their first task's time on 100 closures."""
    functions = _rng_functions()
    if _HOOKS and _HOOKS[0] is functions:
        return _HOOKS[1]
    made = [(module, name, real, _hook(real)) for module, name, real in functions]
    _HOOKS[:] = [functions, made]
    return made


_HOOKS: list[Any] = []


def _hook(real: Any) -> Any:
    def first_draw(*args: Any, **kwargs: Any) -> Any:
        seeder = TaskSeeder._current
        if seeder is not None:
            seeder.end()
            seeder.seed()
        return real(*args, **kwargs)

    first_draw.__name__ = getattr(real, "__name__", "first_draw")
    first_draw.__doc__ = getattr(real, "__doc__", None)
    return first_draw


def prepare_seeding() -> None:
    """In the parent, before workers fork: find the random functions and make their hooks."""
    _hooks()
