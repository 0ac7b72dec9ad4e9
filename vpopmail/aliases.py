"""Aliases and forwards: ``<domaindir>/.qmail-<alias>`` files (cdb backend) or rows of the
``valias`` table (MySQL backend, :class:`SqlAliases`; vdelivermail reads them, as C built with
--enable-valias). Both stores apply the same checks and give the same texts.

This is C vpopmail's vpalias.c layout (what valias and qmailadmin manage without SQL): one
file per alias in the domain directory, named ``.qmail-`` + the alias with ``.`` written as
``:`` (qmail-local looks extensions up that way), holding qmail delivery instructions, one a
line: ``&address`` or ``address`` (forward), ``/path/Maildir/`` (maildir), ``/path`` (mbox),
``|program``, ``#`` comment. qmailadmin writes forwards as ``&user@domain`` and a blackhole as
``#``. qmail-local reads these files itself, before the domain's ``.qmail-default`` (the
vdelivermail line) is ever consulted.

Writes replace the file atomically (temp file, fsync, rename) under the domain's
``.valias.lock``, mode 0600 and the domain's owner (as C's valias_insert: chmod 0600, chown);
the temp file is not named ``.qmail-*``, so qmail-local never sees a half-written alias.
Alias names are one safe file name component (vpopmail/names.py rules); ``default`` and the
names of existing users are refused (a ``.qmail-<user>`` would take the user's mail: qmail-local
finds it before ``.qmail-default``).

The read side (:func:`names`, :func:`read_lines`, :func:`select_lines`) is hot-path safe: it
imports only ``os`` besides the lean vpopmail modules.
"""
import errno
import os

from vpopmail.assign import AssignEntry
from vpopmail.errors import (BadInput, CorruptData, IllegalUsername, TemporaryError, UserDoesNotExist,
                             UsernameExists, VpopmailError)
from vpopmail.names import check_user, is_address, split_address

TYPE_CHECKING = False  # the typing module costs milliseconds on the hot path
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from auth.mysql import Connection, MySQLDatabase
    from vpopmail.api import Vpopmail
    from vpopmail.fsutil import FileLock

DOT_QMAIL = ".qmail-"
DEFAULT = "default"
LOCK = ".valias.lock"
#: C vpopmail's MAX_ALIAS_LINE: lines of this length or longer are refused (C's readers would
#: split them)
MAX_LINE = 160
MODE = 0o600
ALIAS_LIMIT = 1 << 24  # bytes an alias file that valias changes may have
#: file type bits (the stat module is not imported on the hot path)
_IFMT, _IFREG, _IFLNK = 0o170000, 0o100000, 0o120000


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
    return _split(data)


def _split(data: bytes) -> list[str]:
    """The lines of an alias file's contents, without newlines."""
    lines = data.decode("utf-8", "surrogateescape").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


# the valias table (users.backend = "mysql") -------------------------------------------------

def select_lines(db: "MySQLDatabase", domain: str, aliases: "Sequence[str]"
                 ) -> dict[str, list[str]]:
    """The ``valias`` rows of ``aliases`` in ``domain`` (a real domain), one query: alias ->
    its lines in the server's order (C has no ORDER BY; InnoDB gives insertion order). Hot-path
    safe; a table not created yet reads as no rows, an unreachable server raises
    NoAuthConnection."""
    marks = ", ".join(["%s"] * len(aliases))
    rows = db.read(f"SELECT alias, valias_line FROM valias WHERE domain = %s AND alias IN "
                   f"({marks})", [domain, *aliases], optional=True)
    found: dict[str, list[str]] = {}
    for alias, line in rows:
        found.setdefault((alias or "").lower(), []).append(line or "")
    return found


# changing (admin commands) ---------------------------------------------------------------------

class AliasStore:
    """What both stores share: resolving ``alias@domain`` and the checks before a change.
    ``api`` is a vpopmail.api.Vpopmail."""

    def __init__(self, api: "Vpopmail") -> None:
        self.api = api

    def resolve(self, address: str) -> tuple[str, AssignEntry]:
        """(alias, domain entry) of ``alias@domain`` (a bare alias uses the default domain)."""
        alias, domain = split_address(address, self.api.default_domain())
        if not domain:
            raise IllegalUsername(f"{address}: not a full email address and no default domain")
        entry = self.api.get_domain(domain)
        return check_alias(alias), entry

    def check_add(self, entry: AssignEntry, alias: str, address: str, line: str,
                  lines: list[str] | None) -> None:
        """Refuse a new line for an alias holding ``lines`` (None: no such alias yet)."""
        if lines is None and self.api.backend.get_user(entry, alias) is not None:
            raise AliasIsUser(f"{alias}@{entry.domain} is a user: an alias of that name "
                              "would take its mail")
        if lines is not None and line in lines:
            raise AliasLineExists(f"alias {address} -> {line} already exists.")

    def refuse_users_named_as_aliases(self, entry: AssignEntry, names: "Sequence[str]") -> None:
        """Raise UserIsAlias for the first of ``names`` that is an alias of ``entry``'s domain
        (the reverse of :meth:`check_add`): delivery looks at aliases first, so such a user
        would never get mail."""
        wanted = [name for name in names if name != DEFAULT]  # never an alias name
        if len(wanted) == 1:
            taken = wanted if self.lines(f"{wanted[0]}@{entry.domain}") is not None else []
        elif wanted:
            aliases = set(self.names(entry.domain)[0])
            taken = [name for name in wanted if name in aliases]
        else:
            taken = []
        if taken:
            raise UserIsAlias(f"{taken[0]}@{entry.domain} is an alias: a user of that name would "
                              "get none of its mail (remove the alias with valias -d first)")

    @staticmethod
    def kept_lines(address: str, lines: list[str] | None, line: str) -> list[str]:
        """``lines`` without every copy of ``line`` (trailing blanks ignored); raise
        NoSuchAlias if the alias or the line is not there."""
        wanted = line.rstrip(" \t\r\n")
        if lines is None:
            raise NoSuchAlias(f"alias {address} does not exist")
        kept = [item for item in lines if item.rstrip(" \t") != wanted]
        if len(kept) == len(lines):
            raise NoSuchAlias(f"alias {address} has no line {wanted!r}")
        return kept

    @staticmethod
    def sorted_names(found: "Iterable[str]") -> list[str]:
        """Alias names sorted case-insensitively (as C's valias_select_names)."""
        return sorted(found, key=lambda n: (n.lower(), n))


def open_aliases(api: "Vpopmail") -> AliasStore:
    """The alias store of the configured user backend: ``.qmail-<alias>`` files with the cdb
    backend (C without VALIAS), the ``valias`` table with MySQL (C's --enable-valias)."""
    if api.config.users_backend == "mysql":
        return SqlAliases(api)
    return Aliases(api)


class Aliases(AliasStore):
    """The aliases of every domain of one installation as ``.qmail-<alias>`` files."""

    def __init__(self, api: "Vpopmail") -> None:
        AliasStore.__init__(self, api)
        config = api.config
        self.sync = config.delivery_file_sync
        self.timeout = config.locks_timeout

    def path(self, entry: AssignEntry, alias: str) -> str:
        directory = entry.dir
        path = os.path.join(directory, file_name(check_alias(alias)))
        if os.path.dirname(path) != directory:  # cannot happen after check_alias; kept as a guard
            raise InvalidAliasLine(f"alias {alias!r} leaves the domain directory")
        return path

    def names(self, domain: str) -> tuple[list[str], AssignEntry]:
        entry = self.api.get_domain(domain)
        return names(entry.dir), entry

    def lines(self, address: str) -> list[str] | None:
        alias, entry = self.resolve(address)
        return read_lines(entry, alias)

    def all(self, domain: str) -> list[tuple[str, str]]:
        """(alias, line) for every line of every alias of ``domain``, aliases sorted."""
        found, entry = self.names(domain)
        pairs = []
        for alias in found:
            for line in read_lines(entry, alias) or []:
                pairs.append((alias, line))
        return pairs

    def _lock(self, entry: AssignEntry) -> "FileLock":
        from vpopmail.fsutil import FileLock

        return FileLock(os.path.join(entry.dir, LOCK), self.timeout,
                        entry.uid, entry.gid)

    def _write(self, entry: AssignEntry, path: str, lines: list[str], mode: int) -> None:
        from vpopmail.fsutil import atomic_write

        data = "".join(line + "\n" for line in lines).encode("utf-8", "surrogateescape")
        tmp = os.path.join(os.path.dirname(path), f".valias.tmp.{os.getpid()}")
        atomic_write(path, data, mode, entry.uid, entry.gid, self.sync, tmp)

    @staticmethod
    def _current(path: str) -> tuple[list[str] | None, int]:
        """The lines of the alias file at ``path`` (None if absent) and the mode to write it
        with (0600, keeping the owner-execute bit qmail reads as "forward only"). Read in one
        open that follows no link: a link swapped in by the domain owner must not have root
        copy another file into the alias."""
        from vpopmail.fsutil import read_regular

        try:
            data, st = read_regular(path, ALIAS_LIMIT)
        except FileNotFoundError:
            return None, MODE
        except OSError as exc:
            name = os.path.basename(path)
            if exc.errno == errno.ELOOP:
                raise InvalidAliasLine(f"{name} is a symbolic link (a mailing list?): change "
                                       "it with the list's tools") from None
            if exc.errno == errno.EINVAL:
                raise InvalidAliasLine(f"{name} is not a regular file") from None
            raise DotQmailUnsafe(f"unable to read {path}: {exc.strerror}") from None
        return _split(data), MODE | (st.st_mode & 0o100)

    def add_line(self, address: str, line: str) -> str:
        """Append a delivery line to an alias (creating it); returns the line as stored."""
        alias, entry = self.resolve(address)
        line = check_line(line)
        path = self.path(entry, alias)
        with self._lock(entry):
            lines, mode = self._current(path)
            self.check_add(entry, alias, address, line, lines)
            self._write(entry, path, (lines or []) + [line], mode)
        return line

    def remove_line(self, address: str, line: str) -> bool:
        """Remove every copy of one line from an alias; the file goes with its last line.
        Returns True if the alias is gone."""
        alias, entry = self.resolve(address)
        path = self.path(entry, alias)
        with self._lock(entry):
            lines, mode = self._current(path)
            kept = self.kept_lines(address, lines, line)
            if any(item.strip(" \t") for item in kept):
                self._write(entry, path, kept, mode)
                return False
            self._unlink(path)
            return True

    def delete(self, address: str) -> None:
        """Delete an alias file (a mailing list's symbolic link is removed, not its target)."""
        alias, entry = self.resolve(address)
        path = self.path(entry, alias)
        with self._lock(entry):
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                raise NoSuchAlias(f"alias {address} does not exist") from None
            if st.st_mode & _IFMT not in (_IFREG, _IFLNK):
                raise InvalidAliasLine(f"{os.path.basename(path)} is not a regular file")
            self._unlink(path)

    def _unlink(self, path: str) -> None:
        from vpopmail.errors import CouldNotUpdateFile
        from vpopmail.fsutil import fsync_dir

        try:
            os.unlink(path)
            if self.sync:
                fsync_dir(os.path.dirname(path))
        except OSError as exc:
            raise CouldNotUpdateFile(f"{path}: {exc.strerror}") from None


class SqlAliases(AliasStore):
    """The aliases as rows of C's ``valias`` table (alias, domain, valias_line; one row per
    line), keyed by the real domain. Reads go to the read server; every change is one
    transaction on the update server that locks the alias's rows first (SELECT ... FOR
    UPDATE), so two concurrent changes of one alias are serialised and nothing is half done.
    Listings are sorted by alias name (C's queries have no ORDER BY); the lines of an alias
    keep the server's order."""

    TABLES = ("valias",)

    def __init__(self, api: "Vpopmail", db: "MySQLDatabase | None" = None) -> None:
        AliasStore.__init__(self, api)
        self.db: MySQLDatabase = db or api.backend  # type: ignore[assignment]

    def names(self, domain: str) -> tuple[list[str], AssignEntry]:
        entry = self.api.get_domain(domain)
        rows = self.db.read("SELECT DISTINCT alias FROM valias WHERE domain = %s",
                            [entry.real_domain], optional=True)
        return self.sorted_names(row[0] or "" for row in rows), entry

    def lines(self, address: str) -> list[str] | None:
        alias, entry = self.resolve(address)
        return select_lines(self.db, entry.real_domain, [alias]).get(alias)

    def all(self, domain: str) -> list[tuple[str, str]]:
        """(alias, line) for every row of ``domain``, aliases sorted, lines in server order."""
        entry = self.api.get_domain(domain)
        rows = self.db.read("SELECT alias, valias_line FROM valias WHERE domain = %s",
                            [entry.real_domain], optional=True)
        pairs = [(alias or "", line or "") for alias, line in rows]
        order = {name: i for i, name in enumerate(self.sorted_names({a for a, _ in pairs}))}
        return sorted(pairs, key=lambda pair: order[pair[0]])  # stable: line order kept

    @staticmethod
    def _locked(conn: "Connection", alias: str, domain: str) -> list[str] | None:
        rows = conn.query("SELECT valias_line FROM valias WHERE alias = %s AND domain = %s "
                          "FOR UPDATE", [alias, domain])
        return [row[0] or "" for row in rows] or None

    def add_line(self, address: str, line: str) -> str:
        """Add a row for one delivery line (the first row makes the alias); returns the line."""
        alias, entry = self.resolve(address)
        line = check_line(line)
        domain = entry.real_domain

        def work(conn: "Connection") -> None:
            self.check_add(entry, alias, address, line, self._locked(conn, alias, domain))
            conn.query("INSERT INTO valias (alias, domain, valias_line) VALUES (%s, %s, %s)",
                       [alias, domain, line])

        self.db.transaction(work, self.TABLES)
        return line

    def remove_line(self, address: str, line: str) -> bool:
        """Delete every row holding ``line``; the alias goes with its last non-blank line.
        Returns True if the alias is gone."""
        alias, entry = self.resolve(address)
        domain = entry.real_domain

        def work(conn: "Connection") -> bool:
            lines = self._locked(conn, alias, domain)
            kept = self.kept_lines(address, lines, line)
            gone = not any(item.strip(" \t") for item in kept)
            if gone:
                conn.query("DELETE FROM valias WHERE alias = %s AND domain = %s", [alias, domain])
            else:
                for value in set(lines or []) - set(kept):
                    conn.query("DELETE FROM valias WHERE alias = %s AND domain = %s AND "
                               "valias_line = %s", [alias, domain, value])
            return gone

        return bool(self.db.transaction(work, self.TABLES))

    def delete(self, address: str) -> None:
        """Delete every row of an alias."""
        alias, entry = self.resolve(address)

        def work(conn: "Connection") -> None:
            conn.query("DELETE FROM valias WHERE alias = %s AND domain = %s",
                       [alias, entry.real_domain])
            if conn.affected() == 0:
                raise NoSuchAlias(f"alias {address} does not exist")

        self.db.transaction(work, self.TABLES)
