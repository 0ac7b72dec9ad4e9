"""vpopmail/fsutil.py: the descriptor-relative tree remover's two error policies (real files;
the faults made by working as the unprivileged vpopmail user, uid 89) and a FIFO swapped in
for a directory while it works, the ``os.path`` functions the hot paths take from here, against
``posixpath``, and FileLock's holds: re-entrant per process and path, seen from other
processes."""
from __future__ import annotations

import fcntl
import os
import posix
import posixpath
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from install_site import vpopmail_user_exists

from vpopmail.errors import CouldNotUpdateFile, LockTimeout
from vpopmail.fsutil import (FileLock, OwnerIds, dirname, exists, is_dir, is_file, join,
                             remove_tree_at)

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


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the lock as another user")
def test_a_lock_file_it_cannot_give_its_owner_is_refused_without_a_leaked_descriptor(
        ) -> None:
    """A process that may not chown the lock file to the owner asked for (the vpopmail user
    locking a file of root's) gets CouldNotUpdateFile and keeps no descriptor of it (before:
    each such try left one open, until a long-lived process ran out)."""
    shared = tempfile.mkdtemp(prefix="pyvpopmail-lock-", dir="/tmp")  # a path uid 1 reaches
    os.chmod(shared, 0o777)
    path = os.path.join(shared, "owned.lock")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(1)
            os.setuid(1)  # daemon: may not give its file to root
            before = len(os.listdir("/proc/self/fd"))
            for _ in range(3):
                try:
                    with FileLock(path, 1, 0, 0):
                        pass
                except CouldNotUpdateFile:
                    pass
                else:
                    raise AssertionError("locked without the owner asked for")
            code = 0 if len(os.listdir("/proc/self/fd")) == before else 2
        finally:
            os._exit(code)
    try:
        assert os.waitpid(pid, 0)[1] == 0
        assert os.stat(path).st_uid == 1  # it made the file: the chown was what failed
    finally:
        shutil.rmtree(shared)


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


def lockable_elsewhere(path: str) -> bool:
    """Whether another process gets ``path``'s lock at once: a forked child's lockf LOCK_NB
    (the child's locks, never this process's, go with its exit)."""
    pid = os.fork()
    if pid == 0:
        try:
            fd = os.open(path, os.O_RDWR)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os._exit(1)
            os._exit(0)
        except BaseException:
            os._exit(2)
    status = os.waitpid(pid, 0)[1]
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) in (0, 1), status
    return os.WEXITSTATUS(status) == 0


@contextmanager
def held_elsewhere(path: str) -> Iterator[None]:
    """``path``'s lock held by a forked child until the block ends."""
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            os.close(done_w)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.lockf(fd, fcntl.LOCK_EX)
            os.write(ready_w, b"x")
            os.read(done_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(done_r)
    try:
        assert os.read(ready_r, 1) == b"x"
        yield
    finally:
        os.close(done_w)
        os.close(ready_r)
        os.waitpid(pid, 0)


def test_a_nested_hold_keeps_the_lock_for_the_outer_holder(tmp_path: Path) -> None:
    """The same FileLock entered again inside its own hold: the inner exit leaves the lock
    held (before: the inner enter opened a second descriptor, whose close dropped the
    process's lock, and the outer holder went on unlocked)."""
    path = str(tmp_path / "x.lock")
    lock = FileLock(path, 1)
    with lock:
        fd = lock.fd
        with lock:
            pass
        assert not lockable_elsewhere(path)
        assert lock.fd == fd
        os.fstat(fd)  # still open
    assert lock.fd == -1
    assert lockable_elsewhere(path)


def test_two_locks_on_one_path_share_one_hold(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Other FileLock objects on a path this process holds join the hold: they open nothing,
    share the descriptor, say they did not take it, and the lock lasts until the outermost
    exit."""
    path = str(tmp_path / "x.lock")
    opened: list[str] = []
    real_open = posix.open

    def counting_open(name: str, flags: int, mode: int = 0o777, *,
                      dir_fd: int | None = None) -> int:
        opened.append(name)
        return real_open(name, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(posix, "open", counting_open)
    outer = FileLock(path, 1)
    with outer:
        with FileLock(path, 1) as middle:
            with FileLock(path, 1) as inner:
                fds = (middle.fd, inner.fd)
            assert not lockable_elsewhere(path)
        assert not lockable_elsewhere(path)
        assert opened == [path]
        assert fds == (outer.fd, outer.fd)
        assert (outer.took, middle.took, inner.took) == (True, False, False)
    assert lockable_elsewhere(path)
    with FileLock(path, 1) as again:  # the hold is gone: taken anew
        assert again.took and opened == [path, path]


def test_a_forked_child_does_not_inherit_the_hold(tmp_path: Path) -> None:
    """A child forked while this process holds a lock holds none of it: its FileLock on the
    path waits for the parent (and times out), and leaving the parent's hold in the child
    closes nothing (that descriptor number may be another file's there by then; before, it
    was closed)."""
    path = str(tmp_path / "x.lock")
    lock = FileLock(path, 1)
    with lock:
        pid = os.fork()
        if pid == 0:
            try:
                start = time.monotonic()
                try:
                    with FileLock(path, 0.3):
                        os._exit(3)  # joined a hold it does not have
                except LockTimeout:
                    pass
                if time.monotonic() - start < 0.25:
                    os._exit(4)
                os.dup2(os.open("/dev/null", os.O_RDONLY), lock.fd)  # the number, reused
                reused = lock.fd
                lock.__exit__(None, None, None)
                try:
                    os.fstat(reused)
                except OSError:
                    os._exit(6)  # closed
                os._exit(0)
            except BaseException:
                os._exit(5)
        status = os.waitpid(pid, 0)[1]
        assert not lockable_elsewhere(path)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    assert lockable_elsewhere(path)


def test_exceptions_leave_nested_holds_in_order(tmp_path: Path) -> None:
    """An exception out of an inner hold gives back only that hold; out of the outer one,
    the lock."""
    path = str(tmp_path / "x.lock")
    with pytest.raises(RuntimeError):
        with FileLock(path, 1):
            with pytest.raises(ValueError):
                with FileLock(path, 1):
                    raise ValueError
            assert not lockable_elsewhere(path)
            raise RuntimeError
    assert lockable_elsewhere(path)
    with FileLock(path, 1) as again:
        assert again.took


def test_holds_survive_a_failure_on_another_path(tmp_path: Path) -> None:
    """A LockTimeout or CouldNotUpdateFile on another path inside nested holds changes
    neither those holds nor leaves a hold of its own."""
    path, other = str(tmp_path / "x.lock"), str(tmp_path / "other.lock")
    with FileLock(path, 1):
        with FileLock(path, 1):
            with held_elsewhere(other):
                with pytest.raises(LockTimeout):
                    with FileLock(other, 0.05):
                        pass
            with pytest.raises(CouldNotUpdateFile):
                with FileLock(str(tmp_path / "missing" / "x.lock"), 0.05):
                    pass
        assert not lockable_elsewhere(path)
        with FileLock(path, 1) as joined:
            assert not joined.took
        assert not lockable_elsewhere(path)
        with FileLock(other, 1) as taken:  # its timeout left no hold behind
            assert taken.took
            assert not lockable_elsewhere(other)
        assert lockable_elsewhere(other)
    assert lockable_elsewhere(path)
