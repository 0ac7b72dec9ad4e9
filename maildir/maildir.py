"""Maildir layout and durable delivery.

A delivery follows the Maildir contract with the durability qmail-local gives and C vpopmail
did not: the tmp file is created ``O_EXCL`` under a name no other process can pick, written in
chunks, fsynced, hard-linked into ``new/`` (never renamed over an existing name), unlinked from
``tmp/``, and ``new/`` is fsynced. Only then does :func:`deliver` return. Any failure removes
the tmp file, so no partial message is ever visible.

Not an unnamed file (``O_TMPFILE``) linked into ``new/``: its fsync before the link writes
an inode with no link, and ``new/``'s fsync does not write the link count, so on a file system
without a journal a crash after exit 0 could leave ``new/`` naming an inode recorded as deleted.

Names: ``<sec>.M<usec>P<pid>Q<n>.<host>`` in tmp, ``<sec>.M<usec>P<pid>V<dev>I<ino>.<host>,
S=<size>,W=<rfc822 size>`` in new (``/`` and ``:`` in the host name escaped as ``\\057`` and
``\\072``); a name taken in new/ is retried with a fresh stem. vpopbull's links are made
under the same names (:func:`write_tmp`, :func:`link_new`). Hot-path safe: imports only
``os``, ``time`` and the error classes.
"""
import errno
import posix
import time

from maildir import SUBDIRS
from vpopmail.errors import DeliveryFailed, OverQuota
from vpopmail.fsutil import fsync_dir, join, make_dir, write_all

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

CHUNK = 65536
#: a file in ``tmp/`` neither written nor read for this long is a crashed writer's leftover
#: (the Maildir rule; qmail-pop3d applies it to atime at each session, Dovecot to ctime)
TMP_STALE_SECONDS = 36 * 3600
_counter = 0


def make_maildir(path: str, uid: int | None = None, gid: int | None = None,
                 mode: int = 0o700) -> None:
    """Create ``path`` and its cur/new/tmp (those missing), owned by uid/gid."""
    make_dir(path, mode, uid, gid)
    for sub in SUBDIRS:
        make_dir(join(path, sub), mode, uid, gid)


def hostname() -> str:
    """This host's name as it may appear in a Maildir file name."""
    return posix.uname().nodename.replace("/", "\\057").replace(":", "\\072")


class Delivered:
    """Where a message landed and its sizes (``size`` is what Maildir++ counts)."""

    __slots__ = ("path", "size", "rfc822_size")

    def __init__(self, path: str, size: int, rfc822_size: int) -> None:
        self.path = path
        self.size = size
        self.rfc822_size = rfc822_size


def _fault(exc: OSError, what: str, path: str) -> Exception:
    """The library error for an OS error during delivery: EDQUOT is the user's quota."""
    if exc.errno == errno.EDQUOT:
        return OverQuota(f"{path}: {exc.strerror}")
    return DeliveryFailed(f"{what} {path}: {exc.strerror} (errno={exc.errno})")


def unique_stem() -> str:
    """The time and pid part of a new Maildir name: ``<sec>.M<usec>P<pid>``."""
    now = time.time()
    return f"{int(now)}.M{int(now % 1 * 1000000)}P{posix.getpid()}"


def _create_tmp(maildir: str) -> tuple[int, str, str]:
    """An O_EXCL file in ``tmp/``: (fd, path, the time/pid part of its name)."""
    global _counter
    host = hostname()
    for _ in range(100):
        stem = unique_stem()
        _counter += 1
        path = f"{maildir}/tmp/{stem}Q{_counter}.{host}"
        try:
            fd = posix.open(path, posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL | posix.O_CLOEXEC,
                            0o600)
        except FileExistsError:
            continue
        except OSError as exc:
            raise _fault(exc, "cannot create", path) from None
        return fd, path, stem
    raise DeliveryFailed(f"{maildir}/tmp: no unique file name after 100 tries")


def write_message(fd: int, header: bytes, source: int) -> tuple[int, int]:
    """Write ``header`` then all of ``source`` (read with pread from offset 0) to ``fd``
    (a tmp file, or a pipe to qmail-inject).

    Returns (bytes written, bytes as RFC 822 counts them: every bare LF as CRLF).
    """
    write_all(fd, header)
    size = len(header)
    bare_lf = header.count(b"\n") - header.count(b"\r\n")
    offset = 0
    previous_cr = header.endswith(b"\r")
    while True:
        chunk = posix.pread(source, CHUNK, offset)
        if not chunk:
            break
        write_all(fd, chunk)
        offset += len(chunk)
        bare_lf += chunk.count(b"\n")
        if b"\r" in chunk:  # qmail's queue is LF-only: skip the slow two-byte count then
            bare_lf -= chunk.count(b"\r\n")
        if previous_cr and chunk[:1] == b"\n":
            bare_lf -= 1
        previous_cr = chunk.endswith(b"\r")
    return size + offset, size + offset + bare_lf


class Staged:
    """A message written and synced into ``tmp/``: its path, the stem of its name, its sizes and
    status (for the ``new/`` name)."""

    __slots__ = ("path", "stem", "size", "rfc822_size", "st")

    def __init__(self, path: str, stem: str, size: int, rfc822_size: int,
                 st: posix.stat_result) -> None:
        self.path = path
        self.stem = stem
        self.size = size
        self.rfc822_size = rfc822_size
        self.st = st


def write_tmp(maildir: str, header: bytes, source: int, sync: bool = True) -> Staged:
    """Write ``header`` + the contents of fd ``source`` into a new file in ``maildir/tmp``
    (fsynced with ``sync``). Raises :class:`OverQuota` on EDQUOT and :class:`DeliveryFailed`
    on any other error, leaving nothing behind."""
    fd, tmp, stem = _create_tmp(maildir)
    try:
        try:
            size, rfc822_size = write_message(fd, header, source)
            if sync:
                posix.fsync(fd)
            st = posix.fstat(fd)
        finally:
            posix.close(fd)
    except OSError as exc:
        discard(tmp)
        raise _fault(exc, "cannot write", tmp) from None
    except BaseException:
        discard(tmp)
        raise
    return Staged(tmp, stem, size, rfc822_size, st)


def link_new(maildir: str, make: "Callable[[str], object]", st: posix.stat_result, size: int,
             rfc822_size: int, stem: str = "") -> str:
    """Call ``make(path)`` (a link or symbolic link maker) for a fresh ``maildir/new`` name of
    the file ``st`` (``stem`` first, then new stems while the name exists); returns the path.
    Raises :class:`OverQuota` on EDQUOT and :class:`DeliveryFailed` on any other error."""
    tail = f"V{st.st_dev:X}I{st.st_ino:X}.{hostname()},S={size},W={rfc822_size}"
    for _ in range(100):
        final = f"{maildir}/new/{stem or unique_stem()}{tail}"
        stem = ""
        try:
            make(final)
        except FileExistsError:
            continue
        except OSError as exc:
            raise _fault(exc, "cannot link into", final) from None
        return final
    raise DeliveryFailed(f"{maildir}/new: no unique file name after 100 tries")


def deliver(maildir: str, header: bytes, source: int, sync: bool = True) -> Delivered:
    """Deliver ``header`` + the contents of fd ``source`` into ``maildir`` (a Maildir path).

    Raises :class:`OverQuota` on EDQUOT and :class:`DeliveryFailed` (temporary) on any other
    error; in both cases nothing is left in ``tmp/`` or ``new/``.
    """
    maildir = maildir.rstrip("/") or "/"
    staged = write_tmp(maildir, header, source, sync)
    try:
        final = link_new(maildir, lambda path: posix.link(staged.path, path), staged.st,
                         staged.size, staged.rfc822_size, staged.stem)
    finally:
        discard(staged.path)
    if sync:
        try:
            fsync_dir(f"{maildir}/new")
        except OSError as exc:
            discard(final)
            raise _fault(exc, "cannot sync", f"{maildir}/new") from None
    return Delivered(final, staged.size, staged.rfc822_size)


def discard(path: str) -> None:
    """Unlink ``path`` if it is there (cleaning up: errors ignored)."""
    try:
        posix.unlink(path)
    except OSError:
        pass


def clean_tmp(maildir: str, now: float | None = None) -> int:
    """Remove the regular files in ``maildir/tmp`` whose mtime and atime are both older than
    36 hours (what a killed delivery leaves); returns how many went. Housekeeping only: any
    error is ignored. Not on the delivery path: :func:`maildir.quota.recalculate` calls it.

    A file with one link whose inode ``new/`` or ``cur/`` also names is kept: its count is one
    short (after a crash on a file system without a journal: the message's first name and its
    link in new/ reached the disk, the unlink and the inode's new count did not), and
    unlinking it would free the delivered message. fsck repairs the count; a second name with
    the right count (a delivery killed between its link and its unlink) is removed."""
    maildir = maildir.rstrip("/")
    cutoff = (time.time() if now is None else now) - TMP_STALE_SECONDS
    removed = 0
    delivered: set[int] | None = None  # the inodes new/ and cur/ name, read at the first need
    try:
        entries = posix.scandir(f"{maildir}/tmp")
    except OSError:
        return 0
    with entries:
        for entry in entries:
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
                if max(st.st_mtime, st.st_atime) >= cutoff:
                    continue
                if st.st_nlink == 1:
                    if delivered is None:
                        delivered = _named_inodes(maildir)
                    if st.st_ino in delivered:
                        continue
                posix.unlink(entry.path)
                removed += 1
            except OSError:
                continue
    return removed


def _named_inodes(maildir: str) -> set[int]:
    """The inode numbers ``maildir/new`` and ``maildir/cur`` name (from the directory
    entries: nothing is stat'ed)."""
    found: set[int] = set()
    for sub in ("new", "cur"):
        try:
            with posix.scandir(f"{maildir}/{sub}") as entries:
                found.update(entry.inode() for entry in entries)
        except OSError:
            continue
    return found
