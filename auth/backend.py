"""The user-database interface and the user record every backend returns.

Backends are chosen at run time (:func:`open_backend`); nothing above this interface knows
where users are stored. Hot-path safe: no dataclasses/typing imports (12 ms and 10 ms).
"""
from abc import ABC, abstractmethod

from vpopmail.assign import AssignEntry
from vpopmail.config import Config
from vpopmail.errors import ConfigError
from vpopmail.record import SlotRecord

TYPE_CHECKING = False  # the typing idiom without importing typing (hot path)
if TYPE_CHECKING:
    from collections.abc import Callable

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


#: backends this process opened, for :func:`close_backends`
_opened: list[UserDatabase] = []


def close_backends() -> None:
    """Close what :func:`open_backend` opened: the hot paths end with os._exit, and a
    database server logs every connection dropped without a goodbye as aborted."""
    while _opened:
        _opened.pop().close()


def open_backend(config: Config, admin: bool = False) -> UserDatabase:
    """The backend the configuration names: the cdb files, or MySQL/MariaDB (``admin``: for
    commands that change what they read, which then read from the update server)."""
    name = config.users_backend
    if name == "cdb":
        from auth.cdbfiles import CdbFiles

        return CdbFiles(config)
    if name == "mysql":
        from auth.mysql import MySQLDatabase

        database = MySQLDatabase(config, admin)
        _opened.append(database)
        return database
    raise ConfigError(f"unknown user backend {name!r}")
