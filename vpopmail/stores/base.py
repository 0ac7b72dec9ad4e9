"""The user store's interface and the user record every backend returns.

Stores are chosen at run time (:func:`vpopmail.stores.open_stores`); nothing above this
interface knows where users are stored. Hot-path safe: no dataclasses/typing imports (12 ms
and 10 ms).
"""
from abc import ABC, abstractmethod

from vpopmail.assign import AssignEntry
from vpopmail.record import SlotRecord

TYPE_CHECKING = False  # the typing idiom without importing typing (hot path)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

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


class AliasChecks:
    """What both stores share: the checks before a change (``users``: the user store, since
    an alias may not take a user's name). ``address`` arguments are the alias as the caller
    named it, for the texts."""

    def __init__(self, users: "UserDatabase") -> None:
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
        if lines is not None and line in lines:
            raise AliasLineExists(f"alias {address} -> {line} already exists.")

    def refuse_users_named_as_aliases(self, entry: AssignEntry, names: "Sequence[str]") -> None:
        """Raise UserIsAlias for the first of ``names`` that is an alias of ``entry``'s domain
        (the reverse of :meth:`check_add`): delivery looks at aliases first, so such a user
        would never get mail."""
        from vpopmail.aliases import DEFAULT, UserIsAlias

        wanted = [name for name in names if name != DEFAULT]  # never an alias name
        if len(wanted) == 1:
            taken = wanted if self.lines(entry, wanted[0]) is not None else []
        elif wanted:
            aliases = set(self.names(entry))
            taken = [name for name in wanted if name in aliases]
        else:
            taken = []
        if taken:
            raise UserIsAlias(f"{taken[0]}@{entry.domain} is an alias: a user of that name would "
                              "get none of its mail (remove the alias with valias -d first)")

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
