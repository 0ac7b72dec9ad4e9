"""Aliases (``alias@domain``): naming one; the store itself is ``Stores.aliases``."""
from __future__ import annotations

from vpopmail.api.base import ApiBase
from vpopmail.assign import AssignEntry


class AliasesMixin(ApiBase):
    """Resolving an alias address."""

    def resolve_alias(self, address: str) -> tuple[str, AssignEntry]:
        """(alias, domain entry) of ``alias@domain``; a bare alias uses the default domain."""
        from vpopmail.aliases import check_alias

        alias, entry = self._split(address)
        return check_alias(alias), entry

    # the changes: under the domain's lock, as every change of a domain (see DomainLock)

    def add_alias_line(self, entry: AssignEntry, alias: str, address: str, line: str) -> str:
        """Add ``line`` to ``alias`` of ``entry``'s domain (``address``: as the caller wrote it,
        for messages); what the store returns."""
        with self.domain_lock(entry):
            return self.stores.aliases.add_line(entry, alias, address, line)

    def remove_alias_line(self, entry: AssignEntry, alias: str, address: str, line: str
                          ) -> bool:
        """Remove ``line`` from ``alias`` (the alias goes with its last line)."""
        with self.domain_lock(entry):
            return self.stores.aliases.remove_line(entry, alias, address, line)

    def delete_alias(self, entry: AssignEntry, alias: str, address: str) -> None:
        """Delete ``alias`` and all its lines."""
        with self.domain_lock(entry):
            self.stores.aliases.delete(entry, alias, address)
