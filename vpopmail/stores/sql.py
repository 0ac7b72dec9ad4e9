"""The MySQL/MariaDB backend over C vpopmail's own tables (its ``vmysql`` module): every SQL
statement of the project is in this module, and only the factory (vpopmail.stores) imports it.

Tables and columns are vpopmail's, so a database a C vpopmail filled works unchanged:
``vpopmail`` (one table for every domain, ``mysql.many_domains``; else one table per domain,
named by C's rule: ``.`` and ``-`` become ``_``) with ``pw_name, pw_domain, pw_passwd, pw_uid,
pw_gid (the flags), pw_gecos, pw_dir, pw_shell (the quota), pw_clear_passwd``, plus
``lastauth``, ``relay``, ``valias``, ``limits``, ``dir_control`` and ``vlog``. Tables are created
on first use, wider than 5.4's (SHA-512 hashes, IPv6 addresses) as vpopmail 5.6 made them.

Two connections, as C's ``--enable-mysql-replication``: reads (vdelivermail, vchkpw, listings)
go to the read server (a local replica), every write (admin commands, vchkpw's lastauth, relay
and learned passwords) to the update server, in a transaction (or one statement, whole by
itself: a lastauth or vlog row), so nothing is half applied.
A server that cannot be reached, has gone away, times out on a lock or does not answer in
``mysql.read_timeout`` is a temporary error (NoAuthConnection, code -23): mail is deferred and
logins answer 111, never "no such user".

The driver is mysqlclient's C module ``MySQLdb._mysql`` (import, connect and a SELECT: +5.0 ms
over the interpreter floor with the package, +3.3 to 3.6 ms loaded alone as :func:`_driver`
does; PyMySQL +45 to 47 ms: bench/RESULTS.md). Values are bound by the one function
:meth:`Connection.query`, which quotes each one with the server connection's own escaping
(what MySQLdb's cursors do); no caller builds SQL from data.
"""
import posix
import time

from vpopmail.assign import AssignEntry
from vpopmail.config import Config, Value, sql_lock_wait
from vpopmail.errors import (BadInput, ConfigError, CorruptData, DomainAlreadyExists,
                             InvalidDomainName, NoAuthConnection, UserDoesNotExist,
                             UsernameExists)
from vpopmail.fsutil import is_file, join
from vpopmail.stores import (AliasChecks, Fault, UserDatabase, VUser,
                             refuse_named_as_aliases)

TYPE_CHECKING = False  # the typing idiom without importing typing (hot path)
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Protocol, TypeVar

    T = TypeVar("T")

    class Result(Protocol):
        """A stored result of ``MySQLdb._mysql``."""

        def fetch_row(self, maxrows: int, /) -> tuple[tuple[bytes | None, ...], ...]: ...

    class Handle(Protocol):
        """What this module uses of a ``MySQLdb._mysql`` connection."""

        def fileno(self) -> int: ...
        def ping(self) -> None: ...
        def query(self, statement: bytes, /) -> None: ...
        def store_result(self) -> Result | None: ...
        def string_literal(self, value: bytes, /) -> bytes: ...
        def affected_rows(self) -> int: ...
        def close(self) -> None: ...

    class Driver(Protocol):
        """What this module uses of the C module ``MySQLdb._mysql`` (it ships no types)."""

        MySQLError: type[Exception]

        def connect(self, **options: object) -> Handle: ...

USERS_TABLE = "vpopmail"
ER_DUP_ENTRY = 1062
ER_NO_SUCH_TABLE = 1146
ER_TABLE_EXISTS = 1050
ER_DATA_TOO_LONG = 1406
ER_BAD_STRING = 1366  # a value the column's character set cannot hold
#: a value the column cannot hold (out of range, truncated, wrong type) or a name too long for
#: an identifier (a per-domain table of a long domain): the input, not the server, is at fault
BAD_VALUE = {1264: "out of the column's range", 1265: "cut by the column",
             1292: "not of the column's type", 1059: "too long for a table name"}
#: client/server errors that say "the database is not there right now" (connection refused,
#: gone away, lost, lock wait timeout, deadlock, read-only replica, too many connections)
TEMPORARY = {2002, 2003, 2005, 2006, 2013, 2055, 1040, 1205, 1290, 1053, 1927, 4031}
#: the link is gone (gone away, lost, killed, disconnected for inactivity): on a kept
#: connection's first statement, the server closed it while it was idle
LOST = {2006, 2013, 2055, 1927, 4031}
#: how much sooner than mysql.read_timeout a cut link still counts as its timeout (clock
#: granularity): less than a second, so a lock wait (locks.timeout, less by a second or
#: more: vpopmail.config.validate) that ends in a lost link is not taken for it
TIMER_SLACK = 0.5
ER_LOCK_DEADLOCK = 1213  # the server rolled the transaction back: run it again
DEADLOCK_TRIES = 10  # each after a random pause of up to 20 ms times the deadlocks so far

_USER_COLUMNS = ("pw_name", "pw_passwd", "pw_uid", "pw_gid", "pw_gecos", "pw_dir", "pw_shell")

#: CREATE TABLE bodies: C's layouts with 5.6's widths (SHA-512 hashes, IPv6 addresses)
LAYOUTS = {
    "users": ("pw_name varchar(64) NOT NULL, {domain_column}pw_passwd varchar(128), "
              "pw_uid int, pw_gid int, pw_gecos varchar(64), pw_dir varchar(160), "
              "pw_shell varchar(20), pw_clear_passwd varchar(128), PRIMARY KEY ({key})"),
    "lastauth": ("user varchar(64) NOT NULL, domain varchar(96) NOT NULL, "
                 "remote_ip varchar(45) NOT NULL, timestamp bigint DEFAULT 0 NOT NULL, "
                 "PRIMARY KEY (user, domain)"),
    "relay": "ip_addr varchar(45) NOT NULL, timestamp char(12), PRIMARY KEY (ip_addr)",
    "aliasdomains": "alias varchar(96) NOT NULL, domain varchar(96) NOT NULL, PRIMARY KEY (alias)",
    "valias": ("alias varchar(64) NOT NULL, domain varchar(96) NOT NULL, "
               "valias_line text NOT NULL, INDEX (alias, domain)"),
    "dir_control": ("domain varchar(96) NOT NULL, cur_users int, level_cur int, level_max int, "
                    "level_start0 int, level_start1 int, level_start2 int, level_end0 int, "
                    "level_end1 int, level_end2 int, level_mod0 int, level_mod1 int, "
                    "level_mod2 int, level_index0 int, level_index1 int, level_index2 int, "
                    "the_dir varchar(160), PRIMARY KEY (domain)"),
    "vlog": ("id bigint PRIMARY KEY AUTO_INCREMENT, user varchar(64), passwd varchar(128), "
             "domain varchar(96), logon varchar(200), remoteip varchar(45), "
             "message varchar(255), timestamp bigint DEFAULT 0 NOT NULL, error int, "
             "INDEX user_idx (user), INDEX domain_idx (domain), "
             "INDEX remoteip_idx (remoteip), INDEX error_idx (error)"),
    "limits": ("domain varchar(96) PRIMARY KEY, "
               "maxpopaccounts int NOT NULL DEFAULT -1, maxaliases int NOT NULL DEFAULT -1, "
               "maxforwards int NOT NULL DEFAULT -1, "
               "maxautoresponders int NOT NULL DEFAULT -1, "
               "maxmailinglists int NOT NULL DEFAULT -1, "
               "diskquota bigint unsigned NOT NULL DEFAULT 0, "
               "maxmsgcount bigint unsigned NOT NULL DEFAULT 0, "
               "defaultquota bigint unsigned NOT NULL DEFAULT 0, "
               "defaultmaxmsgcount bigint unsigned NOT NULL DEFAULT 0, "
               "disable_pop tinyint(1) NOT NULL DEFAULT 0, "
               "disable_imap tinyint(1) NOT NULL DEFAULT 0, "
               "disable_dialup tinyint(1) NOT NULL DEFAULT 0, "
               "disable_passwordchanging tinyint(1) NOT NULL DEFAULT 0, "
               "disable_webmail tinyint(1) NOT NULL DEFAULT 0, "
               "disable_relay tinyint(1) NOT NULL DEFAULT 0, "
               "disable_smtp tinyint(1) NOT NULL DEFAULT 0, "
               "disable_spamassassin tinyint(1) NOT NULL DEFAULT 0, "
               "delete_spam tinyint(1) NOT NULL DEFAULT 0, "
               "disable_maildrop tinyint(1) NOT NULL DEFAULT 0, "
               "perm_account tinyint(2) NOT NULL DEFAULT 0, "
               "perm_alias tinyint(2) NOT NULL DEFAULT 0, "
               "perm_forward tinyint(2) NOT NULL DEFAULT 0, "
               "perm_autoresponder tinyint(2) NOT NULL DEFAULT 0, "
               "perm_maillist int NOT NULL DEFAULT 0, "  # C's tinyint(4) cannot hold 448 (-o a)
               "perm_quota tinyint(2) NOT NULL DEFAULT 0, "
               "perm_defaultquota tinyint(2) NOT NULL DEFAULT 0"),
}
TABLE_OPTIONS = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"


def munch_domain(domain: str) -> str:
    """C's table name for a domain in per-domain-table mode: ``.`` and ``-`` become ``_``."""
    return domain.replace(".", "_").replace("-", "_")


class Server:
    """Where one side (read or update) connects: C's ``host|port-or-socket|user|pass|db``."""

    __slots__ = ("host", "port", "socket", "user", "password", "database")

    def __init__(self, host: str, port: int, socket: str, user: str, password: str,
                 database: str) -> None:
        self.host, self.port, self.socket = host, port, socket
        self.user, self.password, self.database = user, password, database

    @classmethod
    def from_config(cls, config: Config, side: str) -> "Server":
        """The ``mysql.<side>_*`` keys. Empty update keys take the read side's values; where
        the server is (host, port, socket) is taken as a whole: an update side that names a
        host must not inherit the read side's socket, which wins over a host."""
        values = config.values
        where = ("host", "port", "socket")
        inherit_where = side == "update" and all(
            values[f"mysql_update_{key}"] in ("", 0) for key in where)

        def get(key: str) -> Value:
            value = values[f"mysql_{side}_{key}"]
            if side == "update" and value in ("", 0) and (key not in where or inherit_where):
                return values[f"mysql_read_{key}"]
            if key == "host" and not value:
                return "localhost"
            return value

        return cls(str(get("host")), int(get("port")), str(get("socket")),
                   str(get("user")), str(get("password")), str(get("database")))

    def describe(self) -> str:
        where = self.socket or f"{self.host}:{self.port or 3306}"
        return f"{self.user}@{where}/{self.database}"


def _driver() -> "Driver":
    """mysqlclient's C module ``MySQLdb._mysql`` without its package's ``__init__`` (the DB-API
    layer and ``datetime``, which nothing here uses: 1 to 1.5 ms a login, 2 to 3 ms a delivery
    in two runs of bench/bench_sqldriver.py). A bare module with the package's path stands in for the package while
    the C module (and the ``_exceptions`` it imports) loads, and is removed afterwards, so a
    later ``import MySQLdb`` still gets the real package."""
    global _loaded
    if _loaded is not None:
        return _loaded
    import sys

    loaded: "Driver | None" = sys.modules.get("MySQLdb._mysql")  # the C module: see Driver
    if loaded is not None:
        _loaded = loaded
        return loaded
    places = [join(entry or ".", "MySQLdb") for entry in sys.path]
    package = next((place for place in places
                    if is_file(join(place, "_exceptions.py"))), None)
    stand_in = "MySQLdb" not in sys.modules and package is not None
    if stand_in:
        bare = type(sys)("MySQLdb")
        bare.__dict__["__path__"] = [package]
        sys.modules["MySQLdb"] = bare
    try:
        from MySQLdb import _mysql
    except ImportError as exc:
        raise ConfigError("the MySQL backend needs the mysqlclient driver, which this "
                          "installation lacks: install it with packaging/install --mysql (a "
                          f"source checkout: pip install '.[mysql]') ({exc})") from None
    finally:
        if stand_in:
            del sys.modules["MySQLdb"]
    driver: "Driver" = _mysql  # the C module, untyped: Driver is what is used of it
    _loaded = driver
    return driver


#: the driver once :func:`_driver` has loaded it (every statement asks for it)
_loaded: "Driver | None" = None


def _error_parts(exc: BaseException) -> tuple[int, str]:
    args = exc.args
    if len(args) >= 2 and isinstance(args[0], int):
        return args[0], str(args[1])
    return 0, str(exc)


#: descriptors 0 to 3: a program's stdin, stdout and stderr, and checkpassword's fd 3
PROGRAM_FDS = 4


def _hold_program_descriptors() -> list[int]:
    """Fill the free descriptors below PROGRAM_FDS with /dev/null (returned, for closing once
    the connection is made), so a connection's socket lands above them. vchkpw closes fd 3
    after reading it, and a vpopmail-server worker puts each request's descriptors at 0 to 3:
    a kept connection there would be cut (a new connection every login) or, pinged or queried
    on a descriptor reused for a file, write into it."""
    held: list[int] = []
    while True:
        fd = posix.open("/dev/null", posix.O_RDONLY | posix.O_CLOEXEC)
        if fd >= PROGRAM_FDS:
            posix.close(fd)
            return held
        held.append(fd)


#: connections a long-lived process keeps between requests (vpopmail-server's workers, see
#: vpopmail.stores.keep_connections): side -> (the settings it was made with: Connection.key,
#: an open handle with no transaction open and no answer unread); one a side, so that one
#: made with settings since changed is closed, not kept beside the new (see Connection.open)
_idle: "dict[str, tuple[tuple[object, ...], Handle]]" = {}


def kept_descriptors() -> set[int]:
    """The descriptors of the idle connections kept for the next request."""
    return {handle.fileno() for _, handle in _idle.values()}


def hang_up_idle() -> None:
    """Close the connections kept for the next request."""
    while _idle:
        _hang_up(_idle.popitem()[1][1])


def _hang_up(handle: "Handle") -> None:
    """Close ``handle`` (a goodbye to the server), whatever state its link is in."""
    try:
        handle.close()
    except Exception:  # noqa: BLE001 - closing a dead link
        pass


class Unreachable(NoAuthConnection):
    """The server could not be connected to, or did not answer in the read timeout (the read
    side then uses the update server)."""


class Connection:
    """One lazily opened connection; :meth:`query` is the only way SQL reaches the server."""

    def __init__(self, server: Server, timeout: int, lock_timeout: int, read_timeout: int,
                 side: str) -> None:
        self.server = server
        self.timeout = timeout
        #: seconds a statement waits on a lock (config.sql_lock_wait)
        self.lock_timeout = lock_timeout
        #: seconds an answer may take (the driver's read and write timeouts: libmariadb waits
        #: that long once, then the link is cut with 2013): more than lock_timeout
        self.read_timeout = read_timeout
        self.side = side
        self.handle: "Handle | None" = None
        #: the handle came from _idle and has not answered yet in this request
        self.kept = False
        #: begun and not ended (by :meth:`commit` or :meth:`rollback`)
        self.in_transaction = False
        #: a statement was sent and its answer not read (an exception came in between)
        self.answer_pending = False
        #: why the server is Unreachable, found in this request: later statements fail at once
        #: rather than wait on it again (a login's vlog, lastauth and relay writes; a vadduser
        #: -f's undo), until :meth:`release` ends the request
        self.unreachable = ""

    def key(self) -> tuple[object, ...]:
        """The settings a connection is made with: a kept one serves only the same."""
        server = self.server
        return (server.host, server.port, server.socket, server.user, server.password,
                server.database, self.timeout, self.lock_timeout, self.read_timeout)

    def open(self, repeatable: bool = False) -> "Handle":
        """The handle: opened at the first use, or one kept from this process's last request.
        A kept one is used straight away for a ``repeatable`` first statement (:meth:`query`
        sends it again on a new connection if the server closed the kept one while it was
        idle); for any other it is pinged first. One kept with other settings (the
        configuration changed since) is closed. A server that does not answer in the read
        timeout (the ping, or the session's settings on a new connection) is Unreachable."""
        if self.handle is not None:
            return self.handle
        if self.unreachable:
            raise Unreachable(self.unreachable)
        driver = _driver()
        key, kept = _idle.pop(self.side, ((), None))
        if kept is not None and key != self.key():
            _hang_up(kept)
        elif kept is not None:
            started = time.monotonic()
            try:
                if not repeatable:
                    kept.ping()
                self.handle, self.kept = kept, repeatable
                return kept
            except driver.MySQLError as exc:  # gone away while idle: a new connection
                _hang_up(kept)
                if self.timed_out(exc, started):  # a new one would wait as long
                    raise self.unanswered(self.fault(exc, True)) from None
        server = self.server
        options: dict[str, object] = {"user": server.user, "password": server.password,
                                      "database": server.database, "charset": "utf8mb4",
                                      "connect_timeout": max(1, self.timeout),
                                      "read_timeout": self.read_timeout,
                                      "write_timeout": self.read_timeout}
        if server.socket:
            options["unix_socket"] = server.socket
        else:
            options["host"] = server.host
            if server.port:
                options["port"] = server.port
        held = _hold_program_descriptors()
        try:
            handle = driver.connect(**options)  # the handshake is bounded by connect_timeout
        except driver.MySQLError as exc:
            raise self.unanswered(self.fault(exc)) from None
        finally:
            for fd in held:
                posix.close(fd)
        started = time.monotonic()
        try:
            # libmariadb leaves its socket inheritable: a .qmail program or the program vchkpw
            # execs must never get an authenticated database connection
            posix.set_inheritable(handle.fileno(), False)
            # each statement its own transaction unless begun; never truncate silently;
            # bounded lock waits, on rows and on whole tables (LOCK TABLES, FLUSH TABLES WITH
            # READ LOCK, ALTER TABLE: lock_wait_timeout, a day by default): then 111, not a hang
            handle.query(b"SET SESSION autocommit = 1, "
                         b"sql_mode = CONCAT(@@sql_mode, ',STRICT_ALL_TABLES'), "
                         b"innodb_lock_wait_timeout = %d, lock_wait_timeout = %d"
                         % ((self.lock_timeout,) * 2))
        except driver.MySQLError as exc:
            _hang_up(handle)
            raise self.unanswered(self.fault(exc, self.timed_out(exc, started))) from None
        self.handle = handle
        return handle

    @staticmethod
    def literal(handle: "Handle", value: object) -> bytes:
        if type(value) is str:  # the most common, first
            return handle.string_literal(value.encode("utf-8", "surrogateescape"))
        if value is None:
            return b"NULL"
        if isinstance(value, bool):
            return b"1" if value else b"0"
        if isinstance(value, int):
            return b"%d" % value
        data = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")
        return handle.string_literal(data)

    def query(self, sql: str, params: "Sequence[object]" = (), repeatable: bool = False
              ) -> list[tuple[str | None, ...]]:
        """Run ``sql`` with each ``%s`` bound to the next of ``params``; return the rows.
        ``repeatable``: running it twice does what running it once does (a read, START
        TRANSACTION, a lastauth REPLACE), so a kept connection needs no ping first (see
        :meth:`open`): if the server closed it while it was idle, the statement goes again on
        a new connection (unless it timed out: the server does not answer)."""
        handle = self.open(repeatable)
        kept, self.kept = self.kept, False
        driver = _driver()
        started = time.monotonic()
        try:
            try:
                return self._run(handle, sql, params)
            except driver.MySQLError as exc:
                if not kept or _error_parts(exc)[0] not in LOST or self.timed_out(exc, started):
                    raise
            self.close()
            handle = self.open()
            started = time.monotonic()
            return self._run(handle, sql, params)
        except driver.MySQLError as exc:
            self.answer_pending = False  # the answer was this error
            raise self.error(exc, started) from None

    def _run(self, handle: "Handle", sql: str, params: "Sequence[object]"
             ) -> list[tuple[str | None, ...]]:
        pieces = sql.encode().split(b"%s")
        if len(pieces) != len(params) + 1:
            raise ValueError(f"{len(pieces) - 1} placeholders for {len(params)} values")
        parts = [pieces[0]]
        literal = self.literal
        for value, piece in zip(params, pieces[1:]):
            parts += (literal(handle, value), piece)
        self.answer_pending = True
        handle.query(b"".join(parts))
        result = handle.store_result()
        self.answer_pending = False
        if result is None:
            return []
        return [tuple([None if v is None else v.decode("utf-8", "surrogateescape") for v in row])
                for row in result.fetch_row(0)]

    def begin(self) -> None:
        self.query("START TRANSACTION", repeatable=True)
        self.in_transaction = True

    def commit(self) -> None:
        """COMMIT; a link that fails with it sent leaves its outcome unknown, which the
        error says (the server may have committed: look before running the change again)."""
        try:
            self.query("COMMIT")
        except NoAuthConnection as exc:
            raise type(exc)(f"{exc.detail}; the COMMIT got no answer, so the change may have "
                            f"been made: look (vuserinfo, vdominfo) before running it again"
                            ) from None
        self.in_transaction = False

    def rollback(self) -> None:
        """Undo the transaction begun, if one is; a failure is left to :meth:`release`, which
        then closes the connection rather than keep it."""
        if self.in_transaction and self.handle is not None:
            try:
                self.query("ROLLBACK")
                self.in_transaction = False
            except (NoAuthConnection, SqlError, BadInput, UsernameExists):
                pass

    def affected(self) -> int:
        """Rows the last statement changed (called after :meth:`query`, on its open handle)."""
        assert self.handle is not None, "affected() before a query"
        return self.handle.affected_rows()

    def timed_out(self, exc: BaseException, started: float) -> bool:
        """Whether ``exc``, for a request sent at ``started``, is the read timeout: the link
        cut once the whole timeout has passed (the driver never cuts it sooner). A link lost
        before (closed while idle: at once; killed, or the server restarted, while the
        statement waited on a lock, up to locks.timeout, which is less) is not."""
        return (_error_parts(exc)[0] in LOST
                and time.monotonic() - started >= self.read_timeout - TIMER_SLACK)

    def unanswered(self, text: str) -> Unreachable:
        """Unreachable for ``text``, remembered for the rest of the request."""
        self.unreachable = text
        return Unreachable(text)

    def fault(self, exc: BaseException, timed_out: bool = False) -> str:
        """One line for a driver error: the server and what happened (``timed_out``: the
        read timeout, said as such)."""
        code, text = _error_parts(exc)
        if timed_out:
            text = f"did not answer in {self.read_timeout} s (mysql.read_timeout)"
        return f"{self.side} server {self.server.describe()}: {text} ({code})"

    def error(self, exc: BaseException, started: float) -> Exception:
        """Our exception for a driver error on a request sent at ``started`` (the
        table-missing case is left to callers)."""
        code, text = _error_parts(exc)
        if self.timed_out(exc, started):
            self.close()
            return self.unanswered(self.fault(exc, True))
        if code in TEMPORARY or code >= 2000:  # client-side errors: the link itself failed
            self.close()
            return NoAuthConnection(self.fault(exc))
        if code == ER_DUP_ENTRY:
            return UsernameExists(text)
        if code == ER_DATA_TOO_LONG:
            return BadInput(f"{text} (the column in the database is narrower)")
        if code == ER_BAD_STRING:
            return BadInput(f"{text} (not text the column's character set can hold)")
        if code in BAD_VALUE:
            return BadInput(f"{text} ({BAD_VALUE[code]})")
        return SqlError(code, self.fault(exc))

    def release(self) -> None:
        """Keep the connection for the next request of this process, if it is as a new one
        is: a transaction left open or an answer left unread closes it instead. A server found
        unreachable is tried again by the next request."""
        self.unreachable = ""
        if self.handle is None:
            return
        if self.in_transaction or self.answer_pending:
            self.close()
            return
        displaced = _idle.get(self.side)
        if displaced is not None:  # another store's of this request, kept already
            _hang_up(displaced[1])
        _idle[self.side] = (self.key(), self.handle)
        self.handle = None

    def close(self) -> None:
        if self.handle is not None:
            _hang_up(self.handle)
            self.handle = None
        self.kept = self.in_transaction = self.answer_pending = False


def placeholders(count: int) -> str:
    """``%s, %s, ...``: ``count`` places for the values of a statement (see Connection.query)."""
    return ", ".join(["%s"] * count)


def not_answering(exc: NoAuthConnection, server: str = "") -> Fault:
    """vcheck's fault for a database (``server``: which one) that does not answer."""
    return Fault(f"the database{' ' + server if server else ''} does not answer: {exc.detail}",
                 "start the server, or correct the [mysql] section of the configuration")


class SqlError(Exception):
    """A server error that is neither transient nor a known data problem (carried up
    unchanged so a missing table can be created; the backend turns the rest into
    NoAuthConnection)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


#: (config.values, read Server, update Server) of the configuration last opened: a server
#: worker loads an unchanged file as the very same values dict, request after request
#: (vpopmail.config.load), so its servers are worked out once, not at every request
_made: "tuple[dict[str, Value], Server, Server] | None" = None


def _servers(config: Config) -> tuple[Server, Server]:
    """The read and update :class:`Server` of ``config``."""
    global _made
    made = _made
    if made is None or made[0] is not config.values:
        made = _made = (config.values, Server.from_config(config, "read"),
                        Server.from_config(config, "update"))
    return made[1], made[2]


class MySQLDatabase(UserDatabase):
    """Users (and lastauth, relay, valias, limits, dir_control, vlog) in MySQL/MariaDB."""

    store_name = "users table"

    def __init__(self, config: Config, admin: bool = False) -> None:
        """``admin``: for a command that changes what it reads (the admin commands): its reads
        go to the update server too, so a lagging replica never decides what it writes."""
        self.config = config
        self.many_domains = config.mysql_many_domains
        self.clear_passwords = config.passwords_clear_passwords
        self.read_fallback = config.mysql_read_fallback
        timeouts = (config.mysql_connect_timeout, sql_lock_wait(config.locks_timeout),
                    config.sql_read_timeout)
        reader, writer = _servers(config)
        self.reader = Connection(reader, *timeouts, "read")
        self.writer = Connection(writer, *timeouts, "update")
        if admin:
            self.reader = self.writer
        self._created: set[str] = set()
        #: (real domain, name, row or None): a user's row read with the valias rows
        #: (:meth:`SqlAliases.select_with_user`), for the next get_user of that user only
        self._ahead: "tuple[str, str, Sequence[str | None] | None] | None" = None

    # -- plumbing -----------------------------------------------------------------------------
    def read(self, sql: str, params: "Sequence[object]" = (), optional: bool = False
             ) -> list[tuple[str | None, ...]]:
        """A query on the read side; if the read server cannot be reached at all, on the update
        server (C did the same). ``optional``: a table not created yet reads as empty."""
        try:
            return self._read(sql, params)
        except SqlError as exc:
            if optional and exc.code == ER_NO_SUCH_TABLE:
                return []
            raise NoAuthConnection(str(exc)) from None

    def _read(self, sql: str, params: "Sequence[object]") -> list[tuple[str | None, ...]]:
        """:meth:`read` with the server's other errors left as SqlError."""
        try:
            return self.reader.query(sql, params, repeatable=True)
        except Unreachable:
            if not self.read_fallback or self.reader is self.writer:  # admin: one server
                raise
        return self.writer.query(sql, params, repeatable=True)

    def transaction(self, work: "Callable[[Connection], T]", tables: "Sequence[str]" = (),
                    autocommit: bool = False) -> "T":
        """Run ``work(update connection)`` in one transaction; on a missing table among
        ``tables`` (kinds of LAYOUTS, or a users-table name) create them and run it again; on
        a deadlock (admin commands locking the same gap, e.g. the row of a domain without
        limits yet) run it again after a random pause, up to DEADLOCK_TRIES times.
        ``autocommit``: each statement of ``work`` is a transaction of its own (for one
        change, whole by itself: START TRANSACTION and COMMIT would be two more round trips
        to the server)."""
        conn = self.writer
        created, deadlocks = False, 0
        for _ in range(DEADLOCK_TRIES + 1):  # one more run after creating the tables
            try:
                if not autocommit:
                    conn.begin()
                result = work(conn)
                if not autocommit:
                    conn.commit()
                return result
            except SqlError as exc:
                conn.rollback()
                if exc.code == ER_NO_SUCH_TABLE and tables and not created:
                    for table in tables:
                        self.create_table(table)
                    created = True
                    continue
                if exc.code == ER_LOCK_DEADLOCK and deadlocks < DEADLOCK_TRIES - 1:
                    import random  # only here: the hot paths never deadlock on their rows

                    deadlocks += 1
                    time.sleep(random.uniform(0, 0.02 * deadlocks))
                    continue
                raise NoAuthConnection(str(exc)) from None
            except BaseException:
                conn.rollback()
                raise
        raise AssertionError("unreachable")

    def create_table(self, kind: str) -> None:
        """CREATE TABLE IF NOT EXISTS for a LAYOUTS kind or a per-domain users table."""
        if kind in self._created:
            return
        if kind in LAYOUTS:
            name, layout = kind, LAYOUTS[kind]
        else:  # a users table
            many = kind == USERS_TABLE and self.many_domains
            name = kind
            layout = LAYOUTS["users"].format(
                domain_column="pw_domain varchar(96) NOT NULL, " if many else "",
                key="pw_name, pw_domain" if many else "pw_name")
        try:
            self.writer.query(f"CREATE TABLE IF NOT EXISTS `{name}` ({layout}){TABLE_OPTIONS}")
        except SqlError as exc:
            raise NoAuthConnection(str(exc)) from None
        self._created.add(kind)

    def users_table(self, domain: AssignEntry) -> str:
        return USERS_TABLE if self.many_domains else munch_domain(domain.real_domain)

    def _where(self, domain: AssignEntry) -> tuple[str, list[object]]:
        """The WHERE clause selecting the domain's rows (none in per-domain tables)."""
        if self.many_domains:
            return "pw_domain = %s", [domain.real_domain]
        return "1 = 1", []

    def _columns(self) -> str:
        return ", ".join(self._column_names())

    def _column_names(self) -> tuple[str, ...]:
        """The columns a user is read from (:meth:`_user`)."""
        return _USER_COLUMNS + (("pw_clear_passwd",) if self.clear_passwords else ())

    def read_with_user(self, domain: AssignEntry, name: str, columns: "Sequence[str]",
                       source: str, params: "Sequence[object]"
                       ) -> list[tuple[str | None, ...]] | None:
        """The rows of ``SELECT columns source`` (``source``: its FROM and WHERE, with
        ``params``), read in one statement with the row of user ``name``: UNION ALL, each part
        in columns of its own and NULL in the other's, so that no column mixes the two tables'
        types or collations. The user's row is kept for the next :meth:`get_user` of ``name``
        in ``domain``, which then asks the server nothing: one round trip and one statement's
        work less than two reads (a delivery's valias rows and user). None if the server
        refuses the statement (a table missing: valias not made yet, a users table dropped;
        a right missing): the two reads, each alone, say what that means."""
        where, where_params = self._where(domain)
        user_columns = self._column_names()
        width = len(columns)
        blanks = ", ".join(["NULL"] * len(user_columns))
        try:
            rows = self._read(f"SELECT {', '.join(columns)}, {blanks} {source} UNION ALL "
                              f"SELECT {', '.join(['NULL'] * width)}, {', '.join(user_columns)} "
                              f"FROM `{self.users_table(domain)}` WHERE pw_name = %s AND {where}",
                              [*params, name, *where_params])
        except SqlError:
            return None
        # the other part's first column is NULL; the user's first, pw_name, never is (a key)
        user = next((row[width:] for row in rows if row[width] is not None), None)
        self._ahead = (domain.real_domain, name, user)
        return [row[:width] for row in rows if row[width] is None]

    def _user(self, row: "Sequence[str | None]") -> VUser:
        """A user from a row of :data:`_USER_COLUMNS`. A pw_uid or pw_gid (the flags) that is
        NULL or no number is damage, as such a vpasswd field is (CorruptData: mail deferred,
        logins 111, admin commands refused), never 0: that would drop NO_POP, NO_IMAP, ..."""
        name = row[0] or ""
        numbers = []
        for column, value in (("pw_uid", row[2]), ("pw_gid", row[3])):
            try:
                numbers.append(int("" if value is None else value))
            except ValueError:
                raise CorruptData(f"{self.reader.server.describe()}: the {column} of user "
                                  f"{name!r} is not a number ({value!r}): correct the row"
                                  ) from None
        return VUser(name, row[1] or "", numbers[0], numbers[1], row[4] or "",
                     row[5] or "", row[6] or "", (row[7] or "") if len(row) > 7 else "")

    def _values(self, domain: AssignEntry, user: VUser) -> tuple[str, list[object]]:
        """Column list and values for an INSERT of ``user``."""
        columns = ["pw_name"] + (["pw_domain"] if self.many_domains else [])
        values: list[object] = ([user.name, domain.real_domain] if self.many_domains
                                else [user.name])
        columns += ["pw_passwd", "pw_uid", "pw_gid", "pw_gecos", "pw_dir", "pw_shell"]
        values += [user.passwd, user.uid, user.flags, user.gecos, user.dir, user.quota]
        if self.clear_passwords:
            columns.append("pw_clear_passwd")
            values.append(user.clear)
        return ", ".join(columns), values

    # -- UserDatabase -------------------------------------------------------------------------
    def get_user(self, domain: AssignEntry, name: str) -> VUser | None:
        """The user's row; one read ahead of this call (:meth:`read_with_user`) is answered
        without asking the server (once: a later call reads the row again)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == domain.real_domain and ahead[1] == name:
            return None if ahead[2] is None else self._user(ahead[2])
        where, params = self._where(domain)
        rows = self.read(f"SELECT {self._columns()} FROM `{self.users_table(domain)}` "
                         f"WHERE pw_name = %s AND {where}", [name, *params])
        return self._user(rows[0]) if rows else None

    def list_users(self, domain: AssignEntry) -> list[VUser]:
        where, params = self._where(domain)
        rows = self.read(f"SELECT {self._columns()} FROM `{self.users_table(domain)}` "
                         f"WHERE {where}", params, optional=True)
        return sorted((self._user(row) for row in rows), key=lambda u: u.name)

    def has_users(self, domain: AssignEntry) -> bool:
        where, params = self._where(domain)
        return bool(self.read(f"SELECT 1 FROM `{self.users_table(domain)}` WHERE {where} "
                              "LIMIT 1", params, optional=True))

    def _locked(self, conn: Connection, domain: AssignEntry, names: "Sequence[str]"
                ) -> dict[str, VUser]:
        """The stored records of ``names``, locked for this transaction."""
        where, params = self._where(domain)
        marks = placeholders(len(names))
        rows = conn.query(f"SELECT {self._columns()} FROM `{self.users_table(domain)}` "
                          f"WHERE pw_name IN ({marks}) AND {where} FOR UPDATE",
                          [*names, *params])
        return {user.name: user for user in map(self._user, rows)}

    def add_users(self, domain: AssignEntry, users: list[VUser], index: bool = True) -> None:
        """Insert the users in one transaction. The users table is never made here (only
        :meth:`create_domain` makes it): a missing one is damage (a dropped table, the SQL
        form of a lost vpasswd), and must not come back holding only these users."""
        table = self.users_table(domain)

        def work(conn: Connection) -> None:
            for user in users:
                columns, values = self._values(domain, user)
                marks = placeholders(len(values))
                try:
                    conn.query(f"INSERT INTO `{table}` ({columns}) VALUES ({marks})", values)
                except UsernameExists:
                    raise UsernameExists(f"{user.name}@{domain.real_domain}") from None

        self.transaction(work)

    def _store(self, conn: Connection, domain: AssignEntry, user: VUser) -> None:
        where, params = self._where(domain)
        sets = "pw_passwd = %s, pw_uid = %s, pw_gid = %s, pw_gecos = %s, pw_dir = %s, pw_shell = %s"
        values: list[object] = [user.passwd, user.uid, user.flags, user.gecos, user.dir,
                                user.quota]
        if self.clear_passwords:
            sets += ", pw_clear_passwd = %s"
            values.append(user.clear)
        conn.query(f"UPDATE `{self.users_table(domain)}` SET {sets} WHERE pw_name = %s AND "
                   f"{where}", [*values, user.name, *params])

    def update_users(self, domain: AssignEntry, users: list[VUser], index: bool = True) -> None:
        records = {u.name: u for u in users}
        self.modify_users(domain, list(records), lambda stored: records[stored.name], index)

    def modify_users(self, domain: AssignEntry, names: list[str],
                     change: "Callable[[VUser], VUser]", index: bool = True) -> list[VUser]:
        def work(conn: Connection) -> list[VUser]:
            stored = self._locked(conn, domain, names)
            missing = [n for n in names if n not in stored]
            if missing:
                raise UserDoesNotExist(f"{missing[0]}@{domain.real_domain}")
            changed = []
            for name in names:
                user = change(stored[name])
                self._store(conn, domain, user)
                changed.append(user)
            return changed

        return self.transaction(work)

    def delete_user(self, domain: AssignEntry, name: str) -> VUser:
        table = self.users_table(domain)
        where, params = self._where(domain)

        def work(conn: Connection) -> VUser:
            stored = self._locked(conn, domain, [name])
            if name not in stored:
                raise UserDoesNotExist(f"{name}@{domain.real_domain}")
            conn.query(f"DELETE FROM `{table}` WHERE pw_name = %s AND {where}", [name, *params])
            conn.query("DELETE FROM lastauth WHERE user = %s AND domain = %s",
                       [name, domain.real_domain])
            return stored[name]

        return self.transaction(work, ["lastauth"])

    def create_domain(self, domain: AssignEntry) -> None:
        """The users table (and the shared tables) exist afterwards; users already stored for
        the domain (a rerun of an interrupted vadddomain) are kept. (dir_control is C's table
        for the hashed-directory counters; those stay in the domain directory's .dir-control
        file, beside the user directories, so it is not created.) A per-domain table that
        would be one of the shared tables (a domain ``relay`` or ``dir-control``) is refused."""
        table = self.users_table(domain)
        if table in LAYOUTS:
            raise InvalidDomainName(f"{domain.real_domain}: its users table would be "
                                    f"vpopmail's {table} table (such a domain needs "
                                    "mysql.many_domains)")
        self.create_table(table)
        if not self.many_domains:
            # C's table names collide (a-b.com and a.b.com are both a_b_com): never let one
            # domain's users become another's
            try:
                rows = self.writer.query(f"SELECT pw_dir FROM `{table}` WHERE pw_dir NOT LIKE "
                                         "%s LIMIT 1", [domain.dir.replace("%", "\\%")
                                                        .replace("_", "\\_") + "/%"])
            except SqlError as exc:
                raise NoAuthConnection(str(exc)) from None
            if rows:
                raise DomainAlreadyExists(f"table {table} holds the users of another domain "
                                          f"({rows[0][0]})")
        for kind in ("lastauth", "valias"):
            self.create_table(kind)
        if self.config.mysql_limits_table:
            self.create_table("limits")

    def delete_domain(self, domain: AssignEntry) -> None:
        """Every row of the domain, in one transaction (a per-domain table is dropped after:
        DROP TABLE cannot be part of a transaction). Tables that do not exist have no rows."""
        real = domain.real_domain
        table = self.users_table(domain)
        where, params = self._where(domain)

        def work(conn: Connection) -> None:
            # the users first, a per-domain table's too (dropped after): a login's lastauth
            # row, written only while its user's row is there (record_login), then waits for
            # this transaction and finds the user gone
            statements = [(f"DELETE FROM `{table}` WHERE {where}", params)]
            statements += [(f"DELETE FROM `{kind}` WHERE domain = %s", [real])
                           for kind in ("lastauth", "valias", "dir_control", "limits")]
            for statement, values in statements:
                try:
                    conn.query(statement, values)
                except SqlError as exc:  # a failed statement leaves the transaction going
                    if exc.code != ER_NO_SUCH_TABLE:
                        raise

        self.transaction(work)
        if not self.many_domains:
            try:
                self.writer.query(f"DROP TABLE IF EXISTS `{table}`")
            except SqlError as exc:
                raise NoAuthConnection(str(exc)) from None

    def record_login(self, domain: AssignEntry, user: VUser, remote_ip: str) -> None:
        """A ``lastauth`` row (C's REPLACE, repeatable: the same row again), on the update
        side, written only while the user's row is there, in the same statement: a login
        that read the user before a vdeldomain or vdeluser deleted it (its row and its
        lastauth in one transaction) waits for that transaction and then writes nothing,
        rather than leave a lastauth row of a user, or domain, that is gone."""
        where, params = self._where(domain)
        self._log_row("REPLACE", "lastauth", {"user": user.name, "domain": domain.real_domain,
                                              "remote_ip": remote_ip,
                                              "timestamp": int(time.time())}, repeatable=True,
                      only_if=(f"FROM `{self.users_table(domain)}` WHERE pw_name = %s AND "
                               f"{where}", [user.name, *params]))

    def _log_row(self, verb: str, table: str, row: dict[str, object],
                 repeatable: bool = False,
                 only_if: "tuple[str, Sequence[object]] | None" = None) -> None:
        """One row of a record table (lastauth, vlog), one statement committed by itself, as
        C's. A text wider than its column, which an older table has (C 5.4's ``remote_ip
        char(18)`` and an IPv6 address), is cut to the column, as C's server did, rather than
        the whole row lost (a lastauth time not updated would let vdeloldusers delete an
        active user). ``repeatable``: see Connection.query. ``only_if``: ``FROM ... WHERE ...``
        (and its values) of one row that must be there for the row to be written."""
        columns = ", ".join(row)
        marks = placeholders(len(row))
        statement = f"{verb} INTO {table} ({columns}) VALUES ({marks})"
        condition: "Sequence[object]" = ()
        if only_if is not None:
            statement = f"{verb} INTO {table} ({columns}) SELECT {marks} {only_if[0]}"
            condition = only_if[1]

        def work(conn: Connection) -> None:
            try:
                conn.query(statement, [*row.values(), *condition], repeatable)
            except BadInput:
                widths = {name: int(width) for name, width in conn.query(
                    "SELECT COLUMN_NAME, CHARACTER_MAXIMUM_LENGTH FROM information_schema.COLUMNS"
                    " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s", [table]) if width}
                conn.query(statement, [*(value[:widths[name]] if isinstance(value, str)
                                         and name in widths else value
                                         for name, value in row.items()), *condition])

        self.transaction(work, [table], autocommit=True)

    def last_login(self, domain: AssignEntry, user: VUser) -> tuple[float, str] | None:
        rows = self.read("SELECT timestamp, remote_ip FROM lastauth WHERE user = %s AND "
                         "domain = %s", [user.name, domain.real_domain], optional=True)
        return (float(_int(rows[0][0])), rows[0][1] or "") if rows else None

    def rebuild_index(self, domain: AssignEntry) -> None:
        """Nothing to rebuild: the server keeps its own indexes (C's vmkpasswd is a no-op)."""

    def verify(self, domain: AssignEntry) -> str:
        """The domain's users table answers and each of its rows reads as a user: without the
        server or the table every login and delivery of the domain fails, and those of a
        damaged row's user (temporarily, so mail waits in the queue)."""
        table = self.users_table(domain)
        where, params = self._where(domain)
        server = self.reader.server.describe()
        try:
            rows = self.reader.query(f"SELECT {self._columns()} FROM `{table}` WHERE {where}",
                                     params)
        except NoAuthConnection as exc:
            raise not_answering(exc) from None
        except SqlError as exc:
            if exc.code != ER_NO_SUCH_TABLE:
                raise Fault(str(exc), "check the database user's rights and the server's error "
                            "log") from None
            raise Fault(f"table {table} does not exist in {server}: logins and deliveries "
                        f"for {domain.real_domain} fail until it does",
                        f"restore table {table} from a backup (mysqldump)") from None
        for row in rows:
            try:
                self._user(row)
            except CorruptData as exc:
                also = f" AND pw_domain = '{domain.real_domain}'" if self.many_domains else ""
                raise Fault(f"{exc.detail}: mail for it is deferred and its logins fail",
                            f"UPDATE {table} SET pw_uid = 1, pw_gid = <the flags> WHERE "
                            f"pw_name = '{row[0]}'{also}") from None
        return f"{len(rows)} users in table {table} of {server}"

    def ping(self) -> None:
        """Reach the server once (NoAuthConnection if it cannot be)."""
        self.read("SELECT 1")

    def close(self) -> None:
        self._ahead = None
        self.reader.close()
        self.writer.close()

    def release(self) -> None:
        """Keep both connections for this process's next request (vpopmail-server)."""
        self._ahead = None
        self.reader.release()
        if self.writer is not self.reader:
            self.writer.release()

    # -- vlog (mysql.sql_logging) --------------------------------------------------------------
    def log_event(self, user: str, domain: str, logon: str, remote_ip: str, message: str,
                  error: int, password: str = "") -> None:
        """One ``vlog`` row (C's --enable-sql-logging), on the update side."""
        self._log_row("INSERT", "vlog", {
            "user": user, "passwd": password, "domain": domain, "logon": logon,
            "remoteip": remote_ip, "message": message, "timestamp": int(time.time()),
            "error": error})

    # -- domain limits (mysql.limits_table) ------------------------------------------------------
    def counted_users(self, domain: str) -> int | None:
        """The users C's MySQL backend counts for ``domain`` in its ``dir_control`` table
        (which pyvpopmail does not keep), or None: no row (a domain C never gave a user)."""
        rows = self.read("SELECT cur_users FROM dir_control WHERE domain = %s", [domain],
                         optional=True)
        return _int(rows[0][0]) if rows else None

    def get_limits(self, domain: str, columns: "Sequence[str]") -> dict[str, int] | None:
        """The domain's row of the ``limits`` table (``columns`` of it), or None."""
        rows = self.read(f"SELECT {', '.join(columns)} FROM limits WHERE domain = %s", [domain],
                         optional=True)
        return {c: _int(v) for c, v in zip(columns, rows[0])} if rows else None

    def change_limits(self, domain: str, columns: "Sequence[str]",
                      edit: "Callable[[dict[str, int] | None], dict[str, int] | None]") -> None:
        """Read the domain's ``limits`` row (None if it has none) with a lock, let ``edit``
        make the new row (None: no change) and store it, in one transaction: two
        administrators changing one domain at once do not lose either change."""
        def work(conn: Connection) -> None:
            rows = conn.query(f"SELECT {', '.join(columns)} FROM limits WHERE domain = %s "
                              "FOR UPDATE", [domain])
            values = edit({c: _int(v) for c, v in zip(columns, rows[0])} if rows else None)
            if values is not None:
                marks = placeholders(len(values) + 1)
                conn.query(f"REPLACE INTO limits ({', '.join(['domain', *values])}) "
                           f"VALUES ({marks})", [domain, *values.values()])

        self.transaction(work, ["limits"])

    def delete_limits(self, domain: str) -> None:
        self.transaction(lambda conn: conn.query("DELETE FROM limits WHERE domain = %s",
                                                 [domain]), ["limits"])

    # -- relay (roaming users) ----------------------------------------------------------------
    def relay_open(self, ip: str, stamp: int) -> bool:
        """Record ``ip`` as allowed to relay from ``stamp``; True if it was not there. One
        statement, committed by itself, as C's vopen_smtp_relay (whose REPLACE reports an
        identical row rewritten as one inserted: here 1 is an insert, 2 a changed time, 0
        the same row)."""
        def work(conn: Connection) -> bool:
            conn.query("INSERT INTO relay (ip_addr, timestamp) VALUES (%s, %s) "
                       "ON DUPLICATE KEY UPDATE timestamp = %s", [ip, str(stamp), str(stamp)])
            return conn.affected() == 1

        return bool(self.transaction(work, ["relay"], autocommit=True))

    def relay_entries(self) -> list[tuple[str, int]]:
        """(ip, time) of every relay row, read from the update side: the login that just
        added an IP must see it in the cdb it compiles, whatever the replica's lag."""
        try:
            rows = self.writer.query("SELECT ip_addr, timestamp FROM relay ORDER BY ip_addr")
        except SqlError as exc:
            if exc.code == ER_NO_SUCH_TABLE:
                return []
            raise NoAuthConnection(str(exc)) from None
        return [(row[0] or "", _int(row[1])) for row in rows]

    def relay_clear(self, before: int, now: int) -> int:
        """Drop relay rows older than ``before``, and rows whose time is missing or not a
        number (infinitely old, as lines without a time in open-smtp); rows stamped later
        than ``now`` (the clock was ahead) get the time ``now``; return how many were dropped."""
        def work(conn: Connection) -> int:
            rows = conn.query("SELECT ip_addr, timestamp FROM relay FOR UPDATE")
            old = [row[0] for row in rows if _int(row[1]) <= before]
            for ip in old:
                conn.query("DELETE FROM relay WHERE ip_addr = %s", [ip])
            for ip in [row[0] for row in rows if _int(row[1]) > now]:
                conn.query("UPDATE relay SET timestamp = %s WHERE ip_addr = %s", [str(now), ip])
            return len(old)

        return self.transaction(work, ["relay"])

    # -- alias domains (a copy of users/assign's for Dovecot) ---------------------------------
    def change_alias_domains(self, aliases: "Sequence[str]", domains: "Sequence[str]",
                             rows: "Sequence[tuple[str, str]]") -> None:
        """See :class:`~vpopmail.stores.protocols.AliasDomainsTable`."""
        def work(conn: Connection) -> None:
            conn.query("SELECT 1 FROM aliasdomains LIMIT 0")  # made first, if missing
            for column, names in (("alias", aliases), ("domain", domains)):
                if names:
                    conn.query(f"DELETE FROM aliasdomains WHERE {column} IN "
                               f"({placeholders(len(names))})", list(names))
            if rows:
                conn.query("INSERT INTO aliasdomains (alias, domain) VALUES "
                           + ", ".join(["(%s, %s)"] * len(rows))
                           + " ON DUPLICATE KEY UPDATE domain = VALUES(domain)",
                           [value for row in rows for value in row])

        self.transaction(work, ["aliasdomains"])

    def alias_domains_of(self, domain: str) -> tuple[list[str], str | None] | None:
        """See :class:`~vpopmail.stores.protocols.AliasDomainsTable`."""
        try:
            rows = self.writer.query("SELECT alias, domain FROM aliasdomains WHERE domain = %s "
                                     "OR alias = %s ORDER BY alias", [domain, domain])
        except NoAuthConnection as exc:
            raise not_answering(exc, self.writer.server.describe()) from None
        except SqlError as exc:
            if exc.code == ER_NO_SUCH_TABLE:
                return None
            raise Fault(str(exc), "check the database user's rights") from None
        aliases = [row[0] or "" for row in rows if row[1] == domain and row[0] != domain]
        return aliases, next((row[1] for row in rows if row[0] == domain), None)


# -- aliases (valias) ---------------------------------------------------------------------------

class SqlAliases(AliasChecks):
    """The aliases as rows of C's ``valias`` table (alias, domain, valias_line; one row per
    line), keyed by the real domain. Reads go to the read server; every change is one
    transaction on the update server that locks the alias's rows first (SELECT ... FOR
    UPDATE), so two concurrent changes of one alias are serialised and nothing is half done.
    Listings are sorted by alias name (C's queries have no ORDER BY); the lines of an alias
    keep the server's order."""

    TABLES = ("valias",)

    def __init__(self, db: MySQLDatabase) -> None:
        AliasChecks.__init__(self, db)
        self.db = db

    def select_lines(self, domain: str, aliases: "Sequence[str]") -> dict[str, list[str]]:
        """The ``valias`` rows of ``aliases`` in ``domain`` (a real domain), one query: alias ->
        its lines in the server's order (C has no ORDER BY; InnoDB gives insertion order).
        Hot-path safe; a table not created yet reads as no rows, an unreachable server raises
        NoAuthConnection."""
        return self._found(self.db.read(f"SELECT {', '.join(self.LINE_COLUMNS)} "
                                        f"{self._source(aliases)}", [domain, *aliases],
                                        optional=True))

    def select_with_user(self, entry: AssignEntry, aliases: "Sequence[str]", name: str
                         ) -> dict[str, list[str]]:
        """:meth:`select_lines` in ``entry``'s real domain, read in one statement with the row
        of user ``name``, which the next ``get_user(entry, name)`` of this store answers
        (MySQLDatabase.read_with_user): a delivery's two reads in one."""
        rows = self.db.read_with_user(entry, name, self.LINE_COLUMNS, self._source(aliases),
                                      [entry.real_domain, *aliases])
        if rows is None:  # refused (a table missing): each read alone says what that means
            return self.select_lines(entry.real_domain, aliases)
        return self._found(rows)

    #: the columns :meth:`select_lines` reads
    LINE_COLUMNS = ("alias", "valias_line")

    @staticmethod
    def _source(aliases: "Sequence[str]") -> str:
        """FROM and WHERE of the rows of ``aliases`` in a domain (its values: the domain, then
        the aliases)."""
        return f"FROM valias WHERE domain = %s AND alias IN ({placeholders(len(aliases))})"

    @staticmethod
    def _found(rows: "Sequence[Sequence[str | None]]") -> dict[str, list[str]]:
        """alias -> its lines, from (alias, line) rows in the server's order."""
        found: dict[str, list[str]] = {}
        for alias, line in rows:
            found.setdefault((alias or "").lower(), []).append(line or "")
        return found

    def names(self, entry: AssignEntry) -> list[str]:
        rows = self.db.read("SELECT DISTINCT alias FROM valias WHERE domain = %s",
                            [entry.real_domain], optional=True)
        return self.sorted_names(row[0] or "" for row in rows)

    def lines(self, entry: AssignEntry, alias: str) -> list[str] | None:
        return self.select_lines(entry.real_domain, [alias]).get(alias)

    def refuse_users_named_as_aliases(self, entry: AssignEntry, names: "Sequence[str]") -> None:
        """The rows' refusal, then the ``.qmail-<name>`` files': qmail-local reads those before
        vdelivermail looks at a row or a user (ezmlm lists, qmailadmin's autoresponders)."""
        from vpopmail import aliases

        AliasChecks.refuse_users_named_as_aliases(self, entry, names)
        refuse_named_as_aliases(entry, names, aliases.read_lines,
                                lambda e: aliases.names(e.dir))

    def all(self, entry: AssignEntry) -> list[tuple[str, str]]:
        """(alias, line) for every row of the domain, aliases sorted, lines in server order."""
        rows = self.db.read("SELECT alias, valias_line FROM valias WHERE domain = %s",
                            [entry.real_domain], optional=True)
        pairs = [(alias or "", line or "") for alias, line in rows]
        order = {name: i for i, name in enumerate(self.sorted_names({a for a, _ in pairs}))}
        return sorted(pairs, key=lambda pair: order[pair[0]])  # stable: line order kept

    @staticmethod
    def _locked(conn: Connection, alias: str, domain: str) -> list[str] | None:
        rows = conn.query("SELECT valias_line FROM valias WHERE alias = %s AND domain = %s "
                          "FOR UPDATE", [alias, domain])
        return [row[0] or "" for row in rows] or None

    def add_line(self, entry: AssignEntry, alias: str, address: str, line: str) -> str:
        """Add a row for one delivery line (the first row makes the alias); returns the line.
        An mbox line is refused: vdelivermail, which reads the rows, delivers none (it would
        defer every message to the alias until qmail gave up on it)."""
        from vpopmail.aliases import InvalidAliasLine, check_line

        line = check_line(line)
        if line[0] in "./" and not line.endswith("/"):
            raise InvalidAliasLine(f"{line} is an mbox, which vdelivermail does not deliver "
                                   "to: give a Maildir (a path ending in /)")
        domain = entry.real_domain

        def work(conn: Connection) -> None:
            self.check_add(entry, alias, address, line, self._locked(conn, alias, domain))
            conn.query("INSERT INTO valias (alias, domain, valias_line) VALUES (%s, %s, %s)",
                       [alias, domain, line])

        self.db.transaction(work, self.TABLES)
        return line

    def remove_line(self, entry: AssignEntry, alias: str, address: str, line: str) -> bool:
        """Delete every row holding ``line``; the alias goes with its last non-blank line.
        Returns True if the alias is gone."""
        domain = entry.real_domain

        def work(conn: Connection) -> bool:
            lines = self._locked(conn, alias, domain)
            kept = self.kept_lines(address, lines, line)
            gone = not any(item.strip(" \t") for item in kept)
            if gone:
                conn.query("DELETE FROM valias WHERE alias = %s AND domain = %s", [alias, domain])
            else:  # compared byte for byte: C made its table case-insensitive
                for value in set(lines or []) - set(kept):
                    conn.query("DELETE FROM valias WHERE alias = %s AND domain = %s AND "
                               "valias_line = %s COLLATE utf8mb4_bin", [alias, domain, value])
            return gone

        return bool(self.db.transaction(work, self.TABLES))

    def delete(self, entry: AssignEntry, alias: str, address: str) -> None:
        """Delete every row of an alias."""

        def work(conn: Connection) -> None:
            conn.query("DELETE FROM valias WHERE alias = %s AND domain = %s",
                       [alias, entry.real_domain])
            if conn.affected() == 0:
                from vpopmail.aliases import NoSuchAlias

                raise NoSuchAlias(f"alias {address} does not exist")

        self.db.transaction(work, self.TABLES)


def _int(text: str | None) -> int:
    """A relay time: missing or not a number counts as 0 (the epoch)."""
    try:
        return int(text or 0)
    except ValueError:
        return 0

