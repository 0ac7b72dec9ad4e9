"""vmoddomain: change an existing domain's catch-all (its .qmail-default), checked and quoted
as vadddomain -e does it. C vpopmail has no such command: operators edited the file by hand."""
from __future__ import annotations

import sys

from vpopmail.cli.common import UsageError, getopt, open_api, print_version, run

USAGE = """\
vmoddomain: usage: vmoddomain [options] domain
options: -v prints the version
         -e action (where mail to no user of the domain goes [*])
         -b (bounces it, the same as -e bounce-no-mailbox)

 [*] an email address, a user of the domain (its Maildir: '-e postmaster'),
     /path/to/dir (delivered to its Maildir/), delete or bounce-no-mailbox
 vdominfo -c domain shows the catch-all
"""


def main(argv: list[str] | None = None, *, config: str | None = None) -> int:
    def body() -> int:
        options, args = getopt(sys.argv[1:] if argv is None else argv, "ve:b")
        action = None
        for letter, value in options:
            if letter == "v":
                print_version()
            else:
                action = value if letter == "e" else "bounce-no-mailbox"
        if len(args) != 1 or action is None:
            raise UsageError("")
        open_api(config).set_catchall(args[0], action)
        return 0

    return run(body, USAGE)
