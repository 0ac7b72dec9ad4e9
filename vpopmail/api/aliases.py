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
