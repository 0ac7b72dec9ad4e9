"""What every concern of the API stands on: the configuration, the stores, qmail's files, the
lock of a directory's .dir-control, and finding a domain (an address's too).

The concerns build on it in one order, each module importing only those before it:
``limits`` and ``aliases``, then ``users`` (a new user's quota and flags come from the limits),
then ``domains`` (a new domain gets its postmaster); ``vpopmail.api.Vpopmail`` joins them.
"""
from __future__ import annotations

import os

from vpopmail import assign, ipmap
from vpopmail.assign import AssignEntry
from vpopmail.config import Config
from vpopmail.errors import CorruptData, CouldNotUpdateFile, DomainDoesNotExist, IllegalUsername
from vpopmail.fsutil import FileLock
from vpopmail.names import check_domain, split_address
from vpopmail.stores import Stores, open_stores

TYPE_CHECKING = False  # the typing idiom without importing collections (start-up)
if TYPE_CHECKING:
    from vpopmail.qmail import QmailFiles

DIR_LOCK = ".dir-control.lock"

#: the directory locks this process holds, and how many holds each has (see DirLock)
_LOCKS: dict[str, FileLock] = {}
_HOLDS: dict[str, int] = {}


class DirLock:
    """A hold on a directory's .dir-control.lock: the first hold in this process takes the
    lock, the last one out gives it back. Held again inside (an operation made of others, each
    taking it), it is the one hold: POSIX locks are the process's, and closing a second
    descriptor of the lock file would drop the first one's lock."""

    __slots__ = ("lock", "held")

    def __init__(self, lock: FileLock) -> None:
        self.lock = lock
        self.held = False

    def __enter__(self) -> "DirLock":
        path = self.lock.path
        if path in _HOLDS:
            _HOLDS[path] += 1
            self.held = True
            return self
        self.held = self._acquire()
        if self.held:
            _LOCKS[path], _HOLDS[path] = self.lock, 1
        return self

    def _acquire(self) -> bool:
        """Take the lock; whether there is one to give back."""
        self.lock.__enter__()
        return True

    def __exit__(self, *exc: object) -> None:
        if not self.held:
            return
        self.held = False
        path = self.lock.path
        _HOLDS[path] -= 1
        if _HOLDS[path] == 0:
            del _HOLDS[path]
            _LOCKS.pop(path).__exit__()


class DomainLock(DirLock):
    """The lock of a domain (its directory's .dir-control.lock), taken by every change of its
    users, aliases, limits and catch-all for the whole check-and-change, and by vdeldomain
    from before its first change until the directory is gone. Once taken, the domain must
    still be the one resolved: a vdeldomain it waited for leaves the lock file unlinked (the
    directory removed) and users/cdb without the domain, so the change is refused as for a
    domain that does not exist instead of reaching a half-removed directory (or, once the
    directory is gone, failing on a missing file)."""

    __slots__ = ("api", "entry")

    def __init__(self, api: "ApiBase", entry: AssignEntry) -> None:
        super().__init__(api._lock_file(entry.dir, entry.uid, entry.gid))
        self.api = api
        self.entry = entry

    def _acquire(self) -> bool:
        try:
            self.lock.__enter__()
        except CouldNotUpdateFile:
            self._refuse_if_gone()  # removed by a vdeldomain
            if os.path.lexists(self.entry.dir):
                raise
            # still routed, its directory missing (removed by hand, a file system not
            # mounted): nothing there to guard, and the change meets that damage as before
            return False
        try:
            if os.fstat(self.lock.fd).st_nlink == 0:
                raise DomainDoesNotExist(self.entry.domain)
            self._refuse_if_gone()
        except BaseException:
            self.lock.__exit__()
            raise
        return True

    def _refuse_if_gone(self) -> None:
        found = self.api.find_domain(self.entry.real_domain)
        if found is None or found.dir != self.entry.dir:
            raise DomainDoesNotExist(self.entry.domain)


class ApiBase:
    """One vpopmail installation, as its configuration describes it: its state and lookups."""

    def __init__(self, config: Config, stores: Stores | None = None,
                 qmail: QmailFiles | None = None) -> None:
        self.config = config
        #: every store of the installation; ``backend`` is its users
        self.stores = stores or open_stores(config, admin=True)
        self.backend = self.stores.users
        self._qmail = qmail
        self.timeout = config.locks_timeout

    @property
    def qmail(self) -> QmailFiles:
        """qmail's files (users/assign, control/): loaded at first use, since the user
        commands never touch them."""
        if self._qmail is None:
            from vpopmail.qmail import QmailFiles

            self._qmail = QmailFiles(self.config)
        return self._qmail

    def _lock_file(self, directory: str, uid: int, gid: int) -> FileLock:
        return FileLock(os.path.join(directory, DIR_LOCK), self.timeout, uid, gid)

    def _dir_lock(self, directory: str, uid: int, gid: int) -> DirLock:
        """The lock that guards a directory's .dir-control (domains root or a domain)."""
        return DirLock(self._lock_file(directory, uid, gid))

    def domain_lock(self, entry: AssignEntry) -> DomainLock:
        """The lock of ``entry``'s domain for a change of it (:class:`DomainLock`): taken after
        users/assign's lock where both are, never before it. DomainDoesNotExist once it is
        taken if a vdeldomain removed the domain meanwhile."""
        return DomainLock(self, entry)

    def find_domain(self, domain: str) -> AssignEntry | None:
        """The assign entry of ``domain`` (an alias resolves to its real domain), or None."""
        domain = check_domain(domain.lower())
        try:
            return assign.lookup(self.config.qmail_dir, domain)
        except CorruptData:
            # no users/cdb: a new qmail has no domains; a lost one is damage (has_users_cdb
            # says which; qmail's files load only then, the user commands never need them)
            if self.qmail.has_users_cdb():
                raise
            return None

    def get_domain(self, domain: str) -> AssignEntry:
        entry = self.find_domain(domain)
        if entry is None:
            raise DomainDoesNotExist(domain)
        return entry

    def default_domain(self) -> str:
        """$VPOPMAIL_DOMAIN, else users.default_domain, else ~vpopmail/etc/defaultdomain."""
        return ipmap.default_domain(self.config, dict(os.environ))

    def _split(self, address: str) -> tuple[str, AssignEntry]:
        """(local part, domain entry) of an address; a bare name uses the default domain."""
        name, domain = split_address(address, self.default_domain())
        if not domain:
            raise IllegalUsername(f"{address}: not a full email address and no default domain")
        return name, self.get_domain(domain)
