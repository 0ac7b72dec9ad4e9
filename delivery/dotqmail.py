"""Delivery instructions: the lines of a user's ``.qmail`` and vdelivermail's default action.

Files are read and each line classified as qmail-local reads them (dot-qmail(5)), with the fixes
C vpopmail lacked: trailing blanks are stripped, blank lines after the first are skipped, a blank
first line defers, a file of zero bytes means the default delivery, and ``+list`` is honoured.
One deviation: a CR before the LF is stripped too (qmail-local would keep it in the path or
address; a CRLF-edited file then reads as its author meant, and a lone CR is a blank line).
"""
import errno
import posix
import stat

from vpopmail.names import dot_qmail_order

COMMENT = "comment"
LIST = "list"
PROGRAM = "program"
MAILDIR = "maildir"
MBOX = "mbox"
FORWARD = "forward"


class DotQmailWritable(Exception):
    """A world-writable ``.qmail`` (refused as qmail-local refuses it: anyone could redirect mail)."""


class BlankFirstLine(Exception):
    """The first line of a ``.qmail`` is blank: qmail-local defers (the file is half written or
    damaged), where C vpopmail delivered nowhere and lost the message."""


def parse_line(line: str) -> tuple[str, str] | None:
    """(kind, text) for one instruction line, or None for a blank line.

    ``text`` is the program (after ``|``), the path, or the address (without ``&``). A line
    that delivers nothing (``#``, or ``+`` other than ``+list``) is a COMMENT.
    """
    line = line.rstrip(" \t\r\n")
    if not line:
        return None
    first = line[0]
    if first == "#":
        return COMMENT, line
    if first == "+":
        return (LIST, "") if line == "+list" else (COMMENT, line)
    if first == "|":
        return PROGRAM, line[1:].lstrip(" \t")
    if first in "./":
        return (MAILDIR if line.endswith("/") else MBOX), line
    return FORWARD, line[1:] if first == "&" else line


def read_file(path: str) -> list[tuple[str, str]] | None:
    """The instructions in the ``.qmail`` at ``path``, as qmail-local reads them.

    None if there is no such regular file (the search goes on; a directory or device of that
    name counts as absent, as for qmail-local). ``[]`` for a file of zero bytes: the default
    delivery applies (qmail-local's aliasempty). A file of comments gives COMMENT items only:
    the message is delivered nowhere, as qmail-local does.

    Raises :class:`BlankFirstLine` if the first line is blank after trailing blanks are
    stripped (later blank lines are skipped), :class:`DotQmailWritable` for a world-writable
    file, and ``OSError`` if it cannot be read or holds a NUL byte (qmail-local would cut the
    line there and run, forward to or write what is left: never guess).
    """
    try:
        fd = posix.open(path, posix.O_RDONLY | posix.O_NONBLOCK | posix.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        st = posix.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        if st.st_mode & 0o002:
            raise DotQmailWritable(path)
        chunks = []  # joined once: a growing bytes is copied at every read
        while chunk := posix.read(fd, 65536):
            chunks.append(chunk)
    finally:
        posix.close(fd)
    data = b"".join(chunks)
    if not data:
        return []
    if b"\0" in data:
        line = data.count(b"\n", 0, data.index(b"\0")) + 1
        raise OSError(errno.EINVAL, f"NUL byte in line {line}", path)
    lines = data.decode("utf-8", "surrogateescape").split("\n")
    if lines[-1] == "":
        del lines[-1]  # the text after the final newline
    parsed = [parse_line(line) for line in lines]
    if parsed[0] is None:
        raise BlankFirstLine(path)
    return [item for item in parsed if item is not None]


def candidates(ext: str) -> list[str]:
    """The ``.qmail`` names tried in a user's directory for the address extension ``ext`` (with
    ``.`` already turned into ``:``): ``.qmail-<name>`` for each name of
    :func:`vpopmail.names.dot_qmail_order`, then ``.qmail``. An extension with ``/`` is
    ignored."""
    if not ext or "/" in ext:
        return [".qmail"]
    return [*(f".qmail-{name}" for name, _ in dot_qmail_order(ext)), ".qmail"]
