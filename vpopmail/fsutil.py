"""Durable file replacement, owned directories and vpopmail-style ``.lock`` files.

Locks are POSIX record locks (``fcntl.lockf``) on a separate lock file, the kind C vpopmail takes
with ``F_SETLK``: a pyvpopmail command and a C vpopmail command working on the same host exclude
each other. (flock-based locks, such as the filelock package's, would not.) Lock files are never
unlinked, since deleting a held lock file lets a second process lock a new one at once.
"""
import errno
import os
import time

from vpopmail.errors import CouldNotUpdateFile, LockTimeout


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data`` to ``fd``, however many ``write`` calls it takes."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fsync_dir(path: str) -> None:
    """Make a rename or link in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_owner(fd: int, uid: int | None, gid: int | None) -> None:
    """Give ``fd`` the owner vpopmail wants, if it is not already so."""
    if uid is None or gid is None:
        return
    st = os.fstat(fd)
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.fchown(fd, uid, gid)


def atomic_write(path: str, data: bytes, mode: int = 0o644, uid: int | None = None,
                 gid: int | None = None, sync: bool = True, tmp: str | None = None) -> None:
    """Replace ``path`` with ``data``: exclusive temp file, fsync, rename, fsync of the directory.

    The temp file is ``tmp`` (same filesystem) or ``<path>.tmp.<pid>``.
    Readers see the old file or the new one, never a mix. Any failure leaves ``path`` untouched
    and raises :class:`CouldNotUpdateFile` (a temporary fault: disk full, EIO, permissions).
    """
    directory = os.path.dirname(path) or "."
    tmp = tmp or f"{path}.tmp.{os.getpid()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        try:
            fd = os.open(tmp, flags, mode)
        except FileExistsError:
            os.unlink(tmp)  # left by a crashed process with our pid
            fd = os.open(tmp, flags, mode)
    except OSError as exc:
        raise CouldNotUpdateFile(f"{tmp}: {exc.strerror}") from None
    try:
        try:
            write_all(fd, data)
            os.fchmod(fd, mode)
            ensure_owner(fd, uid, gid)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        if sync:
            fsync_dir(directory)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise CouldNotUpdateFile(f"{path}: {exc.strerror}") from None


def remove_tree(path: str) -> None:
    """Delete a directory tree, ignoring what is already gone or will not go, as
    ``shutil.rmtree(path, ignore_errors=True)`` but without its imports (re, enum, fnmatch:
    a third of vdeluser's start-up). Bottom-up through directory fds; a symlink inside is
    removed, never followed; ``path`` itself being a symlink, nothing is removed."""
    if os.path.islink(path):
        return
    try:
        for _, dirs, files, fd in os.fwalk(path, topdown=False):
            for name in files:
                _remove(name, fd, False)
            for name in dirs:  # each emptied already, or a symlink to a directory
                _remove(name, fd, True)
    except OSError:  # path is gone (the walk ignores errors below it)
        return
    try:
        os.rmdir(path)  # and only a directory: a file named by ``path`` stays
    except OSError:
        pass


def _remove(name: str, fd: int, directory: bool) -> None:
    try:
        if not directory:
            os.unlink(name, dir_fd=fd)
            return
        try:
            os.rmdir(name, dir_fd=fd)
        except NotADirectoryError:
            os.unlink(name, dir_fd=fd)
    except OSError:
        pass


def make_dir(path: str, mode: int = 0o700, uid: int | None = None, gid: int | None = None) -> bool:
    """Create one directory with vpopmail's mode and owner; False if it already existed."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        return False
    os.chmod(path, mode)
    if uid is not None and gid is not None:
        os.chown(path, uid, gid)
    return True


class OwnerIds:
    """``with OwnerIds(uid, gid):`` work with a domain owner's effective ids, so that what is
    made belongs to it and a path its owner planted (a symlink out of the domain) reaches
    nothing the owner could not reach anyway. Root switches and switches back; any other
    process works as itself (a context manager without contextlib: hot-path modules import
    this one)."""

    def __init__(self, uid: int, gid: int) -> None:
        self.uid, self.gid = uid, gid
        self.saved: tuple[list[int], int] | None = None

    def __enter__(self) -> "OwnerIds":
        if os.geteuid() == 0 and self.uid != 0:
            self.saved = (os.getgroups(), os.getegid())
            os.setgroups([self.gid])
            os.setegid(self.gid)
            os.seteuid(self.uid)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.saved is not None:
            groups, egid = self.saved
            self.saved = None
            os.seteuid(0)
            os.setegid(egid)
            os.setgroups(groups)


class FileLock:
    """An exclusive POSIX lock on ``path`` (created 0600, owned uid/gid when given), waited for
    at most ``timeout`` seconds; failing to open or get it is a temporary fault."""

    __slots__ = ("path", "timeout", "owner", "_fd")

    def __init__(self, path: str, timeout: float = 20.0, uid: int | None = None,
                 gid: int | None = None) -> None:
        self.path = path
        self.timeout = timeout
        self.owner = (uid, gid)
        self._fd = -1

    def __enter__(self) -> "FileLock":
        import fcntl

        try:
            # O_NOFOLLOW: a lock file planted as a symlink must not make root open (and chown)
            # its target
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            ensure_owner(fd, *self.owner)
        except OSError as exc:
            raise CouldNotUpdateFile(f"lock {self.path}: {exc.strerror}") from None
        deadline = time.monotonic() + self.timeout
        pause = 0.001
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.ENOLCK):
                    os.close(fd)
                    raise
            if time.monotonic() >= deadline:
                os.close(fd)
                raise LockTimeout(self.path)
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        self._fd = fd
        return self

    @property
    def fd(self) -> int:
        """The open lock file (for small state kept in it while the lock is held)."""
        return self._fd

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)
        self._fd = -1
