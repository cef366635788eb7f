"""The packages of tfsky are layers: a package imports only from its own layer's package and the layers below.

    io -> data | batch -> models -> train -> predict -> evaluate | export -> serving | review -> cli

(``data`` and ``batch`` (the job runner and its engines) are siblings after ``io``, as are ``evaluate`` and
``export`` after ``predict`` and ``serving`` and ``review`` after them: siblings do not import each other.)
The modules at the top of the package (``tfsky.config``, ...) and the package ``tfsky.tiling`` are shared by
every layer and import none of the layered packages but ``io``; ``tfsky.__main__`` is the entry point. Below
them all, ``tfsky.errors`` and ``tfsky.progress`` (how the library reports progress and messages) import
nothing of tfsky, so every module can use them. Every import counts, including those inside functions (a lazy
import is still a dependency) and under ``TYPE_CHECKING``. No two modules of tfsky may import each other,
directly or through others.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tfsky"
LAYERS = {
    "io": 0,
    "data": 1,
    "batch": 1,
    "models": 2,
    "train": 3,
    "predict": 4,
    "evaluate": 5,
    "export": 5,
    "serving": 6,
    "review": 6,
    "cli": 7,
}
SHARED_MAY_IMPORT = {"io"}  # layered packages the top-level modules may use
SHARED_PACKAGES = {"tiling"}  # packages shared like the top-level modules (``tfsky.tiling`` split by concern)
ENTRY_POINTS = {"tfsky.__main__"}
BOTTOM = ("tfsky.errors", "tfsky.progress")  # import nothing of tfsky: every layer, even io, uses them


def module_names(root: Path) -> dict[str, Path]:
    """Dotted name -> file of every module under ``root`` (a package folder named like the package)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[int, str]]:
    """(line, imported module of the package) of every import statement in the module, wherever it is."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            # ``from tfsky import tiling`` imports the module tfsky.tiling; ``from tfsky.x import f`` tfsky.x
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        root = next(iter(modules)).split(".")[0]
        for target in targets:
            while target and target not in modules:  # ``import tfsky.a.b`` of a missing name: its nearest module
                target = target.rpartition(".")[0]
            if target and target != root and target != name and target.split(".")[0] == root:
                found.append((node.lineno, target))
    return found


def import_graph(root: Path) -> dict[str, list[tuple[int, str]]]:
    modules = module_names(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def layer_violations(graph: dict[str, list[tuple[int, str]]]) -> list[str]:
    """One line per import that goes up (or sideways between two packages of one layer)."""
    problems = []
    for name, imports in graph.items():
        if name in ENTRY_POINTS:
            continue
        parts = name.split(".")
        own = parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else None
        own = None if own in SHARED_PACKAGES else own
        for line, target in imports:
            theirs = target.split(".")[1] if len(target.split(".")) > 1 else None
            if theirs not in LAYERS or theirs == own:
                continue
            if own is None:
                allowed = theirs in SHARED_MAY_IMPORT
            else:
                allowed = LAYERS[theirs] < LAYERS[own]
            if not allowed:
                problems.append(f"{name}:{line} imports {target} ({own or 'top-level module'} -> {theirs})")
    return problems


def import_cycles(graph: dict[str, list[tuple[int, str]]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    edges = {name: sorted({target for _, target in imports}) for name, imports in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in edges.get(node, []):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return cycles


def test_no_package_imports_a_higher_layer():
    assert layer_violations(import_graph(PACKAGE)) == []


def test_no_modules_import_each_other():
    assert import_cycles(import_graph(PACKAGE)) == []


def test_the_bottom_modules_import_nothing_of_tfsky():
    graph = import_graph(PACKAGE)
    assert {name: graph[name] for name in BOTTOM} == {name: [] for name in BOTTOM}


def test_every_package_has_a_layer():
    packages = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert packages == set(LAYERS) | SHARED_PACKAGES


@pytest.fixture
def fake_package(tmp_path):
    """A package ``tfsky`` with a model module that lazily imports train, and an export pair importing each other."""
    root = tmp_path / "tfsky"
    files = {
        "__init__.py": "",
        "tiling.py": "from tfsky.io import atomic\n",
        "io/__init__.py": "",
        "io/atomic.py": "",
        "models/__init__.py": "",
        "models/bundle.py": "def f():\n    from tfsky.train.runner import fit\n",
        "train/__init__.py": "",
        "train/runner.py": "from tfsky.models import bundle\nfrom tfsky import tiling\n",
        "export/__init__.py": "",
        "export/a.py": "from .b import g\n",
        "export/b.py": "def g():\n    from tfsky.export.a import h\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_checks_find_a_lazy_upward_import_and_a_cycle(fake_package):
    graph = import_graph(fake_package)
    assert graph["tfsky.train.runner"] == [(1, "tfsky.models.bundle"), (2, "tfsky.tiling")]
    assert layer_violations(graph) == ["tfsky.models.bundle:2 imports tfsky.train.runner (models -> train)"]
    assert import_cycles(graph) == [["tfsky.export.a", "tfsky.export.b"], ["tfsky.models.bundle", "tfsky.train.runner"]]
