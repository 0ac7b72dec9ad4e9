"""vmkpasswd: rebuild a domain's vpasswd.cdb from its vpasswd (after vadduser -O, or by hand);
with -r, the other way: write a lost vpasswd back from vpasswd.cdb."""
from __future__ import annotations

import sys

from vpopmail.cli.common import UsageError, getopt, open_api, run

USAGE = "vmkpasswd: usage: domain \n"  # exactly C's (-r is ours: README, Reliability)


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

    return run(body, USAGE)
