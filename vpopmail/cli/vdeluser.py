"""vdeluser: delete a user and its mail."""
from __future__ import annotations

import sys

from vpopmail.cli.common import UsageError, getopt, open_api, print_version, run

USAGE = """\
vdeluser: usage: [options] email_address
options: -v (print version number)
"""


def main(argv: list[str] | None = None, *, config: str | None = None) -> int:
    def body() -> int:
        options, args = getopt(sys.argv[1:] if argv is None else argv, "v")
        if options:
            print_version()
        if len(args) != 1:
            raise UsageError("")
        open_api(config).delete_user(args[0])
        return 0

    return run(body, USAGE)
