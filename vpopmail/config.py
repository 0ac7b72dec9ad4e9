"""Runtime configuration: what C vpopmail fixed at ./configure time, read from one TOML file.

The hot paths (vdelivermail, vchkpw) start a fresh interpreter per message or login, and
``tomllib`` costs about 13 ms to import, so a parsed copy is kept beside the file as a
``marshal`` cache keyed by the file's identity; only a stale or missing cache loads tomllib.
qmail-local and qmail-popup clear the environment, so the installed wrappers pass the path they
were built with; ``VPOPMAIL_CONFIG`` overrides it (tests, ad-hoc runs).
"""
import marshal
import os

from vpopmail.errors import ConfigError

ENV_VAR = "VPOPMAIL_CONFIG"
DEFAULT_PATH = "/home/vpopmail/etc/vpopmail.toml"
_CACHE_VERSION = 3

#: section -> key -> (default, type). The README documents every key with its ./configure twin.
SCHEMA: dict[str, dict[str, tuple[object, type]]] = {
    "paths": {
        "vpopmail_home": ("/home/vpopmail", str),
        "domains_dir": ("domains", str),
        "qmail_dir": ("/var/qmail", str),
        "tcp_smtp": ("etc/tcp.smtp", str),
        "tcp_smtp_cdb": ("etc/tcp.smtp.cdb", str),
        "open_smtp": ("etc/open-smtp", str),
        "qmail_inject": ("bin/qmail-inject", str),
        "server_socket": ("run/server.sock", str),
    },
    "owner": {
        "user": ("vpopmail", str),
        "group": ("vchkpw", str),
        "uid": (89, int),
        "gid": (89, int),
    },
    "passwords": {
        "scheme": ("sha512-crypt", str),
        "clear_passwords": (False, bool),
        "learn_passwords": (False, bool),
        "rehash_on_login": (False, bool),
    },
    "users": {
        "backend": ("cdb", str),
        "hashed_dirs": (True, bool),
        "qmail_ext": (False, bool),
        "default_domain": ("", str),
        "quota_warn_percent": (90, int),
        "default_action": ("bounce-no-mailbox", str),
    },
    "relay": {
        "roaming_users": (False, bool),
        "relay_clear_minutes": (180, int),
        "rebuild_tcpserver": (True, bool),
        "lock_timeout": (5, int),
    },
    "delivery": {
        "file_sync": (True, bool),
        "max_hops": (100, int),
    },
    "logging": {
        "level": ("e", str),
        "auth_logging": (True, bool),
        "log_name": ("vpopmail", str),
        "syslog_socket": ("/dev/log", str),
    },
    "locks": {
        "timeout": (20, int),
    },
    # vpopmail-server, the resident process behind the C front ends of vdelivermail/vchkpw
    "server": {
        "workers": (32, int),
        "requests_per_worker": (1000, int),
        "idle_timeout": (60, int),
        "request_timeout": (10, int),
        "root_logins": (False, bool),
    },
    # users.backend = "mysql": C's vpopmail.mysql (read line, update line) and its ./configure
    # switches (--disable-many-domains, --enable-mysql-limits, --enable-sql-logging)
    "mysql": {
        "many_domains": (True, bool),
        "limits_table": (False, bool),
        "sql_logging": (False, bool),
        "connect_timeout": (2, int),
        "read_fallback": (True, bool),
        "read_host": ("localhost", str),
        "read_port": (0, int),
        "read_socket": ("", str),
        "read_user": ("vpopmail", str),
        "read_password": ("", str),
        "read_database": ("vpopmail", str),
        "update_host": ("", str),
        "update_port": (0, int),
        "update_socket": ("", str),
        "update_user": ("", str),
        "update_password": ("", str),
        "update_database": ("", str),
    },
}

_CHOICES = {
    ("passwords", "scheme"): ("sha512-crypt", "sha256-crypt", "md5-crypt", "des-crypt", "bcrypt",
                              "argon2"),
    ("logging", "level"): ("n", "e", "y", "p", "v"),
    ("users", "backend"): ("cdb", "mysql"),
}


class Config:
    """Validated settings; attribute names are ``section_key`` flattened (e.g. ``owner_uid``)."""

    __slots__ = ("path", "values")

    def __init__(self, values: dict[str, object], path: str = "") -> None:
        self.path = path
        self.values = values

    def __getattr__(self, name: str) -> object:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    # Typed accessors for what every program needs.
    @property
    def home(self) -> str:
        return str(self.values["paths_vpopmail_home"])

    @property
    def domains_root(self) -> str:
        return os.path.join(self.home, str(self.values["paths_domains_dir"]))

    @property
    def qmail_dir(self) -> str:
        return str(self.values["paths_qmail_dir"])

    @property
    def uid(self) -> int:
        return int(self.values["owner_uid"])  # type: ignore[call-overload]

    @property
    def gid(self) -> int:
        return int(self.values["owner_gid"])  # type: ignore[call-overload]

    def home_path(self, key: str) -> str:
        """A ``paths`` entry; relative ones are under the vpopmail home (qmail_* under qmail_dir)."""
        value = str(self.values["paths_" + key])
        if not value or value.startswith("/"):
            return value
        base = self.qmail_dir if key.startswith("qmail_") else self.home
        return os.path.join(base, value)


def validate(raw: dict[str, object], source: str = "") -> dict[str, object]:
    """Check a parsed TOML document against SCHEMA; return the flattened values."""
    values: dict[str, object] = {}
    for section, entries in raw.items():
        if section not in SCHEMA:
            raise ConfigError(f"{source}: unknown section [{section}]")
        if not isinstance(entries, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        for key in entries:
            if key not in SCHEMA[section]:
                raise ConfigError(f"{source}: unknown key {section}.{key}")
    for section, entries in SCHEMA.items():
        given = raw.get(section, {})
        assert isinstance(given, dict)
        for key, (default, kind) in entries.items():
            value = given.get(key, default)
            if type(value) is not kind:
                raise ConfigError(f"{source}: {section}.{key} must be {kind.__name__}, got {value!r}")
            if kind is str and "\0" in value:  # type: ignore[operator]
                raise ConfigError(f"{source}: {section}.{key} contains a NUL character")
            choices = _CHOICES.get((section, key))
            if choices and value not in choices:
                raise ConfigError(f"{source}: {section}.{key} must be one of {', '.join(choices)}")
            values[f"{section}_{key}"] = value
    for key in ("server_workers", "server_requests_per_worker"):
        if int(values[key]) < 1:  # type: ignore[call-overload]
            raise ConfigError(f"{source}: {key.replace('_', '.', 1)} must be >= 1")
    if not 0 < int(values["users_quota_warn_percent"]) <= 100:  # type: ignore[call-overload]
        raise ConfigError(f"{source}: users.quota_warn_percent must be 1..100")
    for key in ("owner_uid", "owner_gid", "locks_timeout", "relay_lock_timeout",
                "relay_relay_clear_minutes", "mysql_connect_timeout", "mysql_read_port",
                "mysql_update_port", "server_request_timeout", "server_idle_timeout"):
        if int(values[key]) < 0:  # type: ignore[call-overload]
            raise ConfigError(f"{source}: {key.replace('_', '.', 1)} must be >= 0")
    return values


def defaults() -> Config:
    """The compiled-in defaults (a C vpopmail installed in /home/vpopmail)."""
    return Config(validate({}, "defaults"))


def locate(baked: str | None = None) -> str:
    """The config path: $VPOPMAIL_CONFIG, else the path the wrapper was installed with."""
    return os.environ.get(ENV_VAR) or baked or DEFAULT_PATH


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def load(path: str | None = None) -> Config:
    """Load the config at ``path`` (see :func:`locate`), through the marshal cache when fresh."""
    path = locate(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    cache = path + ".cache"
    ident = _identity(st)
    try:
        with open(cache, "rb") as fh:
            version, cached_ident, values = marshal.load(fh)
        if version == _CACHE_VERSION and tuple(cached_ident) == ident:
            return Config(values, path)
    except (OSError, EOFError, ValueError, TypeError):
        pass
    values = parse_file(path)
    write_cache(path, values, ident, st)
    return Config(values, path)


def parse_file(path: str) -> dict[str, object]:
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


def write_cache(path: str, values: dict[str, object], ident: tuple[int, int, int, int],
                source: os.stat_result) -> None:
    """Best effort: a reader that may not write etc/ just keeps parsing the TOML. The cache
    gets the file's permission bits and (as root) owner: it holds the same secrets, e.g. the
    database passwords, and must stay readable by exactly those who can read the file."""
    tmp = f"{path}.cache.{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with open(fd, "wb") as fh:
            marshal.dump((_CACHE_VERSION, ident, values), fh)
        if os.geteuid() == 0:
            os.chown(tmp, source.st_uid, source.st_gid)
        os.chmod(tmp, source.st_mode & 0o666)
        os.replace(tmp, path + ".cache")
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def toml_string(value: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    escaped = "".join(
        "\\" + c if c in '"\\' else
        f"\\u{ord(c):04x}" if (ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F else c
        for c in value)
    return f'"{escaped}"'


def render(values: dict[str, object]) -> str:
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
