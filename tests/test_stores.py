"""The storage layer's shape (vpopmail/stores/): one factory chooses the stores, nothing else
knows the backend's name or reaches past a store's interface."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LIBRARY = ("vpopmail", "auth", "delivery", "maildir")
FACTORY = Path("vpopmail/stores/__init__.py")
SQL_MODULE = Path("vpopmail/stores/sql.py")
CONFIG = Path("vpopmail/config.py")  # declares the key (and its choices): reads nothing
#: what only the factory may do: read ``users.backend``, import the SQL module, or tell the
#: backends apart by their classes
FACTORY_ONLY = re.compile(
    r"users_backend"
    r"|^\s*(?:from vpopmail\.stores\.sql import|import vpopmail\.stores\.sql"
    r"|from vpopmail\.stores import[^\n]*\bsql\b)"
    r"|isinstance\([^)]*\b(?:CdbFiles|MySQLDatabase|SqlAliases|Aliases|SqlRelayTable)\b",
    re.MULTILINE)


def library_sources() -> list[tuple[Path, str]]:
    return [(path.relative_to(REPO), path.read_text())
            for package in LIBRARY for path in sorted((REPO / package).rglob("*.py"))]


def code_only(text: str) -> str:
    """``text`` without its docstrings and comments (they may name the backends)."""
    text = re.sub(r'"""[\s\S]*?"""', '""', text)
    return re.sub(r"#[^\n\"']*$", "", text, flags=re.MULTILINE)


def test_only_the_factory_reads_the_backend_or_imports_the_sql_module() -> None:
    found = [f"{path}: {match.group(0).strip()}" for path, text in library_sources()
             if path not in (FACTORY, SQL_MODULE, CONFIG)
             for match in FACTORY_ONLY.finditer(code_only(text))]
    assert found == []


def test_the_factory_does_both() -> None:
    """The scan above looks for what the factory really contains."""
    assert len(FACTORY_ONLY.findall(code_only((REPO / FACTORY).read_text()))) >= 2


def test_no_attribute_ignores_in_the_library() -> None:
    """A store method reached through ``type: ignore[attr-defined]`` is a downcast the type
    checker cannot see: the factory hands out typed stores and capabilities instead."""
    found = [f"{path}:{number}" for path, text in library_sources()
             for number, line in enumerate(text.splitlines(), 1)
             if "ignore[attr-defined]" in line]
    assert found == []
