"""Aliases (``alias@domain``): naming one, adding a line held to the domain's limits; the
store itself is ``Stores.aliases``."""
from __future__ import annotations

from vpopmail import limits
from vpopmail.api.limits import LimitsMixin
from vpopmail.assign import AssignEntry


class AliasesMixin(LimitsMixin):
    """Resolving an alias address, and adding to an alias."""

    def resolve_alias(self, address: str) -> tuple[str, AssignEntry]:
        """(alias, domain entry) of ``alias@domain``; a bare alias uses the default domain."""
        from vpopmail.aliases import check_alias

        alias, entry = self._split(address)
        return check_alias(alias), entry

    # the changes: under the domain's lock, as every change of a domain (see DomainLock)

    def add_alias_line(self, entry: AssignEntry, alias: str, address: str, line: str,
                       limited: bool = False) -> str:
        """Add ``line`` to ``alias`` of ``entry``'s domain (``address``: as the caller wrote it,
        for messages); what the store returns. ``limited``: a domain administrator's, and a
        new alias is refused (LimitReached) past the domain's maxforwards, counted as
        qmailadmin counts forwards (:func:`vpopmail.limits.count_forwards`); a line added to an
        alias that exists adds no forward (:meth:`within_limit`)."""
        store = self.stores.aliases

        def add() -> str:
            return store.add_line(entry, alias, address, line)

        if not limited:
            with self.domain_lock(entry):
                return add()
        return self.within_limit(entry, "maxforwards",
                                 lambda: limits.count_forwards(store.all(entry)),
                                 lambda: int(store.lines(entry, alias) is None), add)

    def remove_alias_line(self, entry: AssignEntry, alias: str, address: str, line: str
                          ) -> bool:
        """Remove ``line`` from ``alias`` (the alias goes with its last line)."""
        with self.domain_lock(entry):
            return self.stores.aliases.remove_line(entry, alias, address, line)

    def delete_alias(self, entry: AssignEntry, alias: str, address: str) -> None:
        """Delete ``alias`` and all its lines."""
        with self.domain_lock(entry):
            self.stores.aliases.delete(entry, alias, address)
