"""The packages form floors that import only downwards, with no cycle between packages
(issue 15): formats and primitives, the stores, the API, the programs. Every import counts,
also those inside functions and those made for type checking only."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = ("vpopmail", "auth", "delivery", "maildir")
#: package -> floor (docs/development.md, Layout)
FLOORS = {
    "vpopmail": 0,  # formats and primitives: config, errors, fsutil, names, cdb, qmail files …
    "maildir": 0,  # the Maildir writer and Maildir++ quota
    "vpopmail.stores": 1,  # one store per concern and the one factory
    "vpopmail.api": 2,  # what the commands share: domains, users, aliases, limits, vpopbull, vcheck
    "auth": 3,  # vchkpw
    "delivery": 3,  # vdelivermail
    "vpopmail.cli": 3,  # one module per command
    "vpopmail.vpopmaild": 3,
    "vpopmail.server": 3,
}


def package_of(module: str) -> str:
    """The package of ``module`` as FLOORS names them (the deepest listed prefix)."""
    parts = module.split(".")
    for size in range(len(parts), 0, -1):
        if ".".join(parts[:size]) in FLOORS:
            return ".".join(parts[:size])
    raise AssertionError(f"{module} is in no package of FLOORS: give it a floor")


def modules() -> dict[str, Path]:
    found = {}
    for top in OURS:
        for path in (ROOT / top).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path) -> set[str]:
    """The modules of ours that ``name`` imports anywhere in its text."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    known = modules()
    return {target for target in found if target in known}


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {package: set() for package in FLOORS}
    for name, path in modules().items():
        source = package_of(name)
        for target in imports(name, path):
            if package_of(target) != source:
                graph[source].add(package_of(target))
    return graph


def test_every_import_points_to_the_same_or_a_lower_floor() -> None:
    upward = [(source, target) for source, targets in package_graph().items()
              for target in targets if FLOORS[target] > FLOORS[source]]
    assert not upward, upward


def assert_no_cycle(graph: dict[str, set[str]]) -> None:
    """Fail with the first cycle found in ``graph`` (node -> the nodes it imports)."""
    seen: dict[str, int] = {}  # 1 on the path, 2 done

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for target in sorted(graph[node]):
            if seen.get(target) == 1:
                raise AssertionError(" -> ".join([*path, node, target]))
            if target not in seen:
                visit(target, [*path, node])
        seen[node] = 2

    for node in sorted(graph):
        if node not in seen:
            visit(node, [])


def test_no_cycle_between_packages() -> None:
    assert_no_cycle(package_graph())


def test_the_graph_sees_imports_inside_functions() -> None:
    """The checker itself: a function-level import (vchkpw's of the API) is an edge."""
    assert "vpopmail.api" in package_graph()["auth"]


def lazy_imports_of_own_modules(name: str, path: Path) -> set[str]:
    """What a package's ``__init__`` imports of its own submodules inside functions (a
    factory that loads an implementation when asked: vpopmail.stores' open_stores)."""
    if path.name != "__init__.py":
        return set()
    found = set()
    for function in ast.walk(ast.parse(path.read_text())):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(name + "."):
                    found.add(node.module or "")
                elif isinstance(node, ast.Import):
                    found.update(a.name for a in node.names if a.name.startswith(name + "."))
    return found


def test_no_cycle_between_modules_but_a_factorys_lazy_imports() -> None:
    """Modules import one way too; the one exception is a package's factory importing an
    implementation at first use, which imports the interface from the package."""
    assert_no_cycle({name: imports(name, path) - {name} - lazy_imports_of_own_modules(name, path)
                     for name, path in modules().items()})
