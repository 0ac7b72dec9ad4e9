"""Durable file replacement, owned directories and vpopmail-style ``.lock`` files.

Locks are POSIX record locks (``fcntl.lockf``) on a separate lock file, the kind C vpopmail takes
with ``F_SETLK``: a pyvpopmail command and a C vpopmail command working on the same host exclude
each other. (flock-based locks, such as the filelock package's, would not.) Lock files are never
unlinked, since deleting a held lock file lets a second process lock a new one at once.

The hot paths never import ``os`` (1.4 ms of every delivery and login: ``_collections_abc``
and ``os.environ``; docs/performance.md): their modules call ``posix``, whose
functions ``os`` re-exports, and take the few ``os.path`` functions they need from here
(:func:`join`, :func:`dirname`, :func:`exists`, :func:`is_dir`, :func:`is_file`)."""
import errno
import posix
import stat
import time

from vpopmail.errors import CouldNotUpdateFile, LockTimeout, OutsideDomain

TYPE_CHECKING = False  # the typing idiom without importing typing (hot path)
if TYPE_CHECKING:
    from typing import TypeVar

    K = TypeVar("K")
    V = TypeVar("V")


def join(path: str, *names: str) -> str:
    """``os.path.join``: ``names`` appended with one ``/``; an absolute one starts afresh."""
    for name in names:
        if name.startswith("/"):
            path = name
        elif not path or path.endswith("/"):
            path += name
        else:
            path += "/" + name
    return path


def dirname(path: str) -> str:
    """``os.path.dirname``: all before the last ``/``, without trailing ones (but the root)."""
    head = path[:path.rfind("/") + 1]
    return head.rstrip("/") or head


def _mode(path: str) -> int | None:
    try:
        return posix.stat(path).st_mode
    except (OSError, ValueError):
        return None


def exists(path: str) -> bool:
    """``os.path.exists``: ``path`` names something (a symbolic link: its target)."""
    return _mode(path) is not None


def is_dir(path: str) -> bool:
    """``os.path.isdir``."""
    mode = _mode(path)
    return mode is not None and stat.S_ISDIR(mode)


def is_file(path: str) -> bool:
    """``os.path.isfile``."""
    mode = _mode(path)
    return mode is not None and stat.S_ISREG(mode)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data`` to ``fd``, however many ``write`` calls it takes."""
    view = memoryview(data)
    while view:
        view = view[posix.write(fd, view):]


def fsync_dir(path: str) -> None:
    """Make a rename or link in ``path`` durable."""
    fd = posix.open(path, posix.O_RDONLY | posix.O_DIRECTORY | posix.O_CLOEXEC)
    try:
        posix.fsync(fd)
    finally:
        posix.close(fd)


def ensure_owner(fd: int, uid: int | None, gid: int | None) -> bool:
    """Give ``fd`` the owner vpopmail wants, if it is not already so (True when it was
    changed); never a file with another hard link: root must not chown a file of its own
    (its configuration, a program) that someone linked at a name where it makes or locks one
    (a lock file already there)."""
    if uid is None or gid is None:
        return False
    st = posix.fstat(fd)
    if (st.st_uid, st.st_gid) == (uid, gid):
        return False
    if st.st_nlink != 1 and st.st_mode & 0o170000 != 0o040000:  # S_IFDIR, without stat
        return False
    posix.fchown(fd, uid, gid)
    return True


def atomic_write(path: str, data: bytes, mode: int = 0o644, uid: int | None = None,
                 gid: int | None = None, sync: bool = True, tmp: str | None = None) -> None:
    """Replace ``path`` with ``data``: exclusive temp file, fsync, rename, fsync of the directory.

    The temp file is ``tmp`` (same filesystem) or ``<path>.tmp.<pid>``.
    Readers see the old file or the new one, never a mix. Any failure leaves ``path`` untouched
    and raises :class:`CouldNotUpdateFile` (a temporary fault: disk full, EIO, permissions).
    """
    directory = dirname(path) or "."
    tmp = tmp or f"{path}.tmp.{posix.getpid()}"
    flags = posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL | posix.O_CLOEXEC
    try:
        try:
            fd = posix.open(tmp, flags, mode)
        except FileExistsError:
            posix.unlink(tmp)  # left by a crashed process with our pid
            fd = posix.open(tmp, flags, mode)
    except OSError as exc:
        raise CouldNotUpdateFile(f"{tmp}: {exc.strerror}") from None
    try:
        try:
            write_all(fd, data)
            posix.fchmod(fd, mode)
            ensure_owner(fd, uid, gid)
            if sync:
                posix.fsync(fd)
        finally:
            posix.close(fd)
        posix.rename(tmp, path)
        if sync:
            fsync_dir(directory)
    except OSError as exc:
        try:
            posix.unlink(tmp)
        except OSError:
            pass
        raise CouldNotUpdateFile(f"{path}: {exc.strerror}") from None


def status(st: posix.stat_result) -> tuple[int, ...]:
    """What a memo of a file's contents is checked against before each use: device, inode,
    size, mtime, ctime, mode and owner. A file replaced by rename has another inode or other
    times (even when ext4 hands it the inode just freed), a symbolic link or FIFO put in its
    place another mode, one written in place other times, to the kernel's precision: before
    Linux 6.13 a timer tick, so an edit in place that keeps the size, made in the tick of the
    last read, could go unseen (cdb files are only ever replaced by rename; the configuration
    is edited by hand)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode,
            st.st_uid, st.st_gid)


def remember(memo: "dict[K, V]", key: "K", value: "V", most: int) -> None:
    """``memo[key] = value``, the memo emptied first when it holds ``most`` other keys: the
    bound of what a long-lived process (a server worker) remembers of files it read."""
    if len(memo) >= most and key not in memo:
        memo.clear()
    memo[key] = value


def read_regular(path: str, limit: int = 1 << 20, follow: bool = False
                 ) -> tuple[bytes, posix.stat_result]:
    """The contents and status of ``path`` if it is a regular file of at most ``limit`` bytes,
    opened without following a symbolic link (unless ``follow``) or waiting on a FIFO: a link
    (ELOOP), FIFO or device (EINVAL) planted in its place, say by a domain owner for root to
    read, is never read."""
    flags = posix.O_RDONLY | posix.O_NONBLOCK | posix.O_CLOEXEC
    fd = posix.open(path, flags if follow else flags | posix.O_NOFOLLOW)
    try:
        st = posix.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        data = b""
        want = st.st_size + 1  # a byte more than its size: a file that grew meanwhile shows
        while st.st_size <= limit and len(data) <= limit:  # posix.read, not a file object
            chunk = posix.read(fd, min(want, limit + 1 - len(data)))
            if not chunk:
                break
            data += chunk
            want = 1 << 16
    finally:
        posix.close(fd)
    if st.st_size > limit or len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes", path)
    return data, st


#: open a directory that must be a real one: a symbolic link or a file there is refused
DIR_FLAGS = posix.O_RDONLY | posix.O_DIRECTORY | posix.O_NOFOLLOW | posix.O_CLOEXEC


def _make_at(dir_fd: int | None, name: str, mode: int, uid: int | None, gid: int | None) -> bool:
    """mkdir ``name`` (relative to ``dir_fd``), then set its mode and owner through a descriptor
    opened without following a link: a name swapped for a symbolic link meanwhile makes root
    chmod or chown nothing else. False if something of that name already existed."""
    try:
        posix.mkdir(name, mode, dir_fd=dir_fd)
    except FileExistsError:
        return False
    fd = _open_real_dir(dir_fd, name, name)
    try:
        posix.fchmod(fd, mode)
        ensure_owner(fd, uid, gid)
    finally:
        posix.close(fd)
    return True


def make_dir(path: str, mode: int = 0o700, uid: int | None = None, gid: int | None = None) -> bool:
    """Create one directory with vpopmail's mode and owner; False if it already existed."""
    return _make_at(None, path, mode, uid, gid)


def _open_real_dir(dir_fd: int | None, name: str, path: str) -> int:
    """``name`` in ``dir_fd`` opened as a directory; a symbolic link or a file there is
    :class:`~vpopmail.errors.OutsideDomain`."""
    try:
        return posix.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
    from vpopmail.errors import OutsideDomain

    raise OutsideDomain(f"{path}: {name} is a symbolic link or not a directory")


def open_inside(base: str, path: str, make: tuple[int, int | None, int | None] | None = None
                ) -> tuple[int, str]:
    """(descriptor of the parent directory, last name) of ``path``, a path strictly inside the
    directory ``base``, reached from ``base`` one real directory at a time (never through a
    symbolic link, ``..`` or ``.``). With ``make`` (mode, uid, gid) missing parents are made,
    and existing ones repaired (:func:`_repair`: what a process killed before its chown left,
    an earlier version's owner or mode). Anything else is
    :class:`~vpopmail.errors.OutsideDomain`. The caller closes the fd."""
    prefix = base.rstrip("/") + "/"
    parts = path[len(prefix):].split("/") if path.startswith(prefix) else [""]
    if any(part in ("", ".", "..") for part in parts):
        from vpopmail.errors import OutsideDomain

        raise OutsideDomain(f"{path} is not a path inside {base}")
    fd = posix.open(base, posix.O_RDONLY | posix.O_DIRECTORY | posix.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            if make is not None:
                _make_at(fd, part, *make)
            parent, fd = fd, -1
            try:
                fd = _open_real_dir(parent, part, path)
            finally:
                posix.close(parent)
            if make is not None:
                _repair(fd, *make)
    except BaseException:
        if fd >= 0:
            posix.close(fd)
        raise
    return fd, parts[-1]


def _repair(fd: int, mode: int, uid: int | None, gid: int | None) -> None:
    """The directory ``fd`` given ``uid``/``gid`` and then exactly ``mode``; one that already
    has them keeps its other bits (a set-gid bit, group access the owner gave) and gains what
    ``mode`` needs, without group or other write."""
    if ensure_owner(fd, uid, gid):
        posix.fchmod(fd, mode)
        return
    current = posix.fstat(fd).st_mode & 0o7777
    wanted = (current | mode) & ~0o022
    if wanted != current:
        posix.fchmod(fd, wanted)


def make_dir_inside(base: str, path: str, mode: int = 0o700, uid: int | None = None,
                    gid: int | None = None,
                    parents: tuple[int, int | None, int | None] | None = None) -> bool:
    """:func:`make_dir` for ``path`` inside ``base`` (see :func:`open_inside`), its parents
    made (or repaired) alike or as ``parents`` (mode, uid, gid) says; False if it already is
    a real directory there (then given the owner, and with it the mode, too)."""
    fd, name = open_inside(base, path, parents or (mode, uid, gid))
    try:
        if _make_at(fd, name, mode, uid, gid):
            return True
        existing = _open_real_dir(fd, name, path)
        try:
            if ensure_owner(existing, uid, gid):
                posix.fchmod(existing, mode)
        finally:
            posix.close(existing)
        return False
    finally:
        posix.close(fd)


def is_dir_inside(base: str, path: str) -> bool:
    """Whether ``path`` is a real directory inside ``base`` (see :func:`open_inside`); False if
    it is missing, :class:`~vpopmail.errors.OutsideDomain` for anything else."""
    try:
        fd, name = open_inside(base, path)
    except FileNotFoundError:
        return False
    try:
        posix.close(_open_real_dir(fd, name, path))
        return True
    except FileNotFoundError:
        return False
    finally:
        posix.close(fd)


def list_inside(base: str, path: str) -> list[str]:
    """The names in the real directory ``path`` inside ``base`` (see :func:`open_inside`)."""
    fd, name = open_inside(base, path)
    try:
        inner = _open_real_dir(fd, name, path)
    finally:
        posix.close(fd)
    try:
        return posix.listdir(inner)
    finally:
        posix.close(inner)


def remove_inside(base: str, path: str, last: str = "") -> bool:
    """Delete the directory tree ``path`` inside ``base`` (see :func:`open_inside`) through
    descriptors, so that nothing outside ``base`` is reached even when a name is swapped for a
    symbolic link meanwhile; errors inside the tree are ignored. False if nothing was there.
    ``last``: a subdirectory of ``path`` removed after everything else in it (see
    :func:`remove_tree_at`)."""
    if not is_dir_inside(base, path):
        return False
    fd, name = open_inside(base, path)
    try:
        remove_tree_at(fd, name, last=last)
    finally:
        posix.close(fd)
    return True


#: how many times :func:`remove_inside_until_gone` goes over a tree that is still there
REMOVAL_PASSES = 20


def remove_inside_until_gone(base: str, path: str, last: str = "") -> None:
    """:func:`remove_inside`, gone over again while ``path`` is still there (up to
    REMOVAL_PASSES times): a delivery or login that found a user just before its removal may
    still write a file (a message, maildirsize, lastauth) into a directory the removal had
    already emptied, which would keep that directory and all above it. No new writer can
    begin meanwhile (the callers removed the user or domain from its store first); what will
    not go for another reason stays, as with :func:`remove_inside`."""
    for attempt in range(REMOVAL_PASSES):
        try:
            if not remove_inside(base, path, last) or not exists(path):
                return
        except OutsideDomain:
            if not attempt:
                raise
            return  # swapped for a link since the first pass: nothing more there is ours
        time.sleep(0.001 * (attempt + 1))


def remove_tree_at(dir_fd: int, name: str, ignore_errors: bool = True, last: str = "") -> None:
    """Delete the tree ``name`` (relative to ``dir_fd``) bottom-up through directory
    descriptors: a symbolic link is removed, never followed, and each directory is opened
    ``O_DIRECTORY|O_NOFOLLOW|O_NONBLOCK``, so a link or FIFO swapped in for one meanwhile is
    removed as a file instead of followed or waited on (os.fwalk's plain open blocked on such
    a FIFO for ever). No recursion: one descriptor a level. With ``ignore_errors`` what will
    not go stays (the admin commands' clean-up); without, the first OSError is raised
    (vpopmaild's RmDir reports it). The subdirectory ``last`` of ``name`` goes after all else
    (a user's Maildir: a removal cut short then leaves what is still known as a user's)."""
    try:
        top = posix.open(name, _TREE_DIR, dir_fd=dir_fd)
    except OSError:
        if ignore_errors:
            return
        raise
    # (parent's descriptor, name there, own descriptor, subdirectories still to remove)
    stack: list[tuple[int, str, int, list[str]]] = [(dir_fd, name, top, [])]
    try:
        pending = _empty_files(top, ignore_errors)
        if last in pending:  # taken from the end: first in the list is removed last
            pending.remove(last)
            pending.insert(0, last)
        stack[0][3].extend(pending)
        while stack:
            parent, entry, fd, pending = stack[-1]
            if pending:
                child = pending.pop()
                try:
                    child_fd = posix.open(child, _TREE_DIR, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ENOTDIR, errno.ELOOP):  # no longer a directory
                        _remove_at(fd, child, False, ignore_errors)
                    elif not ignore_errors:
                        raise
                    continue
                stack.append((fd, child, child_fd, []))
                stack[-1][3].extend(_empty_files(child_fd, ignore_errors))
                continue
            stack.pop()
            posix.close(fd)
            _remove_at(parent, entry, True, ignore_errors)
    finally:
        for _, _, fd, _ in stack:
            posix.close(fd)


_TREE_DIR = (posix.O_RDONLY | posix.O_DIRECTORY | posix.O_NOFOLLOW | posix.O_NONBLOCK
             | posix.O_CLOEXEC)


def _empty_files(fd: int, ignore_errors: bool) -> list[str]:
    """Remove every entry of the directory ``fd`` but its subdirectories; return their names."""
    try:
        with posix.scandir(fd) as entries:
            listed = [(entry.name, _is_dir(entry)) for entry in entries]
    except OSError:
        if ignore_errors:
            return []
        raise
    for name, directory in listed:
        if not directory:
            _remove_at(fd, name, False, ignore_errors)
    return [name for name, directory in listed if directory]


def _is_dir(entry: posix.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:  # gone meanwhile: its unlink says so
        return False


def _remove_at(dir_fd: int, name: str, directory: bool, ignore_errors: bool) -> None:
    try:
        if not directory:
            posix.unlink(name, dir_fd=dir_fd)
            return
        try:
            posix.rmdir(name, dir_fd=dir_fd)
        except NotADirectoryError:
            posix.unlink(name, dir_fd=dir_fd)
    except OSError:
        if not ignore_errors:
            raise


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
        if posix.geteuid() == 0 and self.uid != 0:
            self.saved = (posix.getgroups(), posix.getegid())
            posix.setgroups([self.gid])
            posix.setegid(self.gid)
            posix.seteuid(self.uid)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.saved is not None:
            groups, egid = self.saved
            self.saved = None
            posix.seteuid(0)
            posix.setegid(egid)
            posix.setgroups(groups)


#: the locks this process holds, by path as given to FileLock: [descriptor, holds, pid of the
#: holder] (a forked child inherits the table, not the locks: an entry of another pid is not
#: its hold)
_HELD: dict[str, list[int]] = {}


class FileLock:
    """An exclusive POSIX lock on ``path`` (created 0600, owned uid/gid when given), waited for
    at most ``timeout`` seconds; failing to open or get it is a temporary fault.

    Re-entrant per process and path: POSIX record locks are the process's, so a second
    descriptor of a lock file this process holds would get its lock at once, and closing it
    would drop the first holder's lock. Entered while this process already holds ``path``
    (through this or any other FileLock), it opens nothing and never waits: it joins that hold
    and shares its descriptor (:attr:`fd`); the last exit closes it. ``took`` says whether this
    enter took the lock (False: it joined a hold). Holds are keyed by ``path`` as given: the
    same file under another spelling (``./x``, a link) is another key, whose exit would drop
    the lock, so each lock file must be named one way. A forked child holds none of its
    parent's locks: a hold recorded by another pid is absent for it (it takes the lock anew,
    and waits for the parent), and its exit of the parent's hold closes nothing (that
    descriptor number may be another file's in the child by then)."""

    __slots__ = ("path", "timeout", "owner", "_fd", "took")

    def __init__(self, path: str, timeout: float = 20.0, uid: int | None = None,
                 gid: int | None = None) -> None:
        self.path = path
        self.timeout = timeout
        self.owner = (uid, gid)
        self._fd = -1
        self.took = False

    def __enter__(self) -> "FileLock":
        path = self.path
        held = _HELD.get(path)
        pid = posix.getpid()
        if held is not None and held[2] == pid:
            held[1] += 1
            self._fd = held[0]
            self.took = False
            return self
        import fcntl

        # O_NOFOLLOW: a lock file planted as a symlink must not make root open (and chown)
        # its target
        flags = posix.O_RDWR | posix.O_CLOEXEC | posix.O_NOFOLLOW
        try:
            try:
                fd = posix.open(path, flags | posix.O_CREAT, 0o600)
            except PermissionError:
                # it exists: fs.protected_regular=2 forbids even root an O_CREAT open of
                # another user's file in a sticky group-writable directory (a root
                # installation's etc/, where the vpopmail user's relay locks are)
                fd = posix.open(path, flags)
        except OSError as exc:
            raise CouldNotUpdateFile(f"lock {path}: {exc.strerror}") from None
        try:
            ensure_owner(fd, *self.owner)
        except OSError as exc:
            posix.close(fd)
            raise CouldNotUpdateFile(f"lock {path}: {exc.strerror}") from None
        deadline = time.monotonic() + self.timeout
        pause = 0.001
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.ENOLCK):
                    posix.close(fd)
                    raise
            if time.monotonic() >= deadline:
                posix.close(fd)
                raise LockTimeout(path)
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        # a parent's entry (held by another pid) is replaced, its descriptor left alone
        _HELD[path] = [fd, 1, pid]
        self._fd = fd
        self.took = True
        return self

    @property
    def fd(self) -> int:
        """The open lock file while it is held (for small state kept in it), shared by every
        hold of the path in this process."""
        return self._fd

    def __exit__(self, *exc: object) -> None:
        held = _HELD.get(self.path)
        if held is None or held[2] != posix.getpid():
            # not held by this process: a forked child leaving its parent's hold (neither
            # the lock nor, maybe, that descriptor is its own)
            self._fd = -1
            return
        held[1] -= 1
        if held[1] == 0:
            del _HELD[self.path]
            self._fd = -1
            posix.close(held[0])
