"""vmkpasswd: rebuild a domain's vpasswd.cdb from its vpasswd (after vadduser -O, or by hand)."""
from __future__ import annotations

import sys

from vpopmail.cli.common import UsageError, getopt, open_api, run

USAGE = "vmkpasswd: usage: domain \n"


def main(argv: list[str] | None = None, *, config: str | None = None) -> int:
    def body() -> int:
        _, args = getopt(sys.argv[1:] if argv is None else argv, "")
        if len(args) != 1:
            raise UsageError("")
        open_api(config).rebuild_index(args[0])
        return 0

    return run(body, USAGE)
