"""qmail's files that vpopmail maintains: users/assign + users/cdb, rcpthosts, morercpthosts
(+ .cdb past 50 domains), virtualdomains, locals. Admin side only (the hot path reads through
:mod:`vpopmail.assign`).

Every file is replaced atomically under its ``.lock`` sibling, as C vpopmail does; users/cdb
and morercpthosts.cdb are built natively, byte-identical to qmail-newu and qmail-newmrh.
"""
from __future__ import annotations

import os

from vpopmail.assign import (AssignEntry, cdb_records, control_sort_key, insert_sorted,
                             parse_entry, sort_key)
from vpopmail.cdbwrite import build
from vpopmail.config import Config
from vpopmail.errors import (CannotReadAssign, ConfigError, CorruptData, DomainAlreadyExists,
                             DomainDoesNotExist)
from vpopmail.fsutil import FileLock, atomic_write

MAX_RCPTHOSTS = 50


class QmailFiles:
    """The qmail control tree at ``config.qmail_dir``."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.root = config.qmail_dir
        self.timeout = config.locks_timeout
        self.sync = config.delivery_file_sync

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def _lock(self, path: str) -> FileLock:
        return FileLock(path + ".lock", self.timeout)

    def assign_lock(self, make_tree: bool = False) -> FileLock:
        """users/assign's lock, for a whole check-and-change of the list of domains (add or
        delete a domain: is it there, then make or remove it), so that two commands never
        both see a name free. Held again inside (the writes of users/assign take it), it is
        the one hold (:class:`~vpopmail.fsutil.FileLock` is re-entrant). ``make_tree``: the
        qmail directory must exist, ``users/`` and ``control/`` are made now
        (:meth:`add_domain`)."""
        if make_tree:
            self._make_tree()
        return self._lock(self.path("users", "assign"))

    def _make_tree(self) -> None:
        """``users/`` and ``control/`` if missing; the qmail directory itself never (a
        mistyped ``paths.qmail_dir`` would get a qmail tree that no qmail reads)."""
        if not os.path.isdir(self.root):
            raise ConfigError(f"paths.qmail_dir {self.root} is not a directory: set it to "
                              f"qmail's directory (e.g. /var/qmail) in vpopmail.toml")
        os.makedirs(self.path("users"), exist_ok=True)
        os.makedirs(self.path("control"), exist_ok=True)

    def _write(self, path: str, data: bytes) -> None:
        atomic_write(path, data, 0o644, sync=self.sync)

    # users/assign and users/cdb

    def assign_lines(self, rebuilding: bool = False) -> list[str]:
        """The lines of users/assign before its final ``.``. A missing file is an empty one on
        a new qmail; with users/cdb beside it, the list of domains is lost: CorruptData, so
        that no command writes a users/assign of its own domain alone (``rebuilding``:
        vregenerate, which builds the list again from the domains tree)."""
        path = self.path("users", "assign")
        try:
            with open(path, encoding="latin-1") as fh:
                text = fh.read()
        except FileNotFoundError:
            if rebuilding or not os.path.exists(self.path("users", "cdb")):
                return []
            raise CorruptData(
                f"{path} is missing but users/cdb exists: the list of domains is lost; nothing "
                f"was changed. Put it back from a backup, or rebuild it from the domains "
                f"directory with vregenerate (alias domains must then be added again)") from None
        except OSError as exc:
            raise CannotReadAssign(f"{path}: {exc.strerror}") from None
        lines: list[str] = []
        for line in text.split("\n"):
            if line.startswith("."):
                return lines
            if line:
                lines.append(line)
        raise CorruptData(f"{path}: missing final '.' line")

    def has_users_cdb(self) -> bool:
        """Whether users/cdb exists; False on a new qmail, CorruptData if it is missing while
        users/assign lists domains (qmail-newu or vregenerate makes it again)."""
        if os.path.exists(self.path("users", "cdb")):
            return True
        if self.entries():
            raise CorruptData(f"{self.path('users', 'cdb')} is missing while users/assign lists "
                              f"domains: rebuild it with qmail-newu or vregenerate")
        return False

    def entries(self, rebuilding: bool = False) -> list[AssignEntry]:
        """Every vpopmail domain and alias domain in users/assign, in file order."""
        return [e for e in map(parse_entry, self.assign_lines(rebuilding)) if e is not None]

    def _write_assign(self, lines: list[str]) -> None:
        text = "".join(line + "\n" for line in lines) + ".\n"
        records = cdb_records(text, self.path("users", "assign"))
        self._write(self.path("users", "assign"), text.encode("latin-1"))
        self._write(self.path("users", "cdb"), build(records))

    def rebuild_users_cdb(self) -> None:
        """Rebuild users/cdb from users/assign (what qmail-newu does)."""
        with self.assign_lock():
            self._write_assign(self.assign_lines())

    def add_assign(self, entry: AssignEntry, resume: bool = False) -> None:
        """Add the line of ``entry``. With ``resume`` (finishing an interrupted vadddomain),
        the same line already there is what a kill between users/assign and users/cdb
        leaves: users/cdb is rebuilt and that is all."""
        with self.assign_lock():
            lines = self.assign_lines()
            if resume and entry.line() in lines:
                self._write_assign(lines)
                return
            if any((e := parse_entry(line)) and e.domain == entry.domain for line in lines):
                raise DomainAlreadyExists(entry.domain)
            self._write_assign(insert_sorted(lines, entry.line(), sort_key))

    def replace_assign(self, entries: list[AssignEntry], under: str) -> None:
        """Make ``entries`` the vpopmail lines of users/assign for the domains tree ``under``:
        lines for directories below it are replaced, all other lines are kept."""
        with self.assign_lock():
            ours = {e.domain for e in entries}
            kept = [line for line in self.assign_lines(rebuilding=True)
                    if not ((e := parse_entry(line)) and (e.domain in ours
                                                          or e.dir.startswith(under + os.sep)))]
            self._write_assign(sorted(kept + [e.line() for e in entries], key=sort_key))

    def ensure_routed(self, domains: list[str]) -> None:
        """Add the domains missing from rcpthosts/morercpthosts and virtualdomains (removes
        nothing)."""
        accepted = set(self.read_control("rcpthosts")) | set(self.read_control("morercpthosts"))
        routed = {line.split(":", 1)[0] for line in self.read_control("virtualdomains")}
        extra = False
        for domain in domains:
            if domain not in accepted:
                if len(self.read_control("rcpthosts")) < MAX_RCPTHOSTS:
                    self._edit_control("rcpthosts", add=domain)
                else:
                    extra = self._edit_control("morercpthosts", add=domain) or extra
            if domain not in routed:
                self._edit_control("virtualdomains", add=f"{domain}:{domain}")
        if extra:
            self._build_morercpthosts()

    def remove_assign(self, domain: str, missing_ok: bool = False) -> None:
        """Remove the line of ``domain``; if there is none, ``missing_ok`` (the caller saw the
        domain in users/cdb: a command killed between the two writes) rebuilds users/cdb."""
        with self.assign_lock():
            lines = self.assign_lines()
            kept = [line for line in lines
                    if not ((e := parse_entry(line)) and e.domain == domain)]
            if len(kept) == len(lines) and not missing_ok:
                raise DomainDoesNotExist(domain)
            self._write_assign(kept)

    # control files

    def read_control(self, name: str) -> list[str]:
        try:
            with open(self.path("control", name), encoding="latin-1") as fh:
                return [line.rstrip("\n") for line in fh if line.strip()]
        except FileNotFoundError:
            return []

    def _edit_control(self, name: str, add: str | None = None, remove: str | None = None,
                      match: str = "line", create: bool = False) -> bool:
        """Add a line in C vpopmail's order (:func:`insert_sorted`) and/or remove lines
        (``match``: whole line, or the part before ``:``); ``create`` writes the file even
        when nothing changed but it is missing. Removing from a file that does not exist
        changes nothing and leaves no lock file (as morercpthosts.lock was left)."""
        path = self.path("control", name)
        if add is None and not create and not os.path.exists(path):
            return False
        with self._lock(path):
            lines = self.read_control(name)
            kept = lines
            if remove is not None:
                kept = [line for line in lines
                        if (line.split(":", 1)[0] if match == "key" else line).lower() != remove]
            if add is not None and add not in kept:
                kept = insert_sorted(kept, add, control_sort_key)
            if kept != lines or (create and not os.path.exists(path)):
                self._write(path, "".join(line + "\n" for line in kept).encode("latin-1"))
            return kept != lines

    def _build_morercpthosts(self) -> None:
        keys = [line.rstrip(" \t").lower().encode("latin-1")  # as qmail-newmrh
                for line in self.read_control("morercpthosts") if not line.startswith("#")]
        self._write(self.path("control", "morercpthosts.cdb"), build([(k, b"") for k in keys]))

    def add_domain(self, entry: AssignEntry, optimize: bool = False, resume: bool = False
                   ) -> None:
        """Make qmail accept and route ``entry.domain`` (a domain or an alias domain); lines
        already there are kept, not doubled, and ``resume`` (finishing an interrupted
        vadddomain) accepts its users/assign line already present. ``users/`` and ``control/``
        are made if missing; the qmail directory itself never is (a mistyped
        ``paths.qmail_dir`` would get a qmail tree that no qmail reads)."""
        self._make_tree()
        self.add_assign(entry, resume)
        domain = entry.domain
        if domain not in self.read_control("rcpthosts") + self.read_control("morercpthosts"):
            if len(self.read_control("rcpthosts")) < MAX_RCPTHOSTS:
                self._edit_control("rcpthosts", add=domain)
            else:
                self._edit_control("morercpthosts", add=domain)
        if not optimize and domain in self.read_control("morercpthosts"):
            self._build_morercpthosts()
        self._edit_control("virtualdomains", add=f"{domain}:{domain}")
        self._edit_control("locals", remove=domain, create=True)
        if not optimize:
            self.reload_qmail_send()

    def remove_domain(self, domain: str, missing_ok: bool = False) -> None:
        """Undo :meth:`add_domain` for ``domain`` (``missing_ok``: finish an interrupted
        removal, whatever is already gone)."""
        self.remove_assign(domain, missing_ok)
        self._edit_control("rcpthosts", remove=domain)
        if self._edit_control("morercpthosts", remove=domain):
            self._build_morercpthosts()
        self._edit_control("virtualdomains", remove=domain, match="key")
        self.reload_qmail_send()

    def reload_qmail_send(self) -> None:
        """SIGHUP the qmail-send of this qmail directory so that it rereads virtualdomains:
        a process named qmail-send whose working directory is ``<qmail_dir>/queue`` (qmail-send
        changes there at start and back there after each reread). C signalled every
        qmail-send on the host; here another qmail's is left alone, and a qmail directory
        that runs none (a sandbox) signals nothing. Read from /proc (about 3 ms; psutil's import
        and scan about 14 ms)."""
        try:
            queue = os.stat(self.path("queue"))
        except OSError:
            return
        import signal

        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/comm", "rb") as fh:
                    if fh.read() != b"qmail-send\n":
                        continue
                cwd = os.stat(f"/proc/{pid}/cwd")
                if (cwd.st_dev, cwd.st_ino) == (queue.st_dev, queue.st_ino):
                    os.kill(int(pid), signal.SIGHUP)
            except OSError:  # gone meanwhile, or not ours to look at or signal
                continue

