"""vcheck: walk the troubleshooting path for one address and name the fix for the first fault."""
from __future__ import annotations

import sys

from vpopmail.cli.common import UsageError, getopt, open_api, print_version, run
from vpopmail.api.diagnose import diagnose

USAGE = """\
vcheck: usage: [options] email_address
options: -v (print version number)
Checks, in order, what mail to and logins of email_address depend on, prints OK or FAIL
with the fix for each step, and stops at the first fault:
 1 address           a name vpopmail accepts
 2 users/assign      the domain's line (missing: run vregenerate)
 3 users/cdb         the same records as users/assign
 4 qmail control     rcpthosts and virtualdomains route the domain, locals does not
 5 domain directory  there, owned by the uid and gid of its users/assign line
 6 .qmail-default    runs vdelivermail
 7 vpasswd           vpasswd and vpasswd.cdb agree (SQL backend: users table)
 8 user              the user exists
 9 Maildir           the user's Maildir, owner and modes
10 maildirsize       agrees with the user's quota
11 flags             what the user's flags refuse
12 vpopmail-server   answers the C front ends (down is a fault only with
                     server.smtp_auth_callers or server.dovecot_callers set)
13 installation      paths.vpopmail_home holds the installation; what root runs and
                     reads is root's alone (root installations)
Exit status: 0 all OK, else the number of the failed step.
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
