"""vsetuserquota: set the quota of one user or of every user of a domain."""
from __future__ import annotations

import sys

from vpopmail.cli.common import UsageError, getopt, open_api, print_version, run

USAGE = """\
vsetuserquota: [options] email_address|domain_name quota
options:
-v (print version number)

If you specify a domain name rather than an email address,
the quota will be applied to all users in that domain
quota: NOQUOTA, bytes (1000000 or 1000000S), 10K/10M/10G, a count (100C), or both (10M,100C)
"""


def main(argv: list[str] | None = None, *, config: str | None = None) -> int:
    def body() -> int:
        options, args = getopt(sys.argv[1:] if argv is None else argv, "v")
        if options:
            print_version()
        if len(args) != 2:
            raise UsageError("")
        open_api(config).set_quota(args[0], args[1])
        return 0

    return run(body, USAGE)
