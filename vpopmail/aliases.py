"""Aliases and forwards: ``<domaindir>/.qmail-<alias>`` files (cdb backend), or rows of the
``valias`` table (MySQL backend, vpopmail.stores.sql.SqlAliases; vdelivermail reads them, as C
built with --enable-valias): the format and its checks; the stores are
vpopmail.stores.aliasfiles.Aliases and vpopmail.stores.sql.SqlAliases, which apply the same
checks (vpopmail.stores.AliasChecks) and give the same texts.

This is C vpopmail's vpalias.c layout (what valias and qmailadmin manage without SQL): one
file per alias in the domain directory, named ``.qmail-`` + the alias with ``.`` written as
``:`` (qmail-local looks extensions up that way), holding qmail delivery instructions, one a
line: ``&address`` or ``address`` (forward), ``/path/Maildir/`` (maildir), ``/path`` (mbox),
``|program``, ``#`` comment. qmailadmin writes forwards as ``&user@domain`` and a blackhole as
``#``. qmail-local reads these files itself, before the domain's ``.qmail-default`` (the
vdelivermail line) is ever consulted.

Alias names are one safe file name component (vpopmail/names.py rules); ``default`` and the
names of existing users are refused (a ``.qmail-<user>`` would take the user's mail: qmail-local
finds it before ``.qmail-default``).

The read side (:func:`names`, :func:`read_lines`) is hot-path safe: it
imports only ``os`` besides the lean vpopmail modules.
"""
import errno
import os

from vpopmail.assign import AssignEntry
from vpopmail.errors import (BadInput, CorruptData, IllegalUsername, TemporaryError,
                             UserDoesNotExist, UsernameExists, VpopmailError)
from vpopmail.names import check_user, is_address

DOT_QMAIL = ".qmail-"
ALIAS_LIMIT = 1 << 24  # bytes an alias file that valias changes may have
DEFAULT = "default"
#: C vpopmail's MAX_ALIAS_LINE: lines of this length or longer are refused (C's readers would
#: split them)
MAX_LINE = 160


class AliasError(VpopmailError):
    """An alias operation refused; the text is the whole message. Each has its own code;
    ``status`` keeps the exit status the admin commands gave when they reused VA codes."""

    def __init__(self, text: str) -> None:
        VpopmailError.__init__(self, text)
        self.args = (text,)

    def __str__(self) -> str:
        return self.detail


class NoSuchAlias(AliasError):
    code = -108
    status = UserDoesNotExist.code & 0xFF


class AliasIsUser(AliasError):
    code = -109
    status = UsernameExists.code & 0xFF


class UserIsAlias(AliasError):
    """A new user named as an existing alias: the alias would take all its mail."""
    code = -110
    status = UsernameExists.code & 0xFF


class AliasLineExists(AliasError):
    code = -111
    status = IllegalUsername.code & 0xFF


class AliasLineTooLong(AliasError):
    """VA_ALIAS_LINE_TOO_LONG"""
    code = -32
    message = "alias line too long"


class InvalidAliasLine(AliasError):
    code = -112
    status = BadInput.code & 0xFF


class DotQmailUnsafe(AliasError, TemporaryError):
    """A ``.qmail`` file (or the domain directory) that cannot be read: mail must be
    deferred."""

    code = -113
    status = CorruptData.code & 0xFF


# names and lines -------------------------------------------------------------------------------

def file_name(alias: str) -> str:
    """``.qmail-<alias>`` with ``.`` written as ``:``, as qmail-local looks it up."""
    return DOT_QMAIL + alias.replace(".", ":")


def alias_name(name: str) -> str:
    """The alias a ``.qmail-`` file name stands for (``:`` read back as ``.``)."""
    return name[len(DOT_QMAIL):].replace(":", ".")


def check_alias(alias: str) -> str:
    """``alias`` (lower case) if it can name an alias file, else raise IllegalUsername.

    The user-name rules apply (one path component: no ``/``, no leading ``.``, no ``..``, at
    most 64 characters), minus the one-character restriction (alias files are not
    directories); ``default`` is the domain's vdelivermail line, never an alias.
    """
    alias = check_user(alias.lower(), hashed_dirs=False)
    if alias == DEFAULT:
        raise IllegalUsername("'default' is the domain's .qmail-default, not an alias")
    return alias


def _check_address(address: str, line: str) -> None:
    if not is_address(address):
        raise InvalidAliasLine(f"not a forwarding address: {line!r} (use &user@domain, "
                               "/path/Maildir/, |program or #)")


def check_line(line: str) -> str:
    """A delivery instruction fit to store (trailing blanks removed, as qmail-local ignores
    them), else raise InvalidAliasLine / AliasLineTooLong.

    Accepted: ``&user@domain`` and ``user@domain`` (forwards), ``/path`` and ``./path`` (mbox,
    or maildir with a final ``/``), ``|program``, ``#...`` (comment; ``#`` alone is
    qmailadmin's blackhole). ``+list`` lines are refused (qmail 1.03 would forward them).
    """
    if any(c in line for c in "\n\r\0"):
        raise InvalidAliasLine("an alias line can not contain a newline or NUL")
    line = line.rstrip(" \t")
    if not line:
        raise InvalidAliasLine("empty alias line")
    if line[0] in " \t":
        raise InvalidAliasLine(f"alias line starts with a blank: {line!r}")
    if len(line) >= MAX_LINE:
        raise AliasLineTooLong(f"alias line too long ({len(line)} characters, at most "
                               f"{MAX_LINE - 1})")
    first = line[0]
    if first == "#":
        return line
    if first == "|":
        if not line[1:].strip(" \t"):
            raise InvalidAliasLine("'|' without a program")
        return line
    if first in "./":
        if first == "." and not line.startswith("./"):
            raise InvalidAliasLine(f"a relative path must start with './': {line!r}")
        return line
    if first == "+":
        raise InvalidAliasLine(f"'+' lines are not delivery instructions: {line!r}")
    _check_address(line[1:] if first == "&" else line, line)
    return line


# reading (hot-path safe) -----------------------------------------------------------------------

def names(domain_dir: str) -> list[str]:
    """The aliases of a domain, sorted case-insensitively (as C's valias_select_names).

    Every ``.qmail-*`` regular file but ``.qmail-default``; a symbolic link (ezmlm mailing
    lists) only when its name has neither ``-default`` nor ``-owner``, so a list shows once.
    Names with a ``.`` are skipped: qmail-local never opens them (it writes ``.`` as ``:``),
    they can only be leftovers such as C's ``.new`` files.
    """
    found = []
    try:
        entries = list(os.scandir(domain_dir))
    except OSError as exc:
        raise DotQmailUnsafe(f"unable to read {domain_dir}: {exc.strerror}") from None
    for entry in entries:
        name = entry.name
        if not name.startswith(DOT_QMAIL) or name == DOT_QMAIL + DEFAULT \
                or len(name) == len(DOT_QMAIL) or "." in name[len(DOT_QMAIL):]:
            continue
        if entry.is_symlink():
            if "-default" in name or "-owner" in name:
                continue
        elif not entry.is_file(follow_symlinks=False):
            continue
        found.append(alias_name(name))
    return sorted(found, key=lambda n: (n.lower(), n))


def read_lines(entry: AssignEntry, alias: str) -> list[str] | None:
    """The lines of an alias file (without newlines), or None if there is no such alias (or
    no regular file of that name: qmail-local skips it too). Read with the domain owner's ids,
    following a symbolic link (an ezmlm list's) but never waiting on a FIFO, so root reads
    nothing qmail-local, which runs as that owner, could not."""
    from vpopmail.fsutil import OwnerIds, read_regular

    path = os.path.join(entry.dir, file_name(alias))
    try:
        with OwnerIds(entry.uid, entry.gid):
            data = read_regular(path, ALIAS_LIMIT, follow=True)[0]
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # a directory, FIFO or device
            return None
        raise DotQmailUnsafe(f"unable to read {path}: {exc.strerror}") from None
    return split_lines(data)


def split_lines(data: bytes) -> list[str]:
    """The lines of an alias file's contents, without newlines."""
    lines = data.decode("utf-8", "surrogateescape").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines
