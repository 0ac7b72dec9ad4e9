"""The vpopmail API: domains, alias domains and users, over qmail's files and a user backend.

Every operation either completes or leaves nothing behind (no user directory without its
vpasswd line, no assign line without its domain directory) and raises a
:class:`~vpopmail.errors.VpopmailError` carrying vpopmail's VA_* code.

One module per concern (``base``, ``limits``, ``aliases``, ``users``, ``domains``), each a
class that :class:`Vpopmail` joins.
"""
from __future__ import annotations

from vpopmail.api.aliases import AliasesMixin
from vpopmail.api.domains import DomainsMixin
from vpopmail.api.users import NewUser
from vpopmail.api.limits import MAX_QUOTA

__all__ = ["MAX_QUOTA", "NewUser", "Vpopmail"]


class Vpopmail(DomainsMixin, AliasesMixin):
    """One vpopmail installation, as its configuration describes it."""
