"""The house's arrows: no import cycle between rooms, and no room imports a room on a floor above it.

Every import is read (function-level ones too) with `ast`, from the source files, without importing them.
The floors are docs/architecture.md's.
"""

from __future__ import annotations

import ast
import itertools
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("atlas_build", "validation", "dataset_cards")

# room -> floor; a module belongs to the longest room prefix of its dotted name.
FLOORS: dict[str, int] = {
    "atlas_build.cli": 5,
    "atlas_build.commands": 5,
    "atlas_build.builder": 4,
    "atlas_build.audit": 4,
    "atlas_build.intervene": 4,
    "atlas_build.publish": 4,
    "atlas_build.explore": 4,
    "atlas_build.corpora": 3,
    "validation": 2,
    "dataset_cards": 2,
    "atlas_build.metrics": 2,
    "atlas_build.engines": 2,
    "atlas_build.atlas": 1,
    "atlas_build.executors": 1,
    "atlas_build.models": 1,
    "atlas_build.routers": 1,
    # Shared plumbing every room may use: the error base classes and the name registry.
    "atlas_build.errors": 0,
    "atlas_build.registry": 0,
    "atlas_build": 0,  # the package's own __init__ (version only)
}
# "From the dataset alone": metrics may not import what produces routing, whatever the floors say.
FORBIDDEN = {
    "atlas_build.metrics": (
        "atlas_build.engines",
        "atlas_build.corpora",
        "atlas_build.models",
        "atlas_build.routers",
    ),
    "validation": ("atlas_build.engines", "atlas_build.routers"),
    # The explorer shows the atlas and metrics.json as they are: no model, no corpus builder.
    "atlas_build.explore": (
        "atlas_build.engines",
        "atlas_build.corpora",
        "atlas_build.models",
        "atlas_build.routers",
        "atlas_build.builder",
    ),
}


def room_of(module: str) -> str | None:
    best = None
    for room in FLOORS:
        if (module == room or module.startswith(room + ".")) and (best is None or len(room) > len(best)):
            best = room
    return best


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names of every module `path` imports, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            found.add(module)
            # `from pkg import submodule` imports the submodule.
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def room_graph() -> dict[str, dict[str, list[str]]]:
    """room -> imported room -> the modules (file:imported) that make the arrow."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            source = room_of(module_name(path))
            for name in imports_of(path):
                target = room_of(name)
                if source and target and target != source:
                    graph[source][target].append(f"{path.relative_to(REPO)} imports {name}")
    return graph


def test_every_module_has_a_room():
    missing = [
        str(p.relative_to(REPO))
        for package in PACKAGES
        for p in (REPO / package).rglob("*.py")
        if room_of(module_name(p)) is None
    ]
    assert not missing, f"modules outside every room of docs/architecture.md: {missing}"


def test_no_room_imports_a_room_above_it():
    upward = [
        f"{source} (floor {FLOORS[source]}) -> {target} (floor {FLOORS[target]}): {why[0]}"
        for source, targets in room_graph().items()
        for target, why in targets.items()
        if FLOORS[target] > FLOORS[source]
    ]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_metrics_and_validation_read_the_dataset_only():
    graph = room_graph()
    bad = [
        f"{source} -> {target}: {graph[source][target][0]}"
        for source, forbidden in FORBIDDEN.items()
        for target in forbidden
        if target in graph.get(source, {})
    ]
    assert not bad, "\n".join(bad)


def test_no_import_cycle_between_rooms():
    graph = room_graph()
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str], on_stack: set[str], done: set[str]) -> None:
        on_stack.add(node)
        stack.append(node)
        for nxt in graph.get(node, {}):
            if nxt in on_stack:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in done:
                visit(nxt, stack, on_stack, done)
        stack.pop()
        on_stack.discard(node)
        done.add(node)

    done: set[str] = set()
    for room in sorted(graph):
        if room not in done:
            visit(room, [], set(), done)
    described = [
        " -> ".join(cycle) + "  (" + "; ".join(graph[a][b][0] for a, b in itertools.pairwise(cycle)) + ")"
        for cycle in cycles
    ]
    assert not cycles, "import cycles between rooms:\n" + "\n".join(described)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from .schema import X", {"atlas_build.atlas.schema", "atlas_build.atlas.schema.X"}),
        ("from . import schema", {"atlas_build.atlas", "atlas_build.atlas.schema"}),
        ("def f():\n    import atlas_build.engines.hf", {"atlas_build.engines.hf"}),
    ],
)
def test_the_reader_sees_relative_and_function_level_imports(tmp_path, monkeypatch, source, expected):
    """The check itself: a relative import and an import inside a function are both found."""
    module = REPO / "atlas_build" / "atlas" / "_probe_for_the_import_test.py"
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: source)
    assert imports_of(module) == expected


def test_the_checks_catch_a_planted_upward_import_and_cycle(monkeypatch):
    """Plant atlas -> build (upward) and build -> atlas (a cycle with it): both tests must fail."""
    real = room_graph()

    def planted():
        graph = defaultdict(lambda: defaultdict(list), {k: defaultdict(list, v) for k, v in real.items()})
        graph["atlas_build.atlas"]["atlas_build.builder"].append("planted")
        graph["atlas_build.builder"]["atlas_build.atlas"].append("planted")
        return graph

    monkeypatch.setitem(globals(), "room_graph", planted)
    with pytest.raises(AssertionError, match="upward imports"):
        test_no_room_imports_a_room_above_it()
    with pytest.raises(AssertionError, match="import cycles"):
        test_no_import_cycle_between_rooms()
