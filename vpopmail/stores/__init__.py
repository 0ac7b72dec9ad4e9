"""The stores, one per concern, and the one place that chooses them: :func:`open_stores`.

- users, with their last logins (lastauth): vpasswd + vpasswd.cdb (:mod:`.cdbfiles`) or the
  SQL users table (:mod:`.sql`); the interface is :class:`UserDatabase`;
- aliases: ``.qmail-<alias>`` files (:mod:`.aliasfiles`) or ``valias`` rows;
- relay (roaming IPs): ``etc/open-smtp`` (:mod:`vpopmail.stores.relay`) or the ``relay`` table;
- domain limits: ``.qmailadmin-limits`` files (:mod:`vpopmail.limits`) or the ``limits`` table;
- the auth log: ``vlog`` rows (C's --enable-sql-logging); nothing with the files;
- a copy of the alias domains for Dovecot's SQL queries: ``aliasdomains`` rows; none with the
  files (qmail's users/assign is where they live).

This module alone reads ``users.backend`` and imports the SQL module; everything else gets the
store it needs from a :class:`Stores`. The SQL stores of one process share one object, which
holds its read and update connections. What only one backend can do (vmkpasswd -r, vlog, the
limits table, the valias rows vdelivermail follows) is a capability that is None elsewhere.
Here too: the user record (:class:`VUser`), the users' interface (:class:`UserDatabase`) and the
checks both alias stores share (:class:`AliasChecks`). Hot-path safe: no dataclasses/typing
imports (12 ms and 10 ms), and no store is imported before it is asked for.
"""
from abc import ABC, abstractmethod

from vpopmail.assign import AssignEntry
from vpopmail.errors import ConfigError, VpopmailError
from vpopmail.record import SlotRecord

TYPE_CHECKING = False  # the typing idiom without importing typing (hot path)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from vpopmail.config import Config
    from vpopmail.limits import Limits
    from vpopmail.stores.cdbfiles import CdbFiles
    from vpopmail.stores.protocols import (AliasDomainsTable, AliasStore, AuthLog, LimitsTable,
                                           ValiasRows)
    from vpopmail.stores.relay import RelayTable
    from vpopmail.stores.sql import MySQLDatabase

USE_POP = 1


class VUser(SlotRecord):
    """One user (C vpopmail's ``struct vqpasswd``); ``flags`` is vpasswd's gid field."""

    __slots__ = ("name", "passwd", "uid", "flags", "gecos", "dir", "quota", "clear")
    _hidden = ("clear",)

    def __init__(self, name: str, passwd: str = "", uid: int = USE_POP, flags: int = 0,
                 gecos: str = "", dir: str = "", quota: str = "NOQUOTA", clear: str = "") -> None:
        self.name = name
        self.passwd = passwd
        self.uid = uid
        self.flags = flags
        self.gecos = gecos
        self.dir = dir
        self.quota = quota
        self.clear = clear


class Fault(Exception):
    """What a consistency check (vcheck) found wrong, and the command that fixes it."""

    def __init__(self, text: str, fix: str) -> None:
        super().__init__(text)
        self.text = text
        self.fix = fix


class UserDatabase(ABC):
    """Storage of the users of every domain. ``domain`` arguments are resolved assign entries."""

    #: what vcheck calls this store (the name of its step 7)
    store_name = "users"
    #: the files that mark a directory of users/assign as a domain's (vadddomain writes them,
    #: vpasswd with the cdb files; one is enough; also what vregenerate looks for in the
    #: domains tree): qmail-pw2u's lines for qmail's own users (~alias) name others
    domain_files: "tuple[str, ...]" = ("vpasswd", ".qmail-default")

    @abstractmethod
    def get_user(self, domain: AssignEntry, name: str) -> VUser | None:
        """The user ``name`` of ``domain``, or None."""

    @abstractmethod
    def list_users(self, domain: AssignEntry) -> list[VUser]:
        """Every user of ``domain``, sorted by name."""

    @abstractmethod
    def has_users(self, domain: AssignEntry) -> bool:
        """Whether any user of ``domain`` is stored, without reading them (False for an assign
        line that is no vpopmail domain, such as qmail-pw2u's system users)."""

    @abstractmethod
    def add_users(self, domain: AssignEntry, users: list[VUser], index: bool = True) -> None:
        """Add users in one transaction; raise UsernameExists (and add none) on a clash.
        ``index=False`` defers the lookup index (vadduser -O; vmkpasswd rebuilds it)."""

    @abstractmethod
    def update_users(self, domain: AssignEntry, users: list[VUser], index: bool = True) -> None:
        """Replace the stored records of these users (one rebuild; none with ``index=False``);
        raise UserDoesNotExist (and change nothing) if one is absent."""

    @abstractmethod
    def modify_users(self, domain: AssignEntry, names: list[str],
                     change: "Callable[[VUser], VUser]", index: bool = True) -> list[VUser]:
        """Apply ``change`` to the stored records of ``names`` atomically (no concurrent change
        is lost) and return the new records; raise UserDoesNotExist (changing nothing) if one
        is absent."""

    @abstractmethod
    def delete_user(self, domain: AssignEntry, name: str) -> VUser:
        """Remove ``name`` and return its last record; raise UserDoesNotExist if absent."""

    @abstractmethod
    def create_domain(self, domain: AssignEntry) -> None:
        """Prepare storage for a new domain."""

    @abstractmethod
    def delete_domain(self, domain: AssignEntry) -> None:
        """Drop every user of the domain."""

    @abstractmethod
    def record_login(self, domain: AssignEntry, user: VUser, remote_ip: str) -> None:
        """Remember a successful login (vpopmail's lastauth): from where, and when (now)."""

    @abstractmethod
    def last_login(self, domain: AssignEntry, user: VUser) -> tuple[float, str] | None:
        """When and from where ``user`` last logged in (creation counts, with 0.0.0.0), or
        None if nothing was ever recorded."""

    @abstractmethod
    def rebuild_index(self, domain: AssignEntry) -> None:
        """Rebuild any derived index (vpasswd.cdb): what vmkpasswd asks for."""

    @abstractmethod
    def verify(self, domain: AssignEntry) -> str:
        """vcheck's look at the stored users of ``domain``: a summary of what was found, or
        :class:`Fault` for what logins and deliveries would trip over."""

    def close(self) -> None:  # noqa: B027 - optional: only server backends have work here
        """Let go of server connections (nothing to do for files)."""

    def release(self) -> None:  # noqa: B027 - optional: only server backends have work here
        """Keep server connections for this process's next request, to be checked before
        use: the server may close them meanwhile (:func:`drop_kept_connections` closes them)."""


class AliasChecks:
    """What both stores share: the checks before a change (``users``: the user store, since
    an alias may not take a user's name). ``address`` arguments are the alias as the caller
    named it, for the texts."""

    def __init__(self, users: UserDatabase) -> None:
        self.users = users

    def names(self, entry: AssignEntry) -> list[str]:
        raise NotImplementedError

    def lines(self, entry: AssignEntry, alias: str) -> list[str] | None:
        raise NotImplementedError

    def check_add(self, entry: AssignEntry, alias: str, address: str, line: str,
                  lines: list[str] | None) -> None:
        """Refuse a new line for an alias holding ``lines`` (None: no such alias yet)."""
        from vpopmail.aliases import AliasIsUser, AliasLineExists

        if lines is None and self.users.get_user(entry, alias) is not None:
            raise AliasIsUser(f"{alias}@{entry.domain} is a user: an alias of that name "
                              "would take its mail")
        if lines is None and alias.endswith("-default"):  # john-default: every john-*'s mail
            prefix = alias[:-len("default")]
            taken = sorted(user.name for user in self.users.list_users(entry)
                           if user.name.startswith(prefix))
            if taken:
                raise AliasIsUser(f"{alias}@{entry.domain} would take the mail of the user "
                                  f"{taken[0]}@{entry.domain} (qmail-local tries .qmail-"
                                  f"{alias} before .qmail-default, as vdelivermail the "
                                  f"valias rows)")
        if lines is not None and line in lines:
            raise AliasLineExists(f"alias {address} -> {line} already exists.")

    def refuse_users_named_as_aliases(self, entry: AssignEntry, names: "Sequence[str]") -> None:
        """Raise UserIsAlias for the first of ``names`` that is an alias of ``entry``'s domain
        (the reverse of :meth:`check_add`): delivery looks at aliases first, so such a user
        would never get mail."""
        refuse_named_as_aliases(entry, names, self.lines, self.names)

    @staticmethod
    def kept_lines(address: str, lines: list[str] | None, line: str) -> list[str]:
        """``lines`` without every copy of ``line`` (trailing blanks ignored); raise
        NoSuchAlias if the alias or the line is not there."""
        from vpopmail.aliases import NoSuchAlias

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


def refuse_named_as_aliases(entry: AssignEntry, names: "Sequence[str]",
                            lines: "Callable[[AssignEntry, str], list[str] | None]",
                            all_names: "Callable[[AssignEntry], list[str]]") -> None:
    """:meth:`AliasChecks.refuse_users_named_as_aliases` over the aliases that ``lines`` (one
    alias's lines, None if there is none) and ``all_names`` read."""
    from vpopmail.aliases import DEFAULT, UserIsAlias
    from vpopmail.names import dot_qmail_order

    wanted = [name for name in names if name != DEFAULT]  # never an alias name
    # the aliases delivery tries before the user: its name, then john-default for john-smith
    tried = [(name, ext) for name in wanted for ext, _ in dot_qmail_order(name)[:-1]]
    if len(wanted) == 1:
        taken = [(name, ext) for name, ext in tried if lines(entry, ext) is not None]
    elif wanted:
        aliases = set(all_names(entry))
        taken = [(name, ext) for name, ext in tried if ext in aliases]
    else:
        taken = []
    if taken:
        name, alias = taken[0]
        raise UserIsAlias(f"{alias}@{entry.domain} is an alias: a user of that name would "
                          "get none of its mail (remove the alias with valias -d first)"
                          if alias == name else
                          f"{alias}@{entry.domain} is an alias that takes the mail of "
                          f"{name}@{entry.domain}: that user would get none of it (remove "
                          "the alias with valias -d first)")


FILES, SQL = "cdb", "mysql"

#: SQL stores this process opened, for :func:`close_stores`
_opened: "list[MySQLDatabase]" = []


#: set by keep_connections(): close_stores() keeps the SQL connections for the next request
_keeping = False


def keep_connections() -> None:
    """For a process that serves request after request of one identity (a vpopmail-server
    worker): :func:`close_stores` keeps its SQL connections open for the next request with the
    same server, user and database, which pings them before use. Never across a fork: a worker
    opens its own."""
    global _keeping
    _keeping = True


def kept_descriptors() -> set[int]:
    """The descriptors of the connections :func:`keep_connections` holds."""
    import sys

    sql = sys.modules.get("vpopmail.stores.sql")
    return sql.kept_descriptors() if sql is not None else set()


def drop_kept_connections() -> None:
    """Close the connections kept between requests (:func:`keep_connections`, a vpopmaild
    session's): a worker idle a while or ending, a session ending."""
    import sys

    sql = sys.modules.get("vpopmail.stores.sql")
    if sql is not None:
        sql.hang_up_idle()


def close_stores() -> None:
    """Close what the stores opened (or keep it: :func:`keep_connections`): the hot paths end
    with os._exit, and a database server logs every connection dropped without a goodbye as
    aborted."""
    while _opened:
        database = _opened.pop()
        if _keeping:
            database.release()
        else:
            database.close()


class Stores:
    """The stores of one configuration, each made at its first use. ``admin``: for commands
    that change what they read, whose reads then go to the SQL update server too."""

    __slots__ = ("config", "admin", "_backend", "_files", "_database")

    def __init__(self, config: "Config", admin: bool = False, backend: str | None = None) -> None:
        self.config = config
        self.admin = admin
        self._backend = config.users_backend if backend is None else backend
        if self._backend not in (FILES, SQL):
            raise ConfigError(f"unknown user backend {self._backend!r}")
        self._files: CdbFiles | None = None
        self._database: MySQLDatabase | None = None

    @property
    def _cdb(self) -> "CdbFiles | None":
        """The vpasswd files of the files backend, or None."""
        if self._files is None and self._backend == FILES:
            from vpopmail.stores.cdbfiles import CdbFiles

            self._files = CdbFiles(self.config)
        return self._files

    @property
    def _sql(self) -> "MySQLDatabase | None":
        """The SQL backend's one object (users, lastauth and every other table), or None;
        listed for :func:`close_stores` again when used after it (vchkpw's vlog row for a
        program it could not exec)."""
        if self._database is None and self._backend == SQL:
            from vpopmail.stores.sql import MySQLDatabase

            self._database = MySQLDatabase(self.config, self.admin)
        if self._database is not None and self._database not in _opened:
            _opened.append(self._database)
        return self._database

    @property
    def users(self) -> UserDatabase:
        """The users (and lastauth) of every domain."""
        users = self._cdb or self._sql
        assert users is not None  # one of the two backends (checked when made)
        return users

    @property
    def aliases(self) -> "AliasStore":
        """``.qmail-<alias>`` files (C without VALIAS) or ``valias`` rows (--enable-valias)."""
        sql = self._sql
        if sql is not None:
            from vpopmail.stores.sql import SqlAliases

            return SqlAliases(sql)
        from vpopmail.stores.aliasfiles import Aliases

        return Aliases(self.config, self.users)

    @property
    def valias(self) -> "ValiasRows | None":
        """The ``valias`` rows vdelivermail follows before the user (None: the alias files,
        which qmail-local reads itself)."""
        sql = self._sql
        if sql is None:
            return None
        from vpopmail.stores.sql import SqlAliases

        return SqlAliases(sql)

    def relay(self, timeout: float | None = None) -> "RelayTable":
        """The roaming IPs: open-smtp, or the SQL ``relay`` table (``timeout``: of the locks)."""
        sql = self._sql
        if sql is not None:
            from vpopmail.stores.relay import SqlRelayTable

            return SqlRelayTable(self.config, sql, timeout)
        from vpopmail.stores.relay import RelayTable

        return RelayTable(self.config, timeout)

    @property
    def limits_table(self) -> "LimitsTable | None":
        """The SQL ``limits`` table (mysql.limits_table, C's --enable-mysql-limits), or None
        when domain limits are files."""
        return self._sql if self.config.mysql_limits_table else None

    def domain_limits(self, entry: AssignEntry) -> "Limits":
        """The limits in force for ``entry``: its row of the limits table, or its files."""
        from vpopmail import limits

        table = self.limits_table
        if table is None:
            return limits.read(entry.dir, self.config.home)
        return limits.from_table_row(self.config, entry,
                                     table.get_limits(entry.real_domain, limits.COLUMNS))

    @property
    def alias_domains_table(self) -> "AliasDomainsTable | None":
        """The SQL ``aliasdomains`` table (mysql.aliasdomains_table), or None."""
        return self._sql if self.config.mysql_aliasdomains_table else None

    @property
    def auth_log(self) -> "AuthLog | None":
        """The ``vlog`` table (mysql.sql_logging, C's --enable-sql-logging), or None."""
        return self._sql if self.config.mysql_sql_logging else None

    @property
    def c_dir_control(self) -> "Callable[[str], int | None] | None":
        """The users C's MySQL backend counted for a domain in its ``dir_control`` table
        (the SQL backend only; its .dir-control files are not C's), or None."""
        sql = self._sql
        return None if sql is None else sql.counted_users

    @property
    def index_restore(self) -> "Callable[[AssignEntry], int] | None":
        """Write vpasswd back from vpasswd.cdb (vmkpasswd -r; the files only), or None."""
        files = self._cdb
        return None if files is None else files.restore_from_index


def preload() -> None:
    """Import every store and the SQL driver, wherever it is installed (vpopmail-server's
    parent, so that its workers start warm whatever configuration a request names)."""
    import vpopmail.stores.cdbfiles  # noqa: F401
    import vpopmail.stores.sql

    try:
        vpopmail.stores.sql._driver()
    except (ImportError, VpopmailError):
        pass


def open_stores(config: "Config", admin: bool = False) -> Stores:
    """The stores ``users.backend`` names."""
    return Stores(config, admin)


def open_copy(config: "Config") -> "tuple[Stores, Stores]":
    """(files, SQL) stores for a copy between them (vconvert -c -m / -m -c), whatever
    ``users.backend`` says; the SQL server is reached once first, so a wrong ``[mysql]``
    section stops the run before any domain."""
    files, sql = Stores(config, True, FILES), Stores(config, True, SQL)
    database = sql._sql
    assert database is not None  # made for SQL just above
    database.ping()
    return files, sql
