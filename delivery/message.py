"""The message being delivered: a seekable file descriptor, its size, and its trace headers.

qmail-local hands programs the queue file itself (seekable); anything else (a pipe, a socket)
is spooled first to an anonymous file (``O_TMPFILE``, or a file unlinked at once where the
filesystem lacks it), copied in chunks so the message is never held in memory. All later reads
use ``pread`` from offset 0, so every destination sees the whole message.
"""
import posix
import stat
from io import SEEK_SET

from vpopmail.errors import DeliveryFailed
from vpopmail.fsutil import join, write_all

CHUNK = 65536
DELIVERED_TO = b"delivered-to:"
#: header lines are examined up to this many bytes (a longer Delivered-To is a hop that matches
#: no address)
LINE_MAX = 8192


def _spool(source: int, directory: str) -> int:
    """Copy all of ``source`` into an anonymous file in ``directory``; return its fd."""
    try:
        fd = posix.open(directory, posix.O_TMPFILE | posix.O_RDWR | posix.O_CLOEXEC, 0o600)
    except OSError:
        path = join(directory, f".vdelivermail-spool.{posix.getpid()}")
        fd = posix.open(path, posix.O_RDWR | posix.O_CREAT | posix.O_EXCL | posix.O_CLOEXEC, 0o600)
        posix.unlink(path)
    try:
        while True:
            chunk = posix.read(source, CHUNK)
            if not chunk:
                return fd
            write_all(fd, chunk)
    except BaseException:
        posix.close(fd)
        raise


class Message:
    """A message readable from offset 0 any number of times; ``size`` in bytes; ``spooled``:
    ``fd`` is its own spool, which :meth:`close` closes."""

    __slots__ = ("fd", "size", "spooled", "_trace")

    def __init__(self, fd: int, size: int, spooled: bool = False) -> None:
        self.fd = fd
        self.size = size
        self.spooled = spooled
        self._trace: tuple[frozenset[bytes], int] | None = None

    @classmethod
    def from_fd(cls, source: int, spool_dir: str) -> "Message":
        """Use ``source`` if it is a regular file, else spool it into ``spool_dir``."""
        try:
            st = posix.fstat(source)
            if stat.S_ISREG(st.st_mode):
                return cls(source, st.st_size)
            fd = _spool(source, spool_dir)
            return cls(fd, posix.fstat(fd).st_size, spooled=True)
        except OSError as exc:
            raise DeliveryFailed(f"cannot read the message (spool in {spool_dir}): "
                                 f"{exc.strerror}") from None

    def close(self) -> None:
        """Close the spool, if there is one (a server worker lives on after the delivery)."""
        if self.spooled:
            self.spooled = False
            posix.close(self.fd)

    def rewind(self) -> None:
        """Put the file offset at 0 (for a child that reads the message from its stdin)."""
        posix.lseek(self.fd, 0, SEEK_SET)

    def trace(self) -> tuple[frozenset[bytes], int]:
        """(the lower-cased addresses of its Delivered-To headers, how many there are)."""
        if self._trace is None:
            self._trace = _scan_trace(self.fd)
        return self._trace


class _TraceScan:
    """Reads header lines one at a time and keeps only the Delivered-To line being read."""

    __slots__ = ("seen", "hops", "current", "cut_current", "started")

    def __init__(self) -> None:
        self.seen: set[bytes] = set()
        self.hops = 0
        self.current: bytes | None = None  # the Delivered-To line being read, else None
        self.cut_current = False
        self.started = False  # a header line exists, so a leading blank continues it

    def line(self, line: bytes, cut: bool) -> bool:
        """Take one physical line (no LF; ``cut``: longer than LINE_MAX); False at the end of
        the header section."""
        if not cut and line.endswith(b"\r"):
            line = line[:-1]
        if not line and not cut:
            return False
        if self.started and line[:1] in (b" ", b"\t"):
            if self.current is not None:
                self.current += line
                self.cut_current = self.cut_current or cut or len(self.current) > LINE_MAX
                self.current = self.current[:LINE_MAX]
            return True
        self.finish()
        self.started = True
        self.current = line if line[:len(DELIVERED_TO)].lower() == DELIVERED_TO else None
        self.cut_current = cut
        return True

    def finish(self) -> None:
        if self.current is not None:
            self.hops += 1
            if not self.cut_current:
                self.seen.add(self.current[len(DELIVERED_TO):].strip().lower())
            self.current = None


def _scan_trace(fd: int) -> tuple[frozenset[bytes], int]:
    """Delivered-To addresses and count of the header section (up to the first empty line;
    folded lines joined, CR before LF dropped), read in chunks. Memory stays flat whatever the
    input (a 50 MB header, no newline at all): lines are cut to LINE_MAX bytes, and a cut
    Delivered-To counts as a hop whose address is not compared."""
    scan = _TraceScan()
    pending = b""
    cut = False
    offset = 0
    while True:
        chunk = posix.pread(fd, CHUNK, offset)
        if not chunk:
            if pending or cut:
                scan.line(pending, cut)
            break
        offset += len(chunk)
        start = 0
        end = chunk.find(b"\n")
        while end >= 0:
            if not cut:
                pending += chunk[start:end]
                cut = len(pending) > LINE_MAX
            if not scan.line(pending[:LINE_MAX], cut):
                scan.finish()
                return frozenset(scan.seen), scan.hops
            pending, cut, start = b"", False, end + 1
            end = chunk.find(b"\n", start)
        if not cut:
            pending += chunk[start:]
            if len(pending) > LINE_MAX:
                pending, cut = pending[:LINE_MAX], True
    scan.finish()
    return frozenset(scan.seen), scan.hops
