"""vcheck: walk the troubleshooting path for one address and name the fix for the first fault."""
from __future__ import annotations

import sys

from vpopmail.cli.common import UsageError, getopt, open_api, print_version, run
from vpopmail.api.diagnose import diagnose

USAGE = """\
vcheck: usage: [options] email_address
options: -v (print version number)
Checks, in order, what mail to and logins of email_address depend on (users/assign,
users/cdb, qmail's control files, the domain directory, .qmail-default, vpasswd and
vpasswd.cdb or the SQL users table, the user, its Maildir, maildirsize, flags), prints OK
or the fix for each, and stops at the first fault. Exit status: 0 all OK, else the number
of the failed step.
"""


def main(argv: list[str] | None = None, *, config: str | None = None) -> int:
    def body() -> int:
        options, args = getopt(sys.argv[1:] if argv is None else argv, "v")
        if options:
            print_version()
        if len(args) != 1:
            raise UsageError("")
        for step in diagnose(open_api(config), args[0]):
            label = f"{step.number:2d} {step.name:<16}"
            if step.ok:
                print(f"{label} OK    {step.text}")
                if step.final:
                    return 0
                continue
            print(f"{label} FAIL  {step.text}")
            print(f"{'':19} fix:  {step.fix}")
            return step.number
        print("all checks passed")
        return 0

    return run(body, USAGE)
