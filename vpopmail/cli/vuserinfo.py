"""vuserinfo: show a user's record, quota usage, flags and last login."""
from __future__ import annotations

import os
import sys
import time

from maildir.quota import NOQUOTA, read_maildirsize, scan_usage, usage_percent
from vpopmail.api import Vpopmail
from vpopmail.assign import AssignEntry
from vpopmail.cli.common import (UsageError, getopt, open_api, print_version, run,
                                 selected_fields)
from vpopmail.errors import UserDoesNotExist
from vpopmail.flags import DESCRIPTIONS
from vpopmail.stores import VUser

USAGE = """\
vuserinfo: usage: [options] email_address
options: -v (print version number)
         -a (display all fields, this is the default)
         -n (display name field)
         -p (display crypted password)
         -u (display uid field)
         -g (display gid field)
         -c (display comment field)
         -d (display directory)
         -q (display quota field)
         -Q (display quota usage)
         -C (display clear text password)
         -l (display last authentication time)
         -D domainname (show all users on this domain)
"""
SELECTORS = "npCugcdqQl"


def usage_text(user: VUser) -> str:
    """``N%`` of the quota in use (from maildirsize, else a count), or ``NOQUOTA``."""
    if user.quota in (NOQUOTA, ""):
        return NOQUOTA
    maildir = os.path.join(user.dir, "Maildir")
    state = read_maildirsize(maildir)
    usage = (state[1], state[2]) if state else scan_usage(maildir)
    return f"{usage_percent(user.quota, usage)}%"


def last_auth_lines(api: Vpopmail, user: VUser, entry: AssignEntry) -> list[str]:
    """C's display_lastlogin: creation time and 'Never logged in', or time and IP."""
    when, ip = api.backend.last_login(entry, user) or (0.0, "")
    if not when or not ip or ip == "0.0.0.0":
        created = [f"account created: {time.asctime(time.localtime(when))}"] if when else []
        return created + ["last auth: Never logged in"]
    return [f"last auth: {time.asctime(time.localtime(when))}", f"last auth ip: {ip}"]


def describe(api: Vpopmail, user: VUser, entry: AssignEntry, selected: str) -> list[str]:
    """The lines vuserinfo prints for one user (all fields when ``selected`` is empty)."""
    flags = api.effective_flags(user, entry)
    if not selected:
        lines = [f"name:   {user.name}", f"passwd: {user.passwd}", f"clear passwd: {user.clear}",
                 f"comment/gecos: {user.gecos}", f"uid:    {user.uid}", f"gid:    {user.flags}",
                 f"flags:  {flags}", f"gecos: {user.gecos}"]
        if not flags:
            lines.append("limits: No user limits set.")
        else:
            lines.append("limits:")
            for bit, text in DESCRIPTIONS:
                if flags & bit:
                    lines.append(f"        {text}" + ("" if user.flags & bit else " (*)"))
            if flags != user.flags:
                lines.append("        * = set by domain-wide limits")
        lines += [f"dir:       {user.dir}", f"quota:     {user.quota}",
                  f"usage:     {usage_text(user)}"]
        return lines + last_auth_lines(api, user, entry)
    values = {"n": user.name, "p": user.passwd, "C": user.clear, "u": str(user.uid),
              "g": str(user.flags), "c": user.gecos, "d": user.dir, "q": user.quota}
    lines = [values[s] for s in SELECTORS if s in selected and s in values]
    if "Q" in selected:
        lines.append(usage_text(user))
    if "l" in selected:
        lines += last_auth_lines(api, user, entry)
    return lines


def main(argv: list[str] | None = None, *, config: str | None = None) -> int:
    def body() -> int:
        options, args = getopt(sys.argv[1:] if argv is None else argv, "anpugcdqQvlD:C")
        letters = []
        domain = None
        for letter, value in options:
            if letter == "v":
                print_version()
            elif letter == "D":
                domain = value
            else:
                letters.append(letter)
        selected = selected_fields(letters)
        if (domain is None) == (len(args) != 1):
            raise UsageError("")
        api = open_api(config)
        if domain is not None:
            users, entry = api.list_users(domain)
            targets = [(user, entry) for user in users]
        else:
            try:
                targets = [api.get_user(args[0])]
            except UserDoesNotExist as exc:
                # C's vuserinfo text and exit (255), unlike the other commands' "Error: User
                # does not exist" (C's too): scripts test for either, so both stay; the
                # address is user@real.domain, as C names it
                print(f"no such user {exc.detail}")
                return 255
        for user, entry in targets:
            for line in describe(api, user, entry, selected):
                print(line)
        return 0

    return run(body, USAGE)
