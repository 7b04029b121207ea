"""The packages' layers, read from the source: no import cycle between modules, and each layer imports
only the layers below it.

mscluster/ (the floor: rank API, events, files, errors) < trainer/ (runs on each device) and launcher/
(plans and supervises; never MindSpore) < mscluster_cli/ (the ``mscluster`` command). Every import
counts, the ones inside functions too: a deferred import is still a dependency, it only hides a cycle.
"""
from __future__ import annotations

import ast
import functools
import os
from typing import Iterator, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("mscluster", "mscluster_cli", "launcher", "trainer")
# what each package may import of the others (and itself)
ALLOWED = {
    "mscluster": {"mscluster"},
    "trainer": {"mscluster", "trainer"},
    "launcher": {"mscluster", "trainer", "launcher"},
    "mscluster_cli": {"mscluster", "trainer", "launcher", "mscluster_cli"},
}


def project_modules() -> dict[str, str]:
    """{dotted module name: file} of every module of the project's packages."""
    modules = {}
    for package in PACKAGES:
        for folder, dirs, files in os.walk(os.path.join(ROOT, package)):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                if name.endswith(".py"):
                    parts = os.path.relpath(os.path.join(folder, name), ROOT)[:-3].split(os.sep)
                    if parts[-1] == "__init__":
                        parts = parts[:-1]
                    modules[".".join(parts)] = os.path.join(folder, name)
    return modules


def imported_names(path: str, module: str) -> Iterator[tuple[str, int]]:
    """(dotted name, line) of every import in the file, at any depth; ``from a import b`` gives a.b."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            yield base, node.lineno
            for alias in node.names:
                yield f"{base}.{alias.name}", node.lineno


def resolve(name: str, modules: dict[str, str]) -> Optional[str]:
    """The project module an imported name is (or lives in); None outside the project."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


@functools.lru_cache(maxsize=None)  # read once for every test here (they only read it)
def import_graph() -> tuple[dict[str, dict[str, int]], dict[str, set[str]]]:
    """({module: {project module it imports: line}}, {module: top-level names it imports from outside})."""
    modules = project_modules()
    graph: dict[str, dict[str, int]] = {m: {} for m in modules}
    outside: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for name, line in imported_names(path, module):
            target = resolve(name, modules)
            if target is None:
                outside[module].add(name.split(".")[0])
            elif target != module and not module.startswith(target + "."):  # a package's own __init__ is no edge
                graph[module].setdefault(target, line)
    return graph, outside


def find_cycle(graph: dict[str, dict[str, int]]) -> Optional[list[str]]:
    """One import cycle (its modules, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> Optional[list[str]]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def test_the_graph_sees_every_package_and_deferred_imports():
    graph, _ = import_graph()
    assert {m.split(".")[0] for m in graph} == set(PACKAGES)
    # the agent imports the connect-back inside main(): a function-level import is an edge too
    assert "launcher.connect_back" in graph["launcher.agent"]


def test_no_import_cycle():
    graph, _ = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + describe(cycle, graph)


def test_each_layer_imports_only_the_layers_below():
    graph, _ = import_graph()
    wrong = [f"{m} imports {t} (line {line})" for m, targets in sorted(graph.items())
             for t, line in sorted(targets.items()) if t.split(".")[0] not in ALLOWED[m.split(".")[0]]]
    assert not wrong, "\n".join(wrong)


def test_launcher_and_the_floor_never_import_mindspore():
    _, outside = import_graph()
    wrong = sorted(m for m, names in outside.items() if m.split(".")[0] in ("launcher", "mscluster")
                   and "mindspore" in names)
    assert not wrong, f"imports MindSpore: {', '.join(wrong)}"


def private_uses() -> list[str]:
    """Where a module uses another module's underscore name: ``from m import _x`` or ``m._x``."""
    modules = project_modules()
    found = []
    for module, path in sorted(modules.items()):
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        aliases = {}  # local name -> the project module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and resolve(node.module, modules):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append(f"{module} (line {node.lineno}) imports {node.module}.{alias.name}")
                    if f"{node.module}.{alias.name}" in modules:
                        aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname and alias.name in modules:
                        aliases[alias.asname] = alias.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")
                    and aliases[node.value.id] != module):
                found.append(f"{module} (line {node.lineno}) uses {aliases[node.value.id]}.{node.attr}")
    return found


def test_no_module_uses_another_modules_private_names():
    wrong = private_uses()
    assert not wrong, "make it public in its home module:\n" + "\n".join(wrong)


def test_a_cycle_is_found_and_named():
    graph = {"a": {"b": 3}, "b": {"c": 7}, "c": {"a": 1}, "d": {"a": 2}}
    cycle = find_cycle(graph)
    assert cycle == ["a", "b", "c", "a"]
    assert describe(cycle, graph) == "a (line 3) -> b (line 7) -> c (line 1) -> a"
    assert find_cycle({"a": {"b": 1}, "b": {}}) is None
