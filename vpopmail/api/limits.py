"""Domain limits (.qmailadmin-limits or the ``limits`` table) and what they mean for a user:
the flags vchkpw sees and the quota a new user gets."""
from __future__ import annotations

import os

from maildir.quota import NOQUOTA
from vpopmail import flags, limits
from vpopmail.api.base import ApiBase
from vpopmail.assign import AssignEntry
from vpopmail.errors import QuotaTooLong
from vpopmail.fsutil import FileLock
from vpopmail.stores import VUser

TYPE_CHECKING = False  # the typing idiom without importing collections (start-up)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    T = TypeVar("T")


#: C's MAX_PW_QUOTA: the longest quota a user record holds (the users table's pw_shell)
MAX_QUOTA = 20
DEFAULTS = ("default_quota", "default_maxmsgcount")


def default_user_quota(current: limits.Limits) -> str:
    """The quota new users get under ``current``: ``<default_quota>S,<default_maxmsgcount>C``
    for the parts set, else NOQUOTA."""
    size, count = (current.numbers[key] for key in DEFAULTS)
    text = ",".join(p for p in (f"{size}S" if size > 0 else "",
                                f"{count}C" if count > 0 else "") if p)
    return text or NOQUOTA


def _check(current: limits.Limits, before: dict[str, int]) -> None:
    """Changed limits the stores cannot hold (:meth:`~vpopmail.limits.Limits.check`), or
    changed defaults whose quota is longer than a user record holds, are refused."""
    current.check(before)
    quota = default_user_quota(current)
    if any(current.numbers[key] != before[key] for key in DEFAULTS) and len(quota) > MAX_QUOTA:
        raise QuotaTooLong(f"the default quota {quota} is longer than {MAX_QUOTA} characters, "
                           "what a user record holds")


class LimitsMixin(ApiBase):
    """Reading and changing domain limits."""

    def domain_limits(self, entry: AssignEntry) -> limits.Limits:
        return self.stores.domain_limits(entry)

    def stored_limits(self, entry: AssignEntry | None) -> limits.Limits:
        """The limits of ``entry`` as stored (None: the vlimits.default file, or the built-in
        defaults without one), read without a lock: the files are replaced whole."""
        if entry is not None:
            return self.domain_limits(entry)
        return limits.read_file(limits.default_file(self.config.home)) or limits.Limits()

    def change_domain_limits(self, entry: AssignEntry | None,
                             edit: Callable[[limits.Limits], bool]) -> limits.Limits:
        """Read the limits of ``entry`` (None: the vlimits.default file), let ``edit`` change
        them in place (it says whether it did) and store them, as one step: in a transaction
        holding the ``limits`` row, or under the directory lock for the files. Returns them.
        Changed values are checked (:func:`_check`) before anything is stored."""
        result: list[limits.Limits] = []

        def checked(current: limits.Limits) -> bool:
            before = dict(current.numbers)
            if not edit(current):
                return False
            _check(current, before)
            return True

        table = self.stores.limits_table
        if entry is not None and table is not None:
            def edit_row(row: dict[str, int] | None) -> dict[str, int] | None:
                current = limits.from_table_row(self.config, entry, row)
                result.append(current)
                return current.sql_row() if checked(current) else None

            with self.domain_lock(entry):  # vdeldomain deletes the row under it
                table.change_limits(entry.real_domain, limits.COLUMNS, edit_row)
            return result[-1]
        lock: FileLock
        if entry is None:  # the vpopmail user's, as packaging/install makes it: vchkpw
            # working as that user reads it at every login of a domain without its own limits
            path, owner = limits.default_file(self.config.home), (self.config.uid,
                                                                  self.config.gid)
            lock = FileLock(path + ".lock", self.timeout, *owner)
        else:
            path, owner = limits.domain_file(entry.dir), (entry.uid, entry.gid)
            lock = self.domain_lock(entry)
        with lock:
            current = self.stored_limits(entry)
            if checked(current):
                limits.write(path, current, *owner)
        return current

    def within_limit(self, entry: AssignEntry, key: str, count: Callable[[], int],
                     adding: Callable[[], int], change: Callable[[], T]) -> T:
        """``change()``, a domain administrator's addition to the domain, if it keeps the
        domain within its counted limit ``key`` (qmailadmin's test,
        :meth:`~vpopmail.limits.Limits.check_room`); else LimitReached and nothing changes.
        ``adding()`` says how many things the change adds (0: none, nothing to check),
        ``count()`` how many the domain holds. The limits are read, both are asked and the
        change is made under the domain's lock (:meth:`domain_lock`), which every change of
        the domain (its users, aliases and limits) takes: two additions at once cannot both
        take the last place, nor a limit change come between. While ``key`` is unlimited
        (-1) nothing is counted.
        """
        with self.domain_lock(entry):
            current = self.domain_limits(entry)
            if current.limited(key):
                wanted = adding()
                if wanted:
                    current.check_room(key, count(), wanted, entry.real_domain)
            return change()

    def delete_domain_limits(self, entry: AssignEntry) -> None:
        """Drop the domain's own limits (its row, or its limits file): the defaults apply."""
        table = self.stores.limits_table
        with self.domain_lock(entry):
            if table is not None:
                table.delete_limits(entry.real_domain)
                return
            try:
                os.unlink(limits.domain_file(entry.dir))
            except FileNotFoundError:
                pass

    def effective_flags(self, user: VUser, entry: AssignEntry) -> int:
        """The user's flags with the domain limits ORed in (unless V_OVERRIDE), as vchkpw sees."""
        if user.flags & flags.V_OVERRIDE:
            return user.flags
        return user.flags | self.domain_limits(entry).flag_mask

    def default_quota(self, entry: AssignEntry) -> str:
        """The quota new users of a domain get: its limits' defaults, else NOQUOTA."""
        return default_user_quota(self.domain_limits(entry))
