"""The suite's per-test installs (install_site ``install``: copies of one real install per process)
are what packaging/install makes at their paths."""
from __future__ import annotations

import marshal
import os
import shutil
from pathlib import Path

import pytest

from install_site import VENV, install, own_account, run_installer, vpopmail_user_exists

#: made again for each install (it records the TOML file's inode): compared by its values
CACHE = "vpopmail.toml.cache"


def tree(base: Path) -> dict[Path, tuple[object, ...]]:
    """Every path under ``base``: its type, mode and owner, and its content (a symlink's
    target; a cache's values; not bytecode, which keeps its compile-time file names)."""
    found: dict[Path, tuple[object, ...]] = {}
    for path in sorted(base.rglob("*")):
        relative, st = path.relative_to(base), path.lstat()
        content: object = None
        if path.is_symlink():
            content = os.readlink(path)
        elif path.name == CACHE:
            content = marshal.loads(path.read_bytes())[2]
        elif path.is_file() and path.suffix != ".pyc":
            content = path.read_bytes()
        found[relative] = (st.st_mode, st.st_uid, st.st_gid, content)
    return found


@pytest.mark.parametrize("mode", ["user", "root"])
def test_a_copied_install_is_the_install(mode: str) -> None:
    """Both trees (the home and qmail's) of an ``install`` at a path and of packaging/install
    at the same path: the same files, modes, owners and contents."""
    owner = own_account()
    if mode == "root":
        if os.geteuid() != 0 or not vpopmail_user_exists():
            pytest.skip("needs root and the vpopmail user")
        owner = ("vpopmail", "vchkpw")
    base = Path("/tmp") / f"pyvpopmail-suite-install-{os.getpid()}"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(mode=0o755)
    try:
        install(base / "vpopmail", base / "qmail", *owner, VENV, mode)
        install(base / "other", base / "other-qmail", *owner, VENV, mode)  # the template's 2nd
        copied = tree(base)
        for child in base.iterdir():
            shutil.rmtree(child)
        run_installer(base / "vpopmail", base / "qmail", *owner, VENV, mode)
        run_installer(base / "other", base / "other-qmail", *owner, VENV, mode)
        assert tree(base) == copied
    finally:
        shutil.rmtree(base, ignore_errors=True)
