"""The aliases as ``.qmail-<alias>`` files in the domain directories (vpopmail.aliases: the
format; C vpopmail's vpalias.c layout, what valias and qmailadmin manage without SQL).

Writes replace the file atomically (temp file, fsync, rename) under the domain's
``.valias.lock``, mode 0600 and the domain's owner (as C's valias_insert: chmod 0600, chown);
the temp file is not named ``.qmail-*``, so qmail-local never sees a half-written alias.
"""
import errno
import os

from vpopmail.aliases import (ALIAS_LIMIT, DotQmailUnsafe, InvalidAliasLine, NoSuchAlias,
                              check_alias, check_line, file_name, names, read_lines,
                              split_lines)
from vpopmail.assign import AssignEntry
from vpopmail.stores import AliasChecks, UserDatabase

TYPE_CHECKING = False  # the typing idiom without importing typing
if TYPE_CHECKING:
    from vpopmail.config import Config
    from vpopmail.fsutil import FileLock

LOCK = ".valias.lock"
MODE = 0o600
#: file type bits (the stat module is not imported here)
_IFMT, _IFREG, _IFLNK = 0o170000, 0o100000, 0o120000


class Aliases(AliasChecks):
    """The aliases of every domain of one installation as ``.qmail-<alias>`` files."""

    def __init__(self, config: "Config", users: UserDatabase) -> None:
        AliasChecks.__init__(self, users)
        self.sync = config.delivery_file_sync
        self.timeout = config.locks_timeout

    def path(self, entry: AssignEntry, alias: str) -> str:
        directory = entry.dir
        path = os.path.join(directory, file_name(check_alias(alias)))
        if os.path.dirname(path) != directory:  # cannot happen after check_alias; kept as a guard
            raise InvalidAliasLine(f"alias {alias!r} leaves the domain directory")
        return path

    def names(self, entry: AssignEntry) -> list[str]:
        return names(entry.dir)

    def lines(self, entry: AssignEntry, alias: str) -> list[str] | None:
        return read_lines(entry, alias)

    def all(self, entry: AssignEntry) -> list[tuple[str, str]]:
        """(alias, line) for every line of every alias of the domain, aliases sorted."""
        found = self.names(entry)
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
        return split_lines(data), MODE | (st.st_mode & 0o100)

    def add_line(self, entry: AssignEntry, alias: str, address: str, line: str) -> str:
        """Append a delivery line to an alias (creating it); returns the line as stored."""
        line = check_line(line)
        path = self.path(entry, alias)
        with self._lock(entry):
            lines, mode = self._current(path)
            self.check_add(entry, alias, address, line, lines)
            self._write(entry, path, (lines or []) + [line], mode)
        return line

    def remove_line(self, entry: AssignEntry, alias: str, address: str, line: str) -> bool:
        """Remove every copy of one line from an alias; the file goes with its last line.
        Returns True if the alias is gone."""
        path = self.path(entry, alias)
        with self._lock(entry):
            lines, mode = self._current(path)
            kept = self.kept_lines(address, lines, line)
            if any(item.strip(" \t") for item in kept):
                self._write(entry, path, kept, mode)
                return False
            self._unlink(path)
            return True

    def delete(self, entry: AssignEntry, alias: str, address: str) -> None:
        """Delete an alias file (a mailing list's symbolic link is removed, not its target)."""
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
