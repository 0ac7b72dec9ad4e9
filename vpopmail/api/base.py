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


class DomainLock(FileLock):
    """The lock of a domain (its directory's .dir-control.lock), taken by every change of its
    users, aliases, limits and catch-all for the whole check-and-change, and by vdeldomain
    from before its first change until the directory is gone. Once taken, the domain must
    still be the one resolved: a vdeldomain it waited for leaves the lock file unlinked (the
    directory removed) and users/cdb without the domain, so the change is refused as for a
    domain that does not exist instead of reaching a half-removed directory (or, once the
    directory is gone, failing on a missing file). Entered while this process holds the lock
    already (an operation made of others, each taking it), it joins that hold unchecked: no
    vdeldomain can have come between."""

    __slots__ = ("api", "entry")

    def __init__(self, api: "ApiBase", entry: AssignEntry) -> None:
        super().__init__(os.path.join(entry.dir, DIR_LOCK), api.timeout, entry.uid, entry.gid)
        self.api = api
        self.entry = entry

    def __enter__(self) -> "DomainLock":
        try:
            super().__enter__()
        except CouldNotUpdateFile:
            self._refuse_if_gone()  # removed by a vdeldomain
            if os.path.lexists(self.entry.dir):
                raise
            # still routed, its directory missing (removed by hand, a file system not
            # mounted): nothing there to guard, and the change meets that damage as before.
            # Nothing is held, and the exit finds no hold of this process to give back.
            return self
        if self.took:
            try:
                if os.fstat(self.fd).st_nlink == 0:
                    raise DomainDoesNotExist(self.entry.domain)
                self._refuse_if_gone()
            except BaseException:
                super().__exit__()
                raise
        return self

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

    def _dir_lock(self, directory: str, uid: int, gid: int) -> FileLock:
        """The lock that guards a directory's .dir-control (domains root or a domain)."""
        return FileLock(os.path.join(directory, DIR_LOCK), self.timeout, uid, gid)

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
