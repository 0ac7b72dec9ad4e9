"""vmkpasswd: rebuild a domain's vpasswd.cdb from its vpasswd (after vadduser -O, or by hand);
with -r, the other way: write a lost vpasswd back from vpasswd.cdb."""
from __future__ import annotations

import sys

from vpopmail.cli.common import UsageError, getopt, open_api, run

#: what a wrong command line gets: exactly C's
C_USAGE = "vmkpasswd: usage: domain \n"
#: --help and the man page: C's, and -r (ours: docs/commands.md, docs/reliability.md)
USAGE = """\
vmkpasswd: usage: domain 
rebuilds the domain's vpasswd.cdb from its vpasswd (after vadduser -O, or a hand edit)
  -r domain  the other way: writes a lost or emptied vpasswd back from vpasswd.cdb
             (refused while vpasswd has content; cdb backend only)
"""


def main(argv: list[str] | None = None, *, config: str | None = None) -> int:
    def body() -> int:
        options, args = getopt(sys.argv[1:] if argv is None else argv, "r")
        if len(args) != 1:
            raise UsageError("")
        api = open_api(config)
        if not options:
            api.rebuild_index(args[0])
            return 0
        restore = api.stores.index_restore
        if restore is None:
            raise UsageError("-r is for the cdb backend's files")
        count = restore(api.get_domain(args[0]))
        print(f"vpasswd of {args[0]} written back from vpasswd.cdb: {count} users")
        return 0

    return run(body, USAGE, wrong=C_USAGE)
