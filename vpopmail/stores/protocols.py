"""The interfaces of the stores other than users (:class:`vpopmail.stores.UserDatabase`).

Structural types: the files and SQL implementations need not inherit them. Imported for type
checking only (``typing`` costs milliseconds on the hot paths).
"""
from collections.abc import Callable, Sequence
from typing import Protocol

from vpopmail.assign import AssignEntry


class AliasStore(Protocol):
    """The aliases of every domain (valias, vpopmaild, vadduser's clash check). ``address`` is
    the alias as the caller named it, for the error texts."""

    def names(self, entry: AssignEntry) -> list[str]:
        """The aliases of the domain, sorted case-insensitively."""

    def lines(self, entry: AssignEntry, alias: str) -> list[str] | None:
        """The lines of one alias, or None if there is no such alias."""

    def all(self, entry: AssignEntry) -> list[tuple[str, str]]:
        """(alias, line) for every line of every alias, aliases sorted."""

    def add_line(self, entry: AssignEntry, alias: str, address: str, line: str) -> str:
        """Add a delivery line to an alias (creating it); return the line as stored."""

    def remove_line(self, entry: AssignEntry, alias: str, address: str, line: str) -> bool:
        """Remove every copy of ``line``; True if the alias went with its last line."""

    def delete(self, entry: AssignEntry, alias: str, address: str) -> None:
        """Delete the alias."""

    def refuse_users_named_as_aliases(self, entry: AssignEntry, names: Sequence[str]) -> None:
        """Raise UserIsAlias for the first of ``names`` that is an alias of the domain."""


class ValiasRows(Protocol):
    """The ``valias`` rows vdelivermail follows (C's --enable-valias)."""

    def select_with_user(self, entry: AssignEntry, aliases: Sequence[str], name: str
                         ) -> dict[str, list[str]]:
        """alias -> its lines, for those of ``aliases`` that have rows in ``entry``'s real
        domain; read with the row of user ``name``, which the users store's next
        ``get_user(entry, name)`` answers without reading it again."""


class RelayRows(Protocol):
    """The roaming IPs of the SQL ``relay`` table."""

    def relay_open(self, ip: str, stamp: int) -> bool:
        """Record ``ip`` from ``stamp``; True if it was not there."""

    def relay_entries(self) -> list[tuple[str, int]]:
        """(ip, time) of every row."""

    def relay_clear(self, before: int, now: int) -> int:
        """Drop the rows older than ``before``, give rows later than ``now`` the time ``now``;
        return how many were dropped."""


class LimitsTable(Protocol):
    """Domain limits as rows of the SQL ``limits`` table (C's --enable-mysql-limits)."""

    def get_limits(self, domain: str, columns: Sequence[str]) -> dict[str, int] | None:
        """The domain's row (``columns`` of it), or None."""

    def change_limits(self, domain: str, columns: Sequence[str],
                      edit: Callable[[dict[str, int] | None], dict[str, int] | None]) -> None:
        """Read the row, let ``edit`` make the new one (None: no change), store it: one step."""

    def delete_limits(self, domain: str) -> None:
        """Drop the domain's row."""


class AliasDomainsTable(Protocol):
    """The alias domains as rows of an ``aliasdomains`` table (alias, real domain), a copy of
    users/assign's for Dovecot's SQL queries (the table of sagredo's vpopmail
    --enable-sql-aliasdomains), which every host of the database shares."""

    def change_alias_domains(self, aliases: Sequence[str], domains: Sequence[str],
                             rows: Sequence[tuple[str, str]]) -> None:
        """Drop the rows of ``aliases`` and those pointing at ``domains``, then add ``rows``
        (alias, real domain; one of an alias already there replaces it): one step, the
        table made when missing, the rows of other alias domains left alone."""

    def alias_domains_of(self, domain: str) -> tuple[list[str], str | None] | None:
        """(the aliases whose rows point at ``domain``, the domain a row of ``domain`` as an
        alias points at), as the update server has them; None without the table; Fault when
        it cannot be read (vcheck)."""


class AuthLog(Protocol):
    """The ``vlog`` table (C's --enable-sql-logging)."""

    def log_event(self, user: str, domain: str, logon: str, remote_ip: str, message: str,
                  error: int, password: str = "") -> None:
        """One row."""
