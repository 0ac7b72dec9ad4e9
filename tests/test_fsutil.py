"""vpopmail/fsutil.py: the descriptor-relative tree remover's two error policies (real files;
the faults made by working as the unprivileged vpopmail user, uid 89) and a FIFO swapped in
for a directory while it works, and the ``os.path``
functions the hot paths take from here, against ``posixpath``."""
from __future__ import annotations

import os
import posix
import posixpath
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from install_site import vpopmail_user_exists

from vpopmail.fsutil import OwnerIds, dirname, exists, is_dir, is_file, join, remove_tree_at

needs_uid_89 = pytest.mark.skipif(os.geteuid() != 0 or not vpopmail_user_exists(),
                                  reason="needs root and the vpopmail user (uid 89)")

PATHS = ["", "/", "//", "a", "/a", "/a/", "a/b/", "a//b", "//a//b//c", "/a/b//", ".", ".."]


@pytest.mark.parametrize("path", PATHS)
def test_dirname_is_posixpaths(path: str) -> None:
    assert dirname(path) == posixpath.dirname(path)


@pytest.mark.parametrize("parts", [("",), ("a", "b"), ("a/", "b"), ("/a", "/b", "c"), ("", "b"),
                                   ("a", ""), ("/x", "y", "z/"), ("a", "", "b"), ("/",)])
def test_join_is_posixpaths(parts: tuple[str, ...]) -> None:
    assert join(*parts) == posixpath.join(*parts)


def test_kind_checks_are_posixpaths(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to("file")
    (tmp_path / "dangling").symlink_to("nowhere")
    for name in ("file", "dir", "link", "dangling", "missing", "file/below", "nul\0byte"):
        path = str(tmp_path / name)
        assert (exists(path), is_dir(path), is_file(path)) == (
            posixpath.exists(path), posixpath.isdir(path), posixpath.isfile(path)), name


@pytest.fixture
def tree() -> Iterator[Path]:
    """``top`` (uid 89's) holding ``a/file`` (uid 89's) and ``locked/file`` (root's directory,
    so uid 89 cannot empty it), in a directory uid 89 can enter."""
    base = Path(tempfile.mkdtemp(prefix="fsutil-"))
    base.chmod(0o755)
    top = base / "top"
    for sub in ("a", "locked"):
        (top / sub).mkdir(parents=True)
        (top / sub / "file").write_text("x")
    for path in (base, top, top / "a", top / "a" / "file", top / "locked" / "file"):
        os.chown(path, 89, 89)
    yield base
    shutil.rmtree(base)


def remove(base: Path, ignore_errors: bool) -> None:
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with OwnerIds(89, 89):
            remove_tree_at(fd, "top", ignore_errors)
    finally:
        os.close(fd)


@needs_uid_89
def test_remove_tree_ignoring_errors_removes_what_it_can(tree: Path) -> None:
    remove(tree, ignore_errors=True)
    assert sorted(str(p.relative_to(tree)) for p in tree.rglob("*")) == [
        "top", "top/locked", "top/locked/file"]


@needs_uid_89
def test_remove_tree_reporting_errors_raises_the_first(tree: Path) -> None:
    with pytest.raises(PermissionError) as caught:
        remove(tree, ignore_errors=False)
    assert caught.value.filename == "file"
    assert (tree / "top" / "locked" / "file").exists()


def test_a_fifo_swapped_in_for_a_directory_is_removed_not_waited_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A domain owner swaps a FIFO in for a directory of the tree between the listing and the
    directory's open (done here at the open): the remover unlinks the FIFO and goes on; it
    does not wait for a writer (root's vdeluser hung there) or reach the moved tree."""
    top = tmp_path / "top"
    (top / "sub" / "deep").mkdir(parents=True)
    (top / "sub" / "file").write_text("x")
    real_open = posix.open

    def swapping_open(path: str, flags: int, mode: int = 0o777, *,
                      dir_fd: int | None = None) -> int:
        if path == "sub" and (top / "sub").is_dir():
            os.rename(top / "sub", tmp_path / "moved")
            os.mkfifo(top / "sub")
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", swapping_open)  # os.fwalk's
    monkeypatch.setattr(posix, "open", swapping_open)
    fd = real_open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        remover = threading.Thread(target=remove_tree_at, args=(fd, "top", False), daemon=True)
        remover.start()
        remover.join(10)
        hung = remover.is_alive()
        if hung:  # a writer lets the blocked open return
            os.close(real_open(str(top / "sub"), os.O_WRONLY | os.O_NONBLOCK))
            remover.join(10)
    finally:
        os.close(fd)
    assert not hung
    assert not top.exists()
    moved = tmp_path / "moved"
    assert (moved / "file").read_text() == "x" and (moved / "deep").is_dir()


@needs_uid_89
def test_root_does_not_chown_a_lock_file_with_another_hard_link(tmp_path: Path) -> None:
    """A lock root takes for the vpopmail user (etc/vlimits.default.lock, vmoddomlimits -d;
    a domain's locks, the admin commands) that uid 89 made a hard link to one of root's files
    (fs.protected_hardlinks=0 lets it link any file; at 1, one it owned before an upgrade
    made it root's): root locks it but does not chown it (before: root's vpopmail.toml,
    renamed over etc/vlimits.default.lock, became uid 89's)."""
    from vpopmail.fsutil import FileLock

    precious = tmp_path / "vpopmail.toml"
    precious.write_text("root's\n")
    os.link(precious, tmp_path / "vlimits.default.lock")
    with FileLock(str(tmp_path / "vlimits.default.lock"), 1, 89, 89):
        pass
    assert os.stat(precious)[4:6] == (0, 0)
    made = tmp_path / "fresh.lock"
    with FileLock(str(made), 1, 89, 89):
        pass
    assert os.stat(made)[4:6] == (89, 89)


@pytest.mark.parametrize("before, after", [(0o2750, 0o2750), (0o700, 0o750), (0o770, 0o750),
                                           (0o755, 0o755), (0o750, 0o750)])
def test_a_parent_of_its_owner_keeps_its_bits_and_gains_what_is_needed(
        tmp_path: Path, before: int, after: int) -> None:
    """A parent already of the wanted owner keeps a set-gid bit or the group access it has,
    gains the bits the wanted mode needs (0750: an earlier version's 0700 bucket), and loses
    group and other write (before: every parent was set to exactly the wanted mode, so a
    set-gid 02750 became 0750 and a C-made 0750 user bucket 0700)."""
    from vpopmail.fsutil import make_dir_inside

    bucket = tmp_path / "0"
    bucket.mkdir()
    bucket.chmod(before)
    owner = (os.getuid(), os.getgid())
    assert make_dir_inside(str(tmp_path), str(bucket / "x"), 0o700, *owner, (0o750, *owner))
    assert bucket.stat().st_mode & 0o7777 == after
    assert (bucket / "x").stat().st_mode & 0o7777 == 0o700
