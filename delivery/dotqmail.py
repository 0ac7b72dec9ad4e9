"""Delivery instructions: the lines of a user's ``.qmail`` and vdelivermail's default action.

Each line is classified as qmail-local does (dot-qmail(5)), with the fixes C vpopmail lacked:
trailing blanks are stripped, blank lines are skipped, and ``+list`` is honoured.
"""
import errno
import os

COMMENT = "comment"
LIST = "list"
PROGRAM = "program"
MAILDIR = "maildir"
MBOX = "mbox"
FORWARD = "forward"


class DotQmailWritable(Exception):
    """A world-writable ``.qmail`` (refused as qmail-local refuses it: anyone could redirect mail)."""


def parse_line(line: str) -> tuple[str, str] | None:
    """(kind, text) for one instruction line, or None for a line that does nothing.

    ``text`` is the program (after ``|``), the path, or the address (without ``&``).
    """
    line = line.rstrip(" \t\r\n")
    if not line:
        return None
    first = line[0]
    if first == "#":
        return COMMENT, line
    if first == "+":
        return (LIST, "") if line == "+list" else None
    if first == "|":
        return PROGRAM, line[1:].lstrip(" \t")
    if first in "./":
        return (MAILDIR if line.endswith("/") else MBOX), line
    return FORWARD, line[1:] if first == "&" else line


def read_file(path: str) -> list[tuple[str, str]] | None:
    """The instructions in the ``.qmail`` at ``path``, or None if it is absent or empty (then
    mail goes to the Maildir, as with qmail). A comment-only file gives ``[("comment", …)]``.

    Raises :class:`DotQmailWritable` for a world-writable file, and
    ``OSError`` if it exists but cannot be read or holds a NUL byte (qmail-local would cut
    the line there and run, forward to or write what is left: never guess).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o002:
            raise DotQmailWritable(path)
        data = b""
        while chunk := os.read(fd, 65536):
            data += chunk
    finally:
        os.close(fd)
    if not data:
        return None
    if b"\0" in data:
        line = data.count(b"\n", 0, data.index(b"\0")) + 1
        raise OSError(errno.EINVAL, f"NUL byte in line {line}", path)
    text = data.decode("utf-8", "surrogateescape")
    return [item for item in map(parse_line, text.split("\n")) if item is not None]


def candidates(ext: str) -> list[str]:
    """The ``.qmail`` names tried in a user's directory for the address extension ``ext`` (with
    ``.`` already turned into ``:``): ``.qmail-<ext>``, ``.qmail-<prefix>-default`` from the
    longest prefix, ``.qmail-default``, then ``.qmail``. An extension with ``/`` is ignored."""
    if not ext or "/" in ext:
        return [".qmail"]
    names = [f".qmail-{ext}"]
    dash = len(ext)
    while (dash := ext.rfind("-", 0, dash)) >= 0:
        names.append(f".qmail-{ext[:dash + 1]}default")
    names.append(".qmail-default")
    names.append(".qmail")
    return names
