"""The suite's own layout: helpers live in helper modules (helpers.py, install_site.py and the
*_site.py modules), never in a test module that others import, and nothing imports conftest.py
(pytest loads it; a helper module importing it back made import cycles)."""
from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (functions too), by its first name."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_no_module_imports_a_test_module_or_conftest() -> None:
    found = {path.name: sorted(name for name in imported_modules(path)
                               if name.startswith("test_") or name == "conftest")
             for path in sorted(TESTS.glob("*.py"))}
    assert {name: bad for name, bad in found.items() if bad} == {}
