"""Runtime configuration: what C vpopmail fixed at ./configure time, read from one TOML file.

The hot paths (vdelivermail, vchkpw) start a fresh interpreter per message or login, and
``tomllib`` costs about 13 ms to import, so a parsed copy is kept beside the file as a
``marshal`` cache keyed by the file's identity; only a stale or missing cache loads tomllib.
The cache is written, and believed, only when it is the file owner's (root's in a root
installation: another process parses the file until root loads it once).
qmail-local and qmail-popup clear the environment, so the installed wrappers pass the path they
were built with; ``VPOPMAIL_CONFIG`` overrides it (tests, ad-hoc runs).
"""
import marshal
import posix

from vpopmail import getenv
from vpopmail.errors import ConfigError
from vpopmail.fsutil import join, status, write_all

ENV_VAR = "VPOPMAIL_CONFIG"
DEFAULT_PATH = "/home/vpopmail/etc/vpopmail.toml"
_CACHE_VERSION = 8  # 8: mysql.read_timeout (a cache holds the defaults)
#: what mysql.read_timeout 0 gives a statement beyond locks.timeout: its own time, once it
#: has its locks
READ_MARGIN = 10
#: the most server.workers may be: each is a process (some 13 MiB); more is a mistake that
#: would only fail later, when the server maps a counter for each
MAX_WORKERS = 4096


def sql_lock_wait(locks_timeout: int) -> int:
    """Seconds an SQL statement waits on a lock: ``locks.timeout``, at least the 1 s that
    MariaDB's innodb_lock_wait_timeout and lock_wait_timeout take at the least."""
    return max(1, locks_timeout)


#: a setting's value: TOML's string, integer or boolean
Value = str | int | bool


class Config:
    """Validated settings, one typed attribute per key: ``section_key`` flattened (e.g.
    ``owner_uid``). The class body is the schema: each key's type and compiled-in default
    (the README documents every key with its ./configure twin); ``values`` holds them all."""

    # [paths]
    paths_vpopmail_home: str = "/home/vpopmail"
    paths_domains_dir: str = "domains"
    paths_qmail_dir: str = "/var/qmail"
    paths_tcp_smtp: str = "etc/tcp.smtp"
    paths_tcp_smtp_cdb: str = "etc/tcp.smtp.cdb"
    paths_open_smtp: str = "etc/open-smtp"
    paths_qmail_inject: str = "bin/qmail-inject"
    paths_server_socket: str = "run/server.sock"
    #: vpopmail-server's socket for Dovecot 2.4's lookups (made with server.dovecot_callers:
    #: only they may connect, and some workers are kept for them)
    paths_lookup_socket: str = "run/lookup.sock"
    # [owner]
    owner_user: str = "vpopmail"
    owner_group: str = "vchkpw"
    owner_uid: int = 89
    owner_gid: int = 89
    # [passwords]
    passwords_scheme: str = "sha512-crypt"
    passwords_clear_passwords: bool = False
    passwords_learn_passwords: bool = False
    passwords_rehash_on_login: bool = False
    # [users]
    users_backend: str = "cdb"
    users_hashed_dirs: bool = True
    users_qmail_ext: bool = False
    users_default_domain: str = ""
    users_quota_warn_percent: int = 90
    users_default_action: str = "bounce-no-mailbox"
    # [relay]
    relay_roaming_users: bool = False
    relay_relay_clear_minutes: int = 180
    relay_rebuild_tcpserver: bool = True
    relay_lock_timeout: int = 5
    # [delivery]
    delivery_file_sync: bool = True
    delivery_max_hops: int = 100
    #: a user without a .qmail gets qmail's control/defaultdelivery (sagredo's vpopmail
    #: --enable-defaultdelivery: e.g. "| dovecot-lda ..." so that Dovecot's Sieve runs)
    delivery_default_delivery: bool = False
    # [logging]
    logging_level: str = "e"
    logging_auth_logging: bool = True
    logging_log_name: str = "vpopmail"
    logging_syslog_socket: str = "/dev/log"
    # [locks]
    locks_timeout: int = 20
    # [server]: vpopmail-server, the resident process behind the C front ends of
    # vdelivermail/vchkpw
    server_workers: int = 32
    server_requests_per_worker: int = 1000
    #: a delivery or login whose identity has no worker waits for a fork from the server
    #: (some 2 ms here: twice a warm one); an idle worker keeps some 2.4 MiB of its own
    server_idle_timeout: int = 3600
    #: a worker that has served nothing this long closes its SQL connections (and stays):
    #: the connections of a burst's workers go back to a database others share
    server_sql_idle_timeout: int = 60
    server_request_timeout: int = 10
    server_reply_timeout: int = 600
    server_root_logins: bool = False
    server_sandboxed_callers: bool = False
    #: users (names or uids, separated by spaces or commas) whose vchkpw runs are served with
    #: the vpopmail user's rights, for SMTP AUTH only: qmail-smtpd's SMTP AUTH patches run it
    #: as qmaild, where C installed vchkpw setuid root
    server_smtp_auth_callers: str = ""
    #: users (names or uids) whose Dovecot 2.4 may ask the server's HTTP lookups (its Lua
    #: passdb/userdb, packaging/dovecot/vpopmail-auth.lua): the user Dovecot's auth-worker
    #: runs as (root by default); another than root and the vpopmail user is served with the
    #: vpopmail user's rights, for these lookups only
    server_dovecot_callers: str = ""
    # [mysql]: users.backend = "mysql": C's vpopmail.mysql (read line, update line) and its
    # ./configure switches (--disable-many-domains, --enable-mysql-limits, --enable-sql-logging)
    mysql_many_domains: bool = True
    mysql_limits_table: bool = False
    #: a copy of users/assign's alias domains in the aliasdomains table, for Dovecot's SQL
    #: queries (sagredo's vpopmail --enable-sql-aliasdomains)
    mysql_aliasdomains_table: bool = True
    mysql_sql_logging: bool = False
    mysql_connect_timeout: int = 2
    #: seconds a statement's answer may take (then 111): more than locks.timeout, which a
    #: statement may wait on a lock; 0: locks.timeout + READ_MARGIN (see sql_read_timeout)
    mysql_read_timeout: int = 0
    mysql_read_fallback: bool = True
    mysql_read_host: str = "localhost"
    mysql_read_port: int = 0
    mysql_read_socket: str = ""
    mysql_read_user: str = "vpopmail"
    mysql_read_password: str = ""
    mysql_read_database: str = "vpopmail"
    mysql_update_host: str = ""
    mysql_update_port: int = 0
    mysql_update_socket: str = ""
    mysql_update_user: str = ""
    mysql_update_password: str = ""
    mysql_update_database: str = ""

    def __init__(self, values: dict[str, Value], path: str = "") -> None:
        vars(self).update(values)
        self.path = path
        self.values = values

    # What every program needs, derived.
    @property
    def home(self) -> str:
        return self.paths_vpopmail_home

    def misplaced_home(self) -> str:
        """'' where ``paths.vpopmail_home`` holds an installation (its bin/); else what is
        wrong, naming the key and this file (the defaults' /home/vpopmail kept for a PREFIX
        elsewhere: new domains would go, and call vdelivermail, where nothing is)."""
        import stat

        bin_dir = join(self.home, "bin")
        try:
            if stat.S_ISDIR(posix.stat(bin_dir).st_mode):
                return ""
        except OSError:
            pass
        return (f"paths.vpopmail_home = {self.home!r} in {self.path or 'the configuration'}, "
                f"but {bin_dir} does not exist: no pyvpopmail is installed there")

    @property
    def domains_root(self) -> str:
        return join(self.home, self.paths_domains_dir)

    @property
    def qmail_dir(self) -> str:
        return self.paths_qmail_dir

    @property
    def uid(self) -> int:
        return self.owner_uid

    @property
    def gid(self) -> int:
        return self.owner_gid

    @property
    def root_logins(self) -> bool:
        """Whether a POP/IMAP login may run its program as root (a domain owned by uid 0):
        ``server.root_logins``, or an installation whose own user is root (a sandbox
        installed by root, where every domain is root's). vchkpw asks, and the front ends
        are built with the answer."""
        return self.server_root_logins or self.owner_uid == 0

    @property
    def sql_read_timeout(self) -> int:
        """Seconds an SQL statement's answer may take: ``mysql.read_timeout``, or by default
        (0) more than ``locks.timeout`` by READ_MARGIN."""
        return self.mysql_read_timeout or sql_lock_wait(self.locks_timeout) + READ_MARGIN

    def smtp_auth_callers(self) -> frozenset[int]:
        """The uids ``server.smtp_auth_callers`` names (user names or numbers); a ConfigError
        for a name that is no user, and for root and the vpopmail user (served with their
        own rights, which are more)."""
        named = self._uids("smtp_auth_callers")
        for name, uid in named.items():
            if uid in (0, self.owner_uid):
                raise ConfigError(f"server.smtp_auth_callers: {name} (uid {uid}) is served "
                                  f"with its own rights, which are more: leave it out")
        return frozenset(named.values())

    def dovecot_callers(self) -> frozenset[int]:
        """The uids ``server.dovecot_callers`` names; a ConfigError for a name that is no
        user."""
        return frozenset(self._uids("dovecot_callers").values())

    def _uids(self, key: str) -> dict[str, int]:
        """name -> uid of the users the ``server`` key ``key`` names (user names or numbers,
        separated by spaces or commas)."""
        import pwd

        named = {}
        for name in str(self.values["server_" + key]).replace(",", " ").split():
            try:
                named[name] = (int(name) if name.isascii() and name.isdigit()
                               else pwd.getpwnam(name).pw_uid)
            except KeyError:
                raise ConfigError(f"server.{key}: there is no user {name!r}") from None
        return named

    def home_path(self, key: str) -> str:
        """A ``paths`` entry; relative ones are under the vpopmail home (qmail_* under qmail_dir)."""
        value = str(self.values["paths_" + key])
        if not value or value.startswith("/"):
            return value
        base = self.qmail_dir if key.startswith("qmail_") else self.home
        return join(base, value)


def _schema() -> dict[str, dict[str, tuple[Value, type[Value]]]]:
    """section -> key -> (default, type), from :class:`Config`'s body, in its order."""
    schema: dict[str, dict[str, tuple[Value, type[Value]]]] = {}
    for name, kind in Config.__annotations__.items():
        section, _, key = name.partition("_")
        schema.setdefault(section, {})[key] = (getattr(Config, name), kind)
    return schema


SCHEMA = _schema()

_CHOICES = {
    ("passwords", "scheme"): ("sha512-crypt", "sha256-crypt", "md5-crypt", "des-crypt", "bcrypt",
                              "argon2"),
    ("logging", "level"): ("n", "e", "y", "p", "v"),
    ("users", "backend"): ("cdb", "mysql"),
}


def _nearest(name: str, known: list[str]) -> str:
    """``; did you mean X?`` for a misplaced ``name`` (the key of that name in another
    section, or outside any: ``section.key``) or a misspelt one (the one of ``known`` closest
    to it), or ''."""
    import difflib

    elsewhere = [f"{section}.{name}" for section, keys in SCHEMA.items()
                 if name in keys and name not in known]
    close = elsewhere or difflib.get_close_matches(name, known, n=1)
    return f"; did you mean {close[0]}?" if close else ""


def validate(raw: dict[str, object], source: str = "") -> dict[str, Value]:
    """Check a parsed TOML document against SCHEMA; return the flattened values."""
    values: dict[str, Value] = {}
    for section, entries in raw.items():
        if section not in SCHEMA:
            raise ConfigError(f"{source}: unknown section [{section}]"
                              f"{_nearest(section, list(SCHEMA))}")
        if not isinstance(entries, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        for key in entries:
            if key not in SCHEMA[section]:
                raise ConfigError(f"{source}: unknown key {section}.{key}"
                                  f"{_nearest(key, list(SCHEMA[section]))}")
    for section, entries in SCHEMA.items():
        given = raw.get(section, {})
        assert isinstance(given, dict)
        for key, (default, kind) in entries.items():
            value = given.get(key, default)
            if type(value) is not kind:
                raise ConfigError(f"{source}: {section}.{key} must be {kind.__name__}, got {value!r}")
            if isinstance(value, str) and "\0" in value:
                raise ConfigError(f"{source}: {section}.{key} contains a NUL character")
            choices = _CHOICES.get((section, key))
            if choices and value not in choices:
                raise ConfigError(f"{source}: {section}.{key} must be one of {', '.join(choices)}")
            values[f"{section}_{key}"] = value
    for key in ("paths_vpopmail_home", "paths_qmail_dir"):
        if not str(values[key]).startswith("/"):  # written into users/assign, .qmail-default
            raise ConfigError(f"{source}: {key.replace('_', '.', 1)} must be an absolute path, "
                              f"not {values[key]!r}")
    for key in ("server_workers", "server_requests_per_worker", "delivery_max_hops"):
        if int(values[key]) < 1:
            raise ConfigError(f"{source}: {key.replace('_', '.', 1)} must be >= 1")
    if int(values["server_workers"]) > MAX_WORKERS:  # each a process: more is a typo
        raise ConfigError(f"{source}: server.workers must be at most {MAX_WORKERS}")
    if not 0 < int(values["users_quota_warn_percent"]) <= 100:
        raise ConfigError(f"{source}: users.quota_warn_percent must be 1..100")
    for key in ("owner_uid", "owner_gid", "locks_timeout", "relay_lock_timeout",
                "relay_relay_clear_minutes", "mysql_connect_timeout", "mysql_read_timeout",
                "mysql_read_port", "mysql_update_port", "server_request_timeout",
                "server_idle_timeout", "server_sql_idle_timeout", "server_reply_timeout"):
        if int(values[key]) < 0:
            raise ConfigError(f"{source}: {key.replace('_', '.', 1)} must be >= 0")
    lock_wait = sql_lock_wait(int(values["locks_timeout"]))
    if 0 < int(values["mysql_read_timeout"]) <= lock_wait:
        raise ConfigError(f"{source}: mysql.read_timeout must be more than locks.timeout "
                          f"({lock_wait} s), which a statement may wait on a lock; 0 takes "
                          f"locks.timeout + {READ_MARGIN}")
    return values


def defaults() -> Config:
    """The compiled-in defaults (a C vpopmail installed in /home/vpopmail)."""
    return Config(validate({}, "defaults"))


def locate(baked: str | None = None) -> str:
    """The config path: $VPOPMAIL_CONFIG, else the path the wrapper was installed with."""
    return getenv(ENV_VAR) or baked or DEFAULT_PATH


def _identity(st: posix.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


#: (path, effective uid, gid) -> (the file's status when read, its values): what this process
#: read last with those ids (a server worker loads the config per request; an unchanged file
#: is not read again, and never for ids that did not read it themselves)
_read: dict[tuple[str, int, int], tuple[tuple[int, ...], dict[str, Value]]] = {}


def load(path: str | None = None) -> Config:
    """Load the config at ``path`` (see :func:`locate`), through the marshal cache when fresh.
    A file this process already read with the same ids is not read again while its status
    (inode, size, times, mode, owner) is unchanged."""
    path = locate(path)
    try:
        st = posix.stat(path)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    now = status(st)
    key = (path, posix.geteuid(), posix.getegid())
    seen = _read.get(key)
    if seen is not None and seen[0] == now:
        return Config(seen[1], path)
    config = _load(path, st)
    _read[key] = (now, config.values)
    return config


def _load(path: str, st: posix.stat_result) -> Config:
    cache = path + ".cache"
    ident = _identity(st)
    try:
        # not through a symbolic link, nor waiting on a FIFO; believed only when the config
        # file's owner wrote it (write_cache): in a root installation etc/ is writable by the
        # vpopmail user's group, which could plant a cache of its own where none is
        fd = posix.open(cache, posix.O_RDONLY | posix.O_NOFOLLOW | posix.O_NONBLOCK
                        | posix.O_CLOEXEC)
        try:
            own = posix.fstat(fd)
            if own.st_uid == st.st_uid:
                version, cached_ident, values = marshal.loads(posix.read(fd, own.st_size))
                if version == _CACHE_VERSION and tuple(cached_ident) == ident:
                    return Config(values, path)
        finally:
            posix.close(fd)
    except (OSError, EOFError, ValueError, TypeError):
        pass
    values = parse_file(path)
    write_cache(path, values, ident, st)
    return Config(values, path)


def parse_file(path: str) -> dict[str, Value]:
    """Parse and validate the TOML file (slow path: imports tomllib)."""
    import tomllib

    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except ValueError as exc:  # tomllib.TOMLDecodeError
        raise ConfigError(f"{path}: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: arrays or tables nested too deeply") from None
    return validate(raw, path)


def write_cache(path: str, values: dict[str, Value], ident: tuple[int, int, int, int],
                source: posix.stat_result) -> None:
    """Best effort, and only by the config file's owner (whose cache alone :func:`_load`
    believes): another reader just keeps parsing the TOML. The cache is made under a temp
    name that cannot be a link planted there (O_EXCL, O_NOFOLLOW) and renamed over the old
    one; it gets the file's permission bits and (as root) group: it holds the same secrets,
    e.g. the database passwords, and must stay readable by exactly those who can read the
    file."""
    if posix.geteuid() != source.st_uid:
        return
    tmp = f"{path}.cache.{posix.getpid()}"
    flags = (posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL | posix.O_NOFOLLOW
             | posix.O_CLOEXEC)
    try:
        try:
            fd = posix.open(tmp, flags, 0o600)
        except FileExistsError:  # left by a crashed process with our pid, or planted
            posix.unlink(tmp)
            fd = posix.open(tmp, flags, 0o600)
        try:
            write_all(fd, marshal.dumps((_CACHE_VERSION, ident, values)))
            if source.st_uid == 0:
                posix.fchown(fd, 0, source.st_gid)
            posix.fchmod(fd, source.st_mode & 0o666)
        finally:
            posix.close(fd)
        posix.replace(tmp, path + ".cache")
    except OSError:
        try:
            posix.unlink(tmp)
        except OSError:
            pass


def toml_string(value: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    escaped = "".join(
        "\\" + c if c in '"\\' else
        f"\\u{ord(c):04x}" if (ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F else c
        for c in value)
    return f'"{escaped}"'


def render(values: dict[str, Value]) -> str:
    """TOML text for flattened values (used by the installer)."""
    lines = ["# pyvpopmail configuration; every key is described in README.md.", ""]
    for section, entries in SCHEMA.items():
        lines.append(f"[{section}]")
        for key in entries:
            value = values[f"{section}_{key}"]
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, int):
                text = str(value)
            else:
                text = toml_string(str(value))
            lines.append(f"{key} = {text}")
        lines.append("")
    return "\n".join(lines)
