"""The layout's rules, checked on the source: data flows one way, and each side imports only
what it may (docs/internals.md explains the layout these tests keep).

These read the package's files with ``ast``; nothing is imported or run, so they cost
milliseconds and fail with the offending line named.
"""

from __future__ import annotations

import ast
import pathlib
from collections.abc import Iterator

import pytest

import parallel_jobs

PACKAGE = pathlib.Path(parallel_jobs.__file__).parent
NAME = "parallel_jobs"

# What runs in a worker process: it must not drag the parent's machinery (threads, rich,
# psutil samplers, SQLite) into every worker, nor depend on how the parent drives a run.
WORKER_SIDE = ("records", "protocol", "worker", "worker_health", "seeding")
PARENT_SIDE = ("api", "background", "backends", "config", "engine", "report", "views")


def modules() -> Iterator[tuple[str, pathlib.Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join((NAME, *parts)), path


def imports(module: str, path: pathlib.Path, *, top_level_only: bool = False,
            ) -> Iterator[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for each import of ours in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:
        # `if TYPE_CHECKING:` blocks import nothing at run time.
        nodes = [node for node in nodes if not isinstance(node, ast.If)]
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == NAME or target.startswith(NAME + "."):
                names = [alias.name for alias in node.names]
                if not node.module:  # `from . import worker`: the names are modules
                    for name in names:
                        yield f"{target}.{name}", [], node.lineno
                else:
                    yield target, names, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(NAME + "."):
                    yield alias.name, [], node.lineno


def known(target: str, names: set[str]) -> str:
    """The module of ours that ``target`` is, or the package it lies in."""
    while target not in names and "." in target:
        target = target.rpartition(".")[0]
    return target


@pytest.mark.parametrize("top_level_only", [True, False], ids=["module level", "any import"])
def test_no_import_cycles(top_level_only: bool) -> None:
    # Imports inside functions count too: one made lazy to break a cycle still ties the two
    # modules together; lazy imports that only save import time have no way back.
    found = dict(modules())
    graph = {module: {known(target, set(found)) for target, _, _ in
                      imports(module, path, top_level_only=top_level_only)} - {module}
             for module, path in found.items()}
    # Importing a package runs its __init__, which is not a dependency in the sense that
    # matters here: only module-to-module edges count.
    cycles = []
    state: dict[str, int] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if target == NAME or target.endswith("__init__"):
                continue
            if state.get(target) == 1:
                cycles.append([*trail[trail.index(target):], target] if target in trail
                              else [module, target])
            elif target not in state:
                visit(target, [*trail, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, f"import cycles: {cycles}"


def test_no_private_name_is_imported_from_another_module_of_ours() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line} takes {name} from {target}"
        for module, path in modules()
        for target, names, line in imports(module, path)
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("side", WORKER_SIDE)
def test_the_worker_side_never_imports_the_parent_side(side: str) -> None:
    checked = 0
    for module, path in modules():
        if module != f"{NAME}.{side}" and not module.startswith(f"{NAME}.{side}."):
            continue
        checked += 1
        for target, _, line in imports(module, path):
            parent = [p for p in PARENT_SIDE if target.startswith(f"{NAME}.{p}")]
            assert not parent, f"{path.name}:{line} imports {target} (parent side)"
    assert checked, f"no module {NAME}.{side}"


def test_the_report_reads_records_not_the_parallel_object() -> None:
    path = PACKAGE / "report.py"
    targets = [target for target, _, _ in imports(f"{NAME}.report", path)]
    assert f"{NAME}.api" not in targets
