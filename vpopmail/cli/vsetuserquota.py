"""vsetuserquota: set the quota of one user or of every user of a domain."""
from __future__ import annotations

from vpopmail.cli.common import open_api, operands, run

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
        target, quota = operands(argv, 2)
        open_api(config).set_quota(target, quota)
        return 0

    return run(body, USAGE)
