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

    def add_alias_line(self, address: str, line: str, limited: bool = False) -> str:
        """Add a delivery line to ``alias@domain`` (creating the alias); returns the line as
        stored. ``limited``: a domain administrator's, and a new alias is refused
        (LimitReached) past the domain's maxforwards, counted as qmailadmin counts forwards
        (:func:`vpopmail.limits.count_forwards`); a line added to an alias that exists adds
        no forward (:meth:`within_limit`)."""
        alias, entry = self.resolve_alias(address)
        store = self.stores.aliases

        def add() -> str:
            return store.add_line(entry, alias, address, line)

        if not limited:
            return add()
        return self.within_limit(entry, "maxforwards",
                                 lambda: limits.count_forwards(store.all(entry)),
                                 lambda: int(store.lines(entry, alias) is None), add)
