"""The message being delivered: a seekable file descriptor, its size, and its trace headers.

qmail-local hands programs the queue file itself (seekable); anything else (a pipe, a socket)
is spooled first to an anonymous file (``O_TMPFILE``, or a file unlinked at once where the
filesystem lacks it), copied in chunks so the message is never held in memory. All later reads
use ``pread`` from offset 0, so every destination sees the whole message.
"""
import os
import stat

from vpopmail.errors import DeliveryFailed
from vpopmail.fsutil import write_all

CHUNK = 65536
DELIVERED_TO = b"delivered-to:"


def _spool(source: int, directory: str) -> int:
    """Copy all of ``source`` into an anonymous file in ``directory``; return its fd."""
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError:
        path = os.path.join(directory, f".vdelivermail-spool.{os.getpid()}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.unlink(path)
    try:
        while True:
            chunk = os.read(source, CHUNK)
            if not chunk:
                return fd
            write_all(fd, chunk)
    except BaseException:
        os.close(fd)
        raise


class Message:
    """A message readable from offset 0 any number of times; ``size`` in bytes."""

    __slots__ = ("fd", "size", "_trace")

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self._trace: tuple[frozenset[bytes], int] | None = None

    @classmethod
    def from_fd(cls, source: int, spool_dir: str) -> "Message":
        """Use ``source`` if it is a regular file, else spool it into ``spool_dir``."""
        try:
            st = os.fstat(source)
            if stat.S_ISREG(st.st_mode):
                return cls(source, st.st_size)
            fd = _spool(source, spool_dir)
            return cls(fd, os.fstat(fd).st_size)
        except OSError as exc:
            raise DeliveryFailed(f"cannot read the message (spool in {spool_dir}): "
                                 f"{exc.strerror}") from None

    def rewind(self) -> None:
        """Put the file offset at 0 (for a child that reads the message from its stdin)."""
        os.lseek(self.fd, 0, os.SEEK_SET)

    def header_lines(self) -> list[bytes]:
        """The header section as logical lines: folded lines joined, CR/LF removed."""
        lines: list[bytes] = []
        buffer = b""
        offset = 0
        while True:
            chunk = os.pread(self.fd, CHUNK, offset)
            offset += len(chunk)
            buffer += chunk
            if chunk:
                parts = buffer.split(b"\n")
                buffer = parts.pop()
            else:
                parts = [buffer] if buffer else []
            for raw in parts:
                line = raw[:-1] if raw.endswith(b"\r") else raw
                if not line:
                    return lines
                if line[:1] in (b" ", b"\t") and lines:
                    lines[-1] += line
                else:
                    lines.append(line)
            if not chunk:
                return lines

    def trace(self) -> tuple[frozenset[bytes], int]:
        """(the lower-cased addresses of its Delivered-To headers, how many there are)."""
        if self._trace is None:
            found = [line[len(DELIVERED_TO):].strip().lower() for line in self.header_lines()
                     if line[:len(DELIVERED_TO)].lower() == DELIVERED_TO]
            self._trace = (frozenset(found), len(found))
        return self._trace
