"""vdominfo: show domains: name, uid, gid, directory, user count, aliases."""
from __future__ import annotations

import sys

from vpopmail.api import Vpopmail
from vpopmail.assign import AssignEntry
from vpopmail.cli.common import (UsageError, getopt, open_api, print_version, run,
                                 selected_fields)

USAGE = """\
vdominfo: usage: [options] [domain]
options: -v (print version number)
         -a (display all fields, this is the default)
         -n (display domain name)
         -u (display uid field)
         -g (display gid field)
         -d (display domain directory)
         -t (display total users)
         -r (display real domain)
         -c (display catch-all: the action of .qmail-default)
"""
SELECTORS = "nugdtrc"


def describe(api: Vpopmail, entry: AssignEntry, selected: str) -> list[str]:
    name = f"{entry.domain} (alias of {entry.real_domain})" if entry.is_alias else entry.domain
    users = str(api.user_count(entry))
    if not selected:
        return [f"domain: {name}", f"uid:    {entry.uid}", f"gid:    {entry.gid}",
                f"dir:    {entry.dir}", f"users:  {users}"]
    values = {"n": name, "u": str(entry.uid), "g": str(entry.gid), "d": entry.dir, "t": users,
              "r": entry.real_domain}
    if "c" in selected:
        values["c"] = api.catchall_of(entry) or "(.qmail-default does not run vdelivermail)"
    return [values[s] for s in SELECTORS if s in selected]


def main(argv: list[str] | None = None, *, config: str | None = None) -> int:
    def body() -> int:
        options, args = getopt(sys.argv[1:] if argv is None else argv, "vanugdtrc")
        letters = []
        for letter, _ in options:
            if letter == "v":
                print_version()
            else:
                letters.append(letter)
        selected = selected_fields(letters)
        if len(args) > 1:
            raise UsageError("")
        api = open_api(config)
        if args:
            # get_domain: C said "Invalid domain name" for a valid name that is not here
            real = api.get_domain(api.get_domain(args[0]).real_domain)
            for line in describe(api, real, selected):
                print(line)
            for alias in api.aliases_of(real.real_domain):  # after any selection, as C
                print(f"alias: {alias}")
            return 0
        for entry in api.domains():
            for line in describe(api, entry, selected):
                print(line)
            print()
        return 0

    return run(body, USAGE)
