"""The stores, one per concern, and the one place that chooses them: :func:`open_stores`.

- users, with their last logins (lastauth): vpasswd + vpasswd.cdb (:mod:`.cdbfiles`) or the
  SQL users table (:mod:`.sql`); the interface is :class:`.base.UserDatabase`;
- aliases: ``.qmail-<alias>`` files (:mod:`.aliasfiles`) or ``valias`` rows;
- relay (roaming IPs): ``etc/open-smtp`` (:mod:`vpopmail.relay`) or the ``relay`` table;
- domain limits: ``.qmailadmin-limits`` files (:mod:`vpopmail.limits`) or the ``limits`` table;
- the auth log: ``vlog`` rows (C's --enable-sql-logging); nothing with the files.

This module alone reads ``users.backend`` and imports the SQL module; everything else gets the
store it needs from a :class:`Stores`. The SQL stores of one process share one object, which
holds its read and update connections. What only one backend can do (vmkpasswd -r, vlog, the
limits table, the valias rows vdelivermail follows) is a capability that is None elsewhere.
Hot-path safe: nothing is imported before a store is asked for.
"""
from vpopmail.errors import ConfigError, VpopmailError

TYPE_CHECKING = False  # the typing idiom without importing typing (hot path)
if TYPE_CHECKING:
    from collections.abc import Callable

    from vpopmail.assign import AssignEntry
    from vpopmail.config import Config
    from vpopmail.relay import RelayTable
    from vpopmail.stores.base import UserDatabase
    from vpopmail.stores.cdbfiles import CdbFiles
    from vpopmail.stores.protocols import AliasStore, AuthLog, LimitsTable, ValiasRows
    from vpopmail.stores.sql import MySQLDatabase

FILES, SQL = "cdb", "mysql"

#: SQL stores this process opened, for :func:`close_stores`
_opened: "list[MySQLDatabase]" = []


def close_stores() -> None:
    """Close what the stores opened: the hot paths end with os._exit, and a database server
    logs every connection dropped without a goodbye as aborted."""
    while _opened:
        _opened.pop().close()


class Stores:
    """The stores of one configuration, each made at its first use. ``admin``: for commands
    that change what they read, whose reads then go to the SQL update server too."""

    __slots__ = ("config", "admin", "backend", "_files", "_database")

    def __init__(self, config: "Config", admin: bool = False, backend: str | None = None) -> None:
        self.config = config
        self.admin = admin
        self.backend = config.users_backend if backend is None else backend
        if self.backend not in (FILES, SQL):
            raise ConfigError(f"unknown user backend {self.backend!r}")
        self._files: CdbFiles | None = None
        self._database: MySQLDatabase | None = None

    @property
    def _cdb(self) -> "CdbFiles | None":
        """The vpasswd files of the files backend, or None."""
        if self._files is None and self.backend == FILES:
            from vpopmail.stores.cdbfiles import CdbFiles

            self._files = CdbFiles(self.config)
        return self._files

    @property
    def _sql(self) -> "MySQLDatabase | None":
        """The SQL backend's one object (users, lastauth and every other table), or None."""
        if self._database is None and self.backend == SQL:
            from vpopmail.stores.sql import MySQLDatabase

            self._database = MySQLDatabase(self.config, self.admin)
            _opened.append(self._database)
        return self._database

    @property
    def users(self) -> "UserDatabase":
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
            from vpopmail.relay import SqlRelayTable

            return SqlRelayTable(self.config, sql, timeout)
        from vpopmail.relay import RelayTable

        return RelayTable(self.config, timeout)

    @property
    def limits_table(self) -> "LimitsTable | None":
        """The SQL ``limits`` table (mysql.limits_table, C's --enable-mysql-limits), or None
        when domain limits are files."""
        return self._sql if self.config.mysql_limits_table else None

    @property
    def auth_log(self) -> "AuthLog | None":
        """The ``vlog`` table (mysql.sql_logging, C's --enable-sql-logging), or None."""
        return self._sql if self.config.mysql_sql_logging else None

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
    database.read("SELECT 1")
    return files, sql
