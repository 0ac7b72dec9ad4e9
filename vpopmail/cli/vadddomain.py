"""vadddomain: create a virtual domain and its postmaster."""
from __future__ import annotations

import pwd
import sys

from vpopmail.cli.common import (UsageError, error, getopt, number, open_api, print_version,
                                  prompt_password, random_option, run)
from vpopmail.errors import DomainAlreadyExists

USAGE = """\
vadddomain: usage: vadddomain [options] virtual_domain [postmaster password]
options: -v prints the version
         -q quota_in_bytes (sets the quota for postmaster account)
         -b (bounces all mail that doesn't match a user, default)
         -e email_address (forwards all non matching user to this address [*])
         -u user (sets the uid/gid based on a user in /etc/passwd)
         -d dir (sets the dir to use for this domain)
         -i uid (sets the uid to use for this domain)
         -g gid (sets the gid to use for this domain)
         -O optimize adding, for bulk adds set this for all
            except the last one
         -r[len] (generate a len (default 8) char random postmaster password)

 [*] omit @-sign to deliver directly into user's Maildir: '-e postmaster'
 -e also takes the other actions of vdelivermail: delete, bounce-no-mailbox, /path/to/dir
 -q quota: NOQUOTA, bytes (1000000 or 1000000S), 10K/10M/10G, a count (100C), or both (10M,100C)
"""


def main(argv: list[str] | None = None, *, config: str | None = None) -> int:
    def body() -> int:
        options, args = getopt(sys.argv[1:] if argv is None else argv, "q:be:u:vi:g:d:Or::")
        settings: dict[str, str] = {}
        for letter, value in options:
            if letter == "v":
                print_version()
            settings[letter] = value
        if not args or len(args) > 2:
            raise UsageError("")
        uid = number(settings["i"], "uid") if "i" in settings else None
        gid = number(settings["g"], "gid") if "g" in settings else None
        base = settings.get("d")
        if "u" in settings:
            try:
                account = pwd.getpwnam(settings["u"])
            except KeyError:
                print(f"Error: user {settings['u']} not found in /etc/passwd")
                return 255
            uid, gid, base = account.pw_uid, account.pw_gid, base or account.pw_dir
        api = open_api(config)
        domain = args[0]
        if api.find_domain(domain) is not None:
            # looked at under users/assign's lock: a vdeldomain of the name removing it now
            # (which holds the lock) is waited for, not read half removed
            with api.qmail.assign_lock():
                existing = api.find_domain(domain)
                if existing is not None and (existing.is_alias
                                             or not api.domain_incomplete(existing)):
                    raise DomainAlreadyExists()
        # an empty operand (an unset "$PW") is no password given: asked for, as in C
        password = args[1] if len(args) > 1 and args[1] else None
        if "r" in settings:
            password = random_option(settings["r"], password)
        elif password is None:
            password = prompt_password("postmaster")
            if not password:  # a postmaster without a password (learn_passwords: anyone's)
                error("No password entered")
                raise UsageError("")
        try:
            api.add_domain(domain, password, base_dir=base, uid=uid, gid=gid,
                           default_action=settings.get("e")
                           or ("bounce-no-mailbox" if "b" in settings else None),
                           quota=settings.get("q"),
                           optimize="O" in settings)
        except DomainAlreadyExists:
            if api.find_domain(domain) is None:  # not the name (an SQL table's clash)
                raise
            raise DomainAlreadyExists() from None  # made meanwhile: worded as the check above
        if "r" in settings:
            print(f"Random password: {password}")
        return 0

    return run(body, USAGE)
