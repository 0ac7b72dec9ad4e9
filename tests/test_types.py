"""The library passes a strict type check (issue 15): ``mypy`` with ``[tool.mypy]`` of
pyproject.toml (strict, the four packages, the stubs in packaging/stubs)."""
import subprocess
import sys

from install_site import REPO


def test_library_passes_strict_mypy() -> None:
    run = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
