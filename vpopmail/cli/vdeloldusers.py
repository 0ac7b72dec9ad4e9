"""vdeloldusers: list (and with -D delete) users who have not logged in for a number of days.

A user's last login is what the backend recorded (the cdb files: the mtime of
``<userdir>/lastauth``; SQL: the ``lastauth`` row); vchkpw records each login and vadduser the
creation, with ``0.0.0.0``. Users without one are left alone, as in C, and postmaster always
is. ``-D`` with an age deletes nothing when no user of the installation has logged in within
it (a clock set ahead would otherwise make every user old; C deleted them). ``-e`` visits every
real domain once (C walked users/assign and so visited each domain again for every alias
domain pointing at it).
"""
from __future__ import annotations

import sys
import time

from vpopmail.api import Vpopmail
from vpopmail.assign import AssignEntry
from vpopmail.cli.common import UsageError, error, getopt, number, open_api, print_version, run
from vpopmail.errors import DomainDoesNotExist, UserDoesNotExist, VpopmailError, explain
from vpopmail.stores import VUser

USAGE = """\
vdeloldusers: usage: [options]
options: -a age_in_days (will delete accounts older than this date)
                        (default is 6 months or 180 days)
         -v (print version number and exit)
         -d [domain] (process only [domain])
         -e (process every domain)
         -D (actually delete users. no users are deleted without this option)
         -V (verbose -- print old users that will be deleted)
"""
DEFAULT_AGE = 180
DAY = 86400
TEMPORARY = 111  # the clock looks wrong: fix it and run again
NO_AUTH_LOGGING = "auth logging is off (logging.auth_logging = false): no last-login times to go by"


def is_old(api: Vpopmail, entry: AssignEntry, user: VUser, cutoff: float) -> bool:
    """Last logged in (or created) before ``cutoff``; never recorded: not old."""
    when = (api.backend.last_login(entry, user) or (0.0, ""))[0]
    return bool(when) and when < cutoff


def clock_doubtful(api: Vpopmail, cutoff: float) -> bool:
    """Some user of the installation has a recorded login and none since ``cutoff``: on a
    live system the clock is more likely ahead than everybody gone (stops at the first recent
    login)."""
    recorded = False
    for entry in api.real_domains():
        for user in users_of(api, entry):
            when = (api.backend.last_login(entry, user) or (0.0, ""))[0]
            if when >= cutoff:
                return False
            recorded = recorded or bool(when)
    return recorded


def users_of(api: Vpopmail, entry: AssignEntry) -> list[VUser]:
    """The users of a domain, read under its lock (never half removed); none once a
    vdeldomain removed it since the run began: its users went with it."""
    try:
        with api.domain_lock(entry):
            return api.backend.list_users(entry)
    except DomainDoesNotExist:
        return []


class Run:
    """One vdeloldusers pass over some domains."""

    def __init__(self, api: Vpopmail, cutoff: float, delete: bool, verbose: bool) -> None:
        self.api = api
        self.cutoff = cutoff
        self.delete = delete
        self.verbose = verbose
        self.found = 0
        self.status = 0

    def domain(self, entry: AssignEntry) -> None:
        domain = entry.real_domain
        for user in users_of(self.api, entry):
            if user.name == "postmaster":
                if self.verbose:
                    print(f"skipping postmaster@{domain}")
                continue
            if not is_old(self.api, entry, user, self.cutoff):
                continue
            self.found += 1
            if self.verbose:
                print(f"{user.name}@{domain}", flush=True)
            if self.delete:
                self.remove(user, entry)

    def remove(self, user: VUser, entry: AssignEntry) -> None:
        # a login since the list was read keeps the user
        if not is_old(self.api, entry, user, self.cutoff):
            return
        try:
            self.api.delete_user(f"{user.name}@{entry.real_domain}")
        except (UserDoesNotExist, DomainDoesNotExist):
            pass  # deleted meanwhile by someone else (with its domain)
        except VpopmailError as exc:
            error(explain(exc, "vdeloldusers"))
            self.status = exc.status


def main(argv: list[str] | None = None, *, config: str | None = None) -> int:
    def body() -> int:
        args = sys.argv[1:] if argv is None else argv
        if not args:
            raise UsageError("")
        options, operands = getopt(args, "vVDd:a:e")
        if operands:
            raise UsageError(f"unexpected argument {operands[0]!r}")
        age, domain, every, delete, verbose = DEFAULT_AGE, None, False, False, False
        for letter, value in options:
            if letter == "v":
                print_version()
            elif letter == "a":
                age = number(value, "age_in_days")
                if age < 0:
                    raise UsageError("age_in_days must not be negative")
            elif letter == "d":
                domain = value
            elif letter == "e":
                every = True
            elif letter == "D":
                delete = True
            elif letter == "V":
                verbose = True
        if every and domain is not None:
            raise UsageError("use either -e or -d domain, not both")
        if not every and not domain:
            print("error: you must supply either the -e or -d [domain] options")
            return 255
        api = open_api(config)
        if not api.config.logging_auth_logging:
            error(NO_AUTH_LOGGING)
            return 255
        cutoff = time.time() - age * DAY
        if delete and age and clock_doubtful(api, cutoff):
            error(f"no user of any domain logged in during the last {age} days: is the "
                  "clock right? nothing deleted")
            return TEMPORARY
        job = Run(api, cutoff, delete, verbose)
        for entry in api.real_domains() if every else [api.get_domain(domain or "")]:
            job.domain(entry)
        if not job.found:
            print("no old users found")
        elif not delete:
            print(" ** no users were deleted  **")
            print(" ** use -D to delete users **")
        return job.status

    return run(body, USAGE)
